"""Chapter 16's experiments on the mini GPT: what the notebook runs, settings as named constants.

* **Formats** (§16.1): the world's fact questions as four-way multiple choice
  (:func:`mc_items`). Chapter 4's SFT model is scored three ways: the log-likelihood of each
  full answer (in a phrasing it was trained on), the log-likelihood of each letter after the
  book's lettered format (which it never saw), and its own greedy answer read back by the
  world's parser, by a strict ``The answer is:`` pattern and by a lenient ``The answer is X``.
* **Variance** (§16.2, Appendix C.2): many sampled re-runs of one evaluation
  (:func:`rerun_matrix`), each question's chance of a right answer, and the run-to-run standard
  deviation per topic measured against :func:`~.variance.rerun_std`.
* **Contamination** (§16.4): a short SFT continuation on the training demonstrations with a
  few held-out questions and their answers leaked into them (:func:`contaminated_sft`);
  detection by 8-gram overlap, and the accuracy on leaked, paraphrased and clean items.
* **Leaderboards** (§16.3): battles between answers of several policies, judged by the gold
  reward with annotator noise, rated by Elo in many orders and by Bradley-Terry
  (:func:`battles`).

Models are arguments: the notebook passes ``rlhf_book.textbook.substrate.sft_small()``.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_book import data
from rlhf_book.data.world import group_by_topic
from rlhf_book.ch04_instruction_tuning import experiments as ch04_experiments
from rlhf_book.ch04_instruction_tuning.loop import train_sft
from rlhf_book.ch14_overoptimization.experiments import rm_proxy
from rlhf_book.ch16_evaluation import contamination, formats
from rlhf_book.ch16_evaluation.leaderboard import elo_ratings
from rlhf_book.lm import gpt, sampling, tokenizer
from rlhf_book.lm.eval import answer_samples, mean_se
from rlhf_book.lm.rollout import encode_prompts, token_log_probs

# ----------------------------------------------------------------------------------------------
# Settings

MODEL = "small"
MC_QUESTIONS = 200       # rephrased fact questions asked as multiple choice
MC_CHOICES = 4
MC_SEED = 0
# The phrasing of a full answer: one of the concise templates the SFT demonstrators use.
FULL_ANSWER = "The answer is {}."
LENIENT = re.compile(r"The answer is ([^.\n]+)")

RERUN_QUESTIONS = 60     # per topic (all five topics, rephrased questions)
RERUNS = 32              # sampled re-runs of the evaluation, T = 1
RERUN_SEED = 1

LEAK_FACTS = 8           # unseen facts whose questions leak into SFT
LEAK_TEMPLATES = 6       # of each such fact's 12 phrasings, leaked verbatim with the answer
LEAK_COPIES = 10         # times each leaked conversation is repeated in the SFT data
LEAK_SEED = 0
LEAK_CONFIG = dataclasses.replace(ch04_experiments.SFT_CONFIG, steps=400, learning_rate=1e-3,
                                  log_every=100)
EVAL_SAMPLES = 8


@functools.cache
def _config() -> gpt.GPTConfig:
    return gpt.get_config(MODEL)


# ----------------------------------------------------------------------------------------------
# §16.1 Formats


@dataclasses.dataclass(frozen=True)
class MCItem:
    """A question asked as multiple choice: its ``choices`` and the index of the right one."""

    question: data.Question
    choices: tuple[str, ...]
    answer: int

    @property
    def letter(self) -> str:
        return formats.LETTERS[self.answer]


def mc_items(n: int = MC_QUESTIONS, seed: int = MC_SEED,
             n_choices: int = MC_CHOICES) -> list[MCItem]:
    """``n`` rephrased fact questions (training facts, phrasings no demonstration uses) as
    multiple choice: the right answer and ``n_choices - 1`` other answers of the same topic's
    vocabulary, the right one at a uniformly random position."""
    rng = np.random.default_rng(seed)
    questions = data.fact_questions(data.question_splits().rephrased)
    items = []
    for i in rng.choice(len(questions), n, replace=False):
        q = questions[i]
        others = [v for v in data.answer_vocabulary(q.topic) if v != q.answer]
        choices = list(rng.choice(others, n_choices - 1, replace=False))
        position = int(rng.integers(n_choices))
        choices.insert(position, q.answer)
        items.append(MCItem(q, tuple(str(c) for c in choices), position))
    return items


def conversation_batch(pairs: Sequence[tuple[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """``(tokens [N, L], mask [N, L])`` of single-turn conversations ``(prompt, response)`` in
    the chat template, right-padded; the mask is 1 on the response's tokens and its
    ``<|end|>``: the tokens a log-likelihood score sums."""
    rendered = [tokenizer.render_chat([{"role": "user", "content": p},
                                       {"role": "assistant", "content": r}]) for p, r in pairs]
    width = max(len(ids) for ids, _ in rendered)
    tokens = np.full((len(pairs), width), tokenizer.PAD, np.int32)
    mask = np.zeros((len(pairs), width), np.float32)
    for k, (ids, m) in enumerate(rendered):
        tokens[k, :len(ids)], mask[k, :len(ids)] = ids, m
    return tokens, mask


_log_probs = jax.jit(token_log_probs, static_argnums=(2,))


def choice_scores(params, items: Sequence[MCItem], mode: str = "full",
                  norm: str = "none") -> np.ndarray:
    """``[Q, C]`` log-likelihood scores (:func:`~.formats.choice_log_likelihood`) of each
    item's choices. ``mode="full"``: the plain question, answered ``"The answer is <choice>."``
    (``norm`` by the choice's tokens or characters); ``mode="letter"``: the book's lettered
    block (:func:`~.formats.mc_block`) answered ``"(X)"``."""
    if mode == "full":
        pairs = [(it.question.prompt, FULL_ANSWER.format(c)) for it in items for c in it.choices]
        chars = [[len(FULL_ANSWER.format(c)) for c in it.choices] for it in items]
    elif mode == "letter":
        pairs = [(formats.mc_block(it.question.prompt, it.choices), f"({letter})")
                 for it in items for letter in formats.LETTERS[:len(it.choices)]]
        chars = None
    else:
        raise ValueError(f"mode must be 'full' or 'letter', got {mode!r}")
    tokens, mask = conversation_batch(pairs)
    logp = np.asarray(_log_probs(params, jnp.asarray(tokens), _config()))
    shape = (len(items), len(items[0].choices), -1)
    return np.asarray(formats.choice_log_likelihood(
        logp.reshape(shape), mask.reshape(shape),
        None if chars is None else np.asarray(chars, np.float32), norm))


def greedy_answers(params, prompts: Sequence[str], max_new_tokens: int = 48) -> list[str]:
    """The model's greedy reply to each prompt (KV-cache generation at temperature 0), at most
    ``max_new_tokens`` long and never past the model's context."""
    encoded = encode_prompts(list(prompts))
    max_new_tokens = min(max_new_tokens, _config().max_seq_len - encoded.tokens.shape[1])
    gen = sampling.generate(params, encoded.tokens, jax.random.PRNGKey(0), _config(),
                            prompt_lengths=encoded.lengths, max_new_tokens=max_new_tokens,
                            temperature=0.0)
    return sampling.decode_masked(gen.tokens, gen.mask)


def format_scores(params, items: Sequence[MCItem]) -> dict:
    """The same items scored every way (§16.1), as ``{name: 0/1 array [Q]}``:

    * ``full``, ``full_token``, ``full_char``: argmax of the full answers' log-likelihood, no
      normalisation, per token, per character;
    * ``letter``: argmax of the letters' log-likelihood after the lettered block;
    * ``generate_parser``: the greedy reply to the plain question, read by the world's own
      parser (:func:`rlhf_book.data.stated_answer`, the last answer of the topic it states);
    * ``generate_lenient``: the same replies read by ``The answer is X``;
    * ``generate_strict``: read by the strict ``The answer is: X`` (MetaMath's suffix,
      :func:`~.formats.extract_strict_answer` ``"answer_is"``);
    * ``generate_mc_letter``: the greedy reply to the lettered block read for a ``(X)``.

    Also ``letter_pred`` (the predicted letters' indices) and the replies' ``texts``."""
    out = {}
    gold = np.asarray([it.answer for it in items])
    for norm, name in (("none", "full"), ("token", "full_token"), ("char", "full_char")):
        out[name] = (choice_scores(params, items, "full", norm).argmax(-1) == gold).astype(float)
    letter = choice_scores(params, items, "letter").argmax(-1)
    out["letter"], out["letter_pred"] = (letter == gold).astype(float), letter
    texts = greedy_answers(params, [it.question.prompt for it in items])
    answers = [it.question.answer for it in items]
    out["generate_parser"] = np.asarray(
        [data.stated_answer(it.question, t) == a for it, t, a in zip(items, texts, answers)], float)
    lenient = [LENIENT.search(t) for t in texts]
    out["generate_lenient"] = np.asarray(
        [m is not None and m.group(1).strip() == a for m, a in zip(lenient, answers)], float)
    out["generate_strict"] = np.asarray(
        [formats.extract_strict_answer(t, "answer_is") == a for t, a in zip(texts, answers)], float)
    mc_texts = greedy_answers(params, [formats.mc_block(it.question.prompt, it.choices)
                                       for it in items])
    mc_letters = [re.search(r"\(([A-J])\)", t) for t in mc_texts]
    out["generate_mc_letter"] = np.asarray(
        [m is not None and m.group(1) == it.letter for m, it in zip(mc_letters, items)], float)
    out["texts"], out["mc_texts"] = texts, mc_texts
    return out


# ----------------------------------------------------------------------------------------------
# §16.2 and Appendix C.2: variance


def rerun_questions(per_topic: int = RERUN_QUESTIONS, seed: int = RERUN_SEED) -> list[data.Question]:
    """``per_topic`` rephrased questions of each of the five topics (arithmetic included)."""
    rng = np.random.default_rng(seed)
    out = []
    for group in group_by_topic(data.question_splits().rephrased):
        out += [group[i] for i in rng.choice(len(group), min(per_topic, len(group)),
                                             replace=False)]
    return out


def rerun_matrix(params, questions: Sequence[data.Question], runs: int = RERUNS,
                 seed: int = RERUN_SEED, temperature: float = 1.0) -> dict[str, np.ndarray]:
    """``runs`` sampled re-runs of one evaluation: ``right [Q, runs]`` (0/1: run ``r``'s answer
    to question ``q`` states the gold answer), ``gold [Q, runs]`` (the gold reward), the
    ``answers [Q][runs]`` each states (the world's parser; ``None`` for no answer), the right
    answers ``truth [Q]`` and the ``topics [Q]``. Column ``r`` is one complete run of the
    evaluation."""
    a = answer_samples(params, questions, _config(), jax.random.PRNGKey(seed), samples=runs,
                       temperature=temperature)
    stated = [[data.stated_answer(q, t) for t in row] for q, row in zip(questions, a["texts"])]
    return {"right": a["right"], "gold": a["gold"], "answers": stated,
            "truth": [q.answer for q in questions],
            "topics": np.asarray([q.topic for q in questions])}


def predicted_std(right) -> float:
    """The run-to-run standard deviation of the accuracy predicted from the samples ``[Q, n]``:
    ``sqrt(sum_i p_i (1 - p_i)) / Q`` with ``p_i (1 - p_i)`` estimated without bias
    (``n / (n - 1)`` times the plug-in)."""
    right = np.asarray(right, np.float64)
    p = right.mean(axis=1)
    n = right.shape[1]
    if right.ndim != 2 or n < 2:
        raise ValueError(f"right must be [Q, n] with n >= 2 samples, got shape {right.shape}")
    return float(np.sqrt(np.sum(p * (1 - p)) * n / (n - 1)) / right.shape[0])


def std_se(std: float, runs: int) -> float:
    """The standard error of a standard deviation measured over ``runs`` normal re-runs,
    ``std / sqrt(2 (runs - 1))``."""
    if runs < 2:
        raise ValueError(f"runs must be >= 2 to measure a spread, got {runs}")
    return std / np.sqrt(2 * (runs - 1))


def variance_table(matrix: dict) -> list[dict]:
    """Per topic (and ``"all"``): ``n`` questions, the mean accuracy, the measured run-to-run
    standard deviation (``measured``, over the ``runs`` columns, with ``measured_se``) and the
    one :func:`predicted_std` predicts from each question's chance of a right answer."""
    right, topics = matrix["right"], matrix["topics"]
    rows = []
    for topic in list(dict.fromkeys(topics)) + ["all"]:
        r = right if topic == "all" else right[topics == topic]
        runs = r.mean(axis=0)
        measured = float(runs.std(ddof=1))
        rows.append({"topic": topic, "n": r.shape[0], "accuracy": float(r.mean()),
                     "measured": measured, "measured_se": std_se(measured, r.shape[1]),
                     "predicted": predicted_std(r)})
    return rows


# ----------------------------------------------------------------------------------------------
# §16.4 Contamination


@dataclasses.dataclass(frozen=True)
class LeakSplit:
    """Held-out questions about unseen facts: ``leaked`` (asked verbatim, with the answer, in
    the contaminated SFT data), ``paraphrased`` (the same facts under other templates, never
    leaked as text) and ``clean`` (facts nothing leaked)."""

    leaked: list
    paraphrased: list
    clean: list


def leak_split(n_facts: int = LEAK_FACTS, per_fact: int = LEAK_TEMPLATES,
               seed: int = LEAK_SEED) -> LeakSplit:
    """Pick ``n_facts`` of the unseen facts and leak ``per_fact`` of each one's questions (its
    phrasings drawn at random); the other questions of those facts are the paraphrases, the
    questions of the remaining unseen facts are clean."""
    rng = np.random.default_rng(seed)
    unseen = data.fact_questions(data.question_splits().unseen)
    facts = sorted({(q.topic, q.subject) for q in unseen})
    if not 1 <= n_facts < len(facts):
        raise ValueError(f"n_facts must be in [1, {len(facts)}), got {n_facts}")
    chosen = {facts[i] for i in rng.choice(len(facts), n_facts, replace=False)}
    split, counts = LeakSplit([], [], []), {}
    for i in rng.permutation(len(unseen)):
        q = unseen[i]
        fact = (q.topic, q.subject)
        if fact not in chosen:
            split.clean.append(q)
        elif counts.get(fact, 0) < per_fact:
            split.leaked.append(q)
            counts[fact] = counts.get(fact, 0) + 1
        else:
            split.paraphrased.append(q)
    return split


def leaked_conversations(questions: Sequence[data.Question],
                         copies: int = LEAK_COPIES) -> list[list[dict]]:
    """Each question with a concise right answer, as an SFT conversation, ``copies`` times:
    what a benchmark leaked into a scraped instruction set looks like."""
    return [[{"role": "user", "content": q.prompt},
             {"role": "assistant", "content": FULL_ANSWER.format(q.answer)}]
            for q in questions] * copies


def sft_texts(conversations) -> list[str]:
    """The plain text of each conversation (its turns joined), what decontamination scans."""
    return [" ".join(turn["content"] for turn in c) for c in conversations]


def contaminated_sft(params, split: LeakSplit, leak: bool = True,
                     seed: int = LEAK_SEED) -> tuple:
    """Continue chapter 4's SFT from ``params`` for :data:`LEAK_CONFIG` steps on the training
    demonstrations, with ``split.leaked`` mixed in when ``leak`` (the control run, ``leak=
    False``, trains on the same demonstrations alone). Returns ``(params, conversations)``."""
    demos = data.sft_demonstrations(seed=seed, n=LEAK_CONFIG.n_demonstrations)
    conversations = demos + (leaked_conversations(split.leaked) if leak else [])
    new, _ = train_sft(_config(), params, LEAK_CONFIG,
                       ch04_experiments.sft_batches(conversations), seed=seed, progress=False)
    return new, conversations


def detection(conversations, split: LeakSplit, n: int = 8) -> dict[str, np.ndarray]:
    """:func:`~.contamination.ngram_contamination` of each group's prompts against the SFT
    data's text: ``{group: bool [len(group)]}``."""
    texts = sft_texts(conversations)
    return {name: contamination.ngram_contamination(texts, [q.prompt for q in qs], n)
            for name, qs in vars(split).items()}


def group_accuracy(params, split: LeakSplit, samples: int = EVAL_SAMPLES,
                   seed: int = LEAK_SEED) -> dict[str, tuple[float, float]]:
    """Accuracy on each group of the split, ``samples`` answers per question at T = 1:
    ``{group: (mean, standard error)}``. The mean is over questions; the standard error is over
    **facts** (each fact's questions averaged first): the leak acts fact by fact, so the
    phrasings of one fact succeed or fail together and are not independent draws."""
    out = {}
    for name in ("leaked", "paraphrased", "clean"):
        qs = getattr(split, name)
        right = answer_samples(params, qs, _config(), jax.random.PRNGKey(seed),
                               samples=samples)["right"].mean(axis=1)
        facts = np.asarray([f"{q.topic}/{q.subject}" for q in qs])
        per_fact = np.asarray([right[facts == f].mean() for f in dict.fromkeys(facts)])
        out[name] = (float(right.mean()), float(mean_se(per_fact)[1]))
    return out


# ----------------------------------------------------------------------------------------------
# §16.3 Leaderboards

ARENA_QUESTIONS = 100    # rephrased questions, topic-balanced
ARENA_SAMPLES = 32       # answers per question of the T = 1 model (best-of-4 draws from them)
ARENA_PER_PLAYER = 8     # answers per question each player brings
ARENA_BATTLES = 2000
ARENA_ORDERS = 64        # orders of the same battles that Elo is run in
JUDGE_NOISE = 0.5        # the judge's Bradley-Terry temperature, in gold-reward units
ARENA_SEED = 3
# The reward model as a judge and as best-of-N's ranker: chapter 14's proxy (chapter 5's model).
RM_JUDGE = rm_proxy

PLAYERS = ("pretrained, T = 1", "SFT, T = 1.5", "SFT, T = 1", "SFT, T = 0.5",
           "SFT best-of-4 by RM")


def arena_answers(sft_params, pretrained_params, rm_reward,
                  seed: int = ARENA_SEED) -> dict[str, dict[str, np.ndarray]]:
    """Each player's :data:`ARENA_PER_PLAYER` answers to each of :data:`ARENA_QUESTIONS`
    questions: ``{player: {"gold": [Q, k], "proxy": [Q, k], "texts": [Q, k]}}``, the gold
    reward and the reward model's score (``rm_reward``, a :class:`~rlhf_book.lm.rollout.Reward`)
    of every answer. Best-of-4 keeps the highest-scored of each 4 of :data:`ARENA_SAMPLES`
    answers of the T = 1 model."""
    rng = np.random.default_rng(seed)
    questions = data.sample_questions(data.question_splits().rephrased, ARENA_QUESTIONS, rng)
    k = ARENA_PER_PLAYER
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)

    def play(params, temperature, samples, key):
        a = answer_samples(params, questions, _config(), key, samples=samples,
                           temperature=temperature, reward=rm_reward)
        return {"gold": a["gold"], "proxy": a["reward"], "texts": a["texts"]}

    wide = play(sft_params, 1.0, ARENA_SAMPLES, keys[0])
    groups = {name: v.reshape(len(questions), k, -1) for name, v in wide.items()}
    best = groups["proxy"].argmax(-1)[..., None]
    out = {PLAYERS[0]: play(pretrained_params, 1.0, k, keys[1]),
           PLAYERS[1]: play(sft_params, 1.5, k, keys[2]),
           PLAYERS[2]: {name: v[:, :k] for name, v in wide.items()},
           PLAYERS[3]: play(sft_params, 0.5, k, keys[3]),
           PLAYERS[4]: {name: np.take_along_axis(v, best, -1)[..., 0]
                        for name, v in groups.items()}}
    return out


def battles(answers: dict, n: int = ARENA_BATTLES, noise: float = JUDGE_NOISE,
            seed: int = ARENA_SEED) -> dict[str, np.ndarray]:
    """``n`` battles: a random question, two different random players, one random answer of
    each; the judge prefers the first with probability ``sigmoid((gold_a - gold_b) / noise)``
    (the simulated annotators' Bradley-Terry model). Returns ``pairs [n, 2]``, ``outcomes
    [n]`` (1 when the first won) and the reward model's verdict ``rm_outcomes [n]`` (1 when it
    scores the first answer higher): a judge that is itself a proxy."""
    rng = np.random.default_rng(seed)
    players = list(answers)
    gold = np.stack([answers[p]["gold"] for p in players])    # [P, Q, k]
    proxy = np.stack([answers[p]["proxy"] for p in players])
    n_players, n_q, k = gold.shape
    a = rng.integers(n_players, size=n)
    b = (a + rng.integers(1, n_players, size=n)) % n_players  # a different player
    q, i, j = rng.integers(n_q, size=n), rng.integers(k, size=n), rng.integers(k, size=n)
    p_first = 1 / (1 + np.exp(-(gold[a, q, i] - gold[b, q, j]) / noise))
    return {"pairs": np.stack([a, b], 1).astype(np.int32),
            "outcomes": (rng.random(n) < p_first).astype(np.float32),
            "rm_outcomes": (proxy[a, q, i] > proxy[b, q, j]).astype(np.float32)}


def elo_in_orders(pairs, outcomes, n_players: int, orders: int = ARENA_ORDERS,
                  seed: int = ARENA_SEED) -> np.ndarray:
    """Elo ratings of the same battles played in ``orders`` random orders: ``[orders, P]``
    (one vmapped call of :func:`~.leaderboard.elo_ratings`)."""
    perms = jax.vmap(lambda k: jax.random.permutation(k, len(outcomes)))(
        jax.random.split(jax.random.PRNGKey(seed), orders))
    pairs, outcomes = jnp.asarray(pairs), jnp.asarray(outcomes)
    run = jax.jit(jax.vmap(lambda p: elo_ratings(pairs[p], outcomes[p], n_players)))
    return np.asarray(run(perms))


def win_matrix(pairs, outcomes, n_players: int) -> np.ndarray:
    """``[P, P]``: the share of battles between players ``a`` and ``b`` that ``a`` won (NaN
    where they never met), from both seats."""
    wins = np.zeros((n_players, n_players))
    games = np.zeros((n_players, n_players))
    for (a, b), s in zip(np.asarray(pairs), np.asarray(outcomes)):
        wins[a, b] += s
        wins[b, a] += 1 - s
        games[a, b] += 1
        games[b, a] += 1
    with np.errstate(invalid="ignore"):
        return wins / games
