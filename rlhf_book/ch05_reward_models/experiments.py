"""Chapter 5's experiments: what ``notebooks/ch05_reward_models.ipynb`` runs.

Settings are the named constants below; change one and rerun the notebook. The experiments
that train on chapter 4's SFT model of the small GPT take its parameters as an argument
(:func:`rlhf_book.textbook.substrate.sft_small` provides them):

* §5.1, §5.4: the Bradley-Terry curves with Llama 2's margins (:func:`per_pair_bt_loss`), the
  Plackett-Luce probabilities of every ranking, exact and sampled, and fitting item scores from
  sampled rankings three ways (:func:`fit_estimators`);
* notebook section 5: a reward model on chapter 4's SFT model trained on the biased
  annotators' pairs (:func:`rm_datasets`, :func:`rm_run`), read against its labels' ceiling on
  style pairs and on correctness pairs (:func:`accuracy_by_kind`), against the gold reward by
  answer style, on probes of the annotators' biases (:func:`bias_probes`,
  :func:`probe_scores`, :func:`position_bias_cost`), next to what its base policy knows
  (:func:`policy_prefers_right`);
* notebook section 6: the lecture notes' six-pair reward-model lesson done right
  (:func:`lesson_runs`);
* §5.7: the targets of each kind of model (:func:`value_targets`) and the ways to read an ORM
  (:func:`orm_aggregates`).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlhf_book import data
from rlhf_book.ch03_training_overview import discounted_returns
from rlhf_book.ch05_reward_models.losses import (AGGREGATIONS, POOLINGS, aggregate_token_scores,
                                                 balanced_pairwise_loss, bradley_terry_loss,
                                                 init_reward_model, plackett_luce_loss,
                                                 preference_accuracy, sample_plackett_luce)
from rlhf_book.ch05_reward_models.loop import (LESSON_CONFIG, RMConfig, encode_pairs,
                                               gold_pair_accuracy, lesson_batch, lesson_tokenize,
                                               rm_train_step, score_pairs, train_reward_model)
from rlhf_book.data.world import fact_statements
from rlhf_book.lm import gpt, tokenizer, train
from rlhf_book.lm.rollout import token_log_probs

# The model the reward model of section 5 starts from: chapter 4's SFT model of the small GPT.
RM_MODEL = "small"
RM_SEED = 0

# §5.1: the Bradley-Terry curves; the margins of §5.4.1 (Llama 2: the rating gap, e.g. 5 - 2 = 3).
DELTAS = np.linspace(-6.0, 6.0, 241)
MARGINS = (0.0, 1.0, 3.0)

# §5.4.3: three completions scored (2, 1, 0); fitting eight items' scores from rankings of four.
PL_SCORES = (2.0, 1.0, 0.0)
PL_DRAWS = 20_000
FIT_ITEMS, FIT_K, FIT_RANKINGS, FIT_STEPS = 8, 4, 300, 500

# Notebook section 5: a reward model on chapter 4's SFT model of the small GPT, with the
# pipeline's recipe (its stage 3 trains the same on the mini GPT): 6,400 pairs about the
# training questions, labelled by the majority of 3 annotators (noise 0.5) with the documented
# biases (verbosity, confidence, position: data.AnnotatorBias()), three in four of them
# right-vs-wrong pairs in one style; 200 steps of 32 pairs (one pass) at 3e-4, the library's
# RMConfig defaults otherwise. Tested on 500 pairs about the rephrased questions (training
# facts, phrasings no training data contains) and 500 about the unseen facts. Measured on the
# small model (2-core CPU, shared): correctness pairs stay at 0.53 after 200 steps, 0.53-0.56
# after 400 steps at 3e-4 or 1e-3, also with mean pooling; style pairs reach 0.75-0.78.
RM_CONFIG = RMConfig(steps=200, batch_size=32, seq_len=128, learning_rate=3e-4,
                     warmup_steps=30, log_every=50, n_pairs=6400)
N_HELDOUT_PAIRS = 500
ANNOTATORS, ANNOTATOR_NOISE = 3, 0.5
ANNOTATOR_BIAS = data.AnnotatorBias()
CORRECTNESS_FRACTION = 0.75
HELDOUT_SEED, UNSEEN_SEED, PROBE_SEED = 1, 2, 3

# Notebook section 6: the six pairs of the lecture notes' reward-model lesson on its randomly
# initialised mini GPT,
# with a 160-token context; each step draws a batch of 6 of the six pairs, with replacement.
LESSON_RM = RMConfig(steps=20, batch_size=6, seq_len=LESSON_CONFIG.max_seq_len,
                          learning_rate=5e-4, warmup_steps=2, log_every=20)
LESSON_TRUNCATION = 128  # the lesson's context, which cut its sequences from the right

# §5.7: token rewards of a four-token completion; the steps of the PRM end at tokens 2 and 4.
RM_TYPE_REWARDS = {"dense r = (1, 0, 1, 1)": (1.0, 0.0, 1.0, 1.0),
                   "outcome only r = (0, 0, 0, 1)": (0.0, 0.0, 0.0, 1.0)}
PRM_STEP_ENDS, PRM_STEP_LABELS = (2, 4), (-1, 1)
ORM_PROBS = (0.9, 0.8, 0.95, 0.6)  # §5.7.1's aggregation example (the lecture notes' numbers)


# ----------------------------------------------------------------------------------------------
# §5.1, §5.4: the Bradley-Terry and Plackett-Luce models


def per_pair_bt_loss(deltas, margin: float = 0.0) -> np.ndarray:
    """``-log sigmoid(delta - margin)`` for each reward gap in ``deltas``, through
    :func:`~rlhf_book.ch05_reward_models.bradley_terry_loss` one pair at a time."""
    one = lambda d: bradley_terry_loss(d[None], jnp.zeros(1), margin)
    return np.asarray(jax.vmap(one)(jnp.asarray(deltas, jnp.float32)))


def ranking_probabilities(scores=PL_SCORES) -> dict[tuple[int, ...], float]:
    """``{ranking: P(ranking)}`` under Plackett-Luce (eq. 20) for every ordering of ``scores``,
    a ranking listing item indices best first: ``exp(-plackett_luce_loss)`` of each ordering."""
    s = np.asarray(scores, np.float32)
    orders = list(itertools.permutations(range(len(s))))
    nll = jax.vmap(lambda row: plackett_luce_loss(row[None]))(jnp.asarray(s[np.array(orders)]))
    return {order: float(p) for order, p in zip(orders, np.exp(-np.asarray(nll, np.float64)))}


def sampled_rankings(key, scores, draws: int) -> dict[tuple[int, ...], float]:
    """Frequencies of the rankings drawn by
    :func:`~rlhf_book.ch05_reward_models.sample_plackett_luce`, ``draws`` of them."""
    s = jnp.broadcast_to(jnp.asarray(scores, jnp.float32), (draws, len(scores)))
    counts = collections.Counter(map(tuple, np.asarray(sample_plackett_luce(key, s)).tolist()))
    return {order: counts[order] / draws for order in itertools.permutations(range(len(scores)))}


def ranking_dataset(seed: int = 0, n_items: int = FIT_ITEMS, k: int = FIT_K,
                    n_rankings: int = FIT_RANKINGS):
    """``(true_scores [n_items], ranked [n_rankings, k])``: items with scores ``r* ~ N(0, 1)``;
    each row is a random subset of ``k`` items ranked by a Plackett-Luce draw (Gumbel-max),
    item indices best first."""
    rng = np.random.default_rng(seed)
    true = rng.normal(size=n_items)
    subsets = np.stack([rng.choice(n_items, size=k, replace=False) for _ in range(n_rankings)])
    order = sample_plackett_luce(jax.random.PRNGKey(seed), jnp.asarray(true[subsets]))
    return true, np.take_along_axis(subsets, np.asarray(order), axis=1)


def fit_item_scores(loss_of_scores, n_items: int, steps: int = FIT_STEPS,
                    learning_rate: float = 0.1) -> np.ndarray:
    """Minimise ``loss_of_scores(theta)`` over ``theta [n_items]`` with Adam from zeros (one
    jitted ``lax.scan``); returns the scores centred to mean 0, the only thing a
    Bradley-Terry or Plackett-Luce likelihood identifies."""
    optimizer = optax.adam(learning_rate)

    def step(carry, _):
        theta, state = carry
        grads = jax.grad(loss_of_scores)(theta)
        updates, state = optimizer.update(grads, state)
        return (optax.apply_updates(theta, updates), state), None

    theta = jnp.zeros(n_items)
    (theta, _), _ = jax.jit(lambda c: jax.lax.scan(step, c, None, length=steps))(
        (theta, optimizer.init(theta)))
    theta = np.asarray(theta, np.float64)
    return theta - theta.mean()


def fit_estimators(true, ranked) -> dict[str, np.ndarray]:
    """Centred scores fitted three ways from the same rankings: the Plackett-Luce likelihood
    (eq. 20), Bradley-Terry on all ``C(K, 2)`` pairs of each ranking averaged per ranking
    (eq. 19), and Bradley-Terry on one pair per ranking (its top two items), the information
    a single pairwise annotation would give."""
    ranked = jnp.asarray(ranked)
    n = len(true)
    return {
        "Plackett-Luce (eq. 20)": fit_item_scores(lambda t: plackett_luce_loss(t[ranked]), n),
        "BT, all C(K,2) pairs (eq. 19)": fit_item_scores(
            lambda t: balanced_pairwise_loss(t[ranked]), n),
        "BT, top pair only": fit_item_scores(
            lambda t: bradley_terry_loss(t[ranked[:, 0]], t[ranked[:, 1]]), n),
    }


# ----------------------------------------------------------------------------------------------
# Notebook section 5: a reward model on chapter 4's SFT model, read against its labels' ceiling


def rm_datasets(seed: int = 0) -> dict[str, list]:
    """``{"train", "rephrased", "unseen"}``: ``RM_CONFIG.n_pairs`` pairs about the training
    questions and ``N_HELDOUT_PAIRS`` about the rephrased questions and about the unseen facts,
    all labelled by the same biased annotators, three in four of them correctness pairs."""
    splits = data.question_splits()
    kw = dict(n_annotators=ANNOTATORS, noise=ANNOTATOR_NOISE, bias=ANNOTATOR_BIAS,
              correctness_fraction=CORRECTNESS_FRACTION)
    return {"train": data.preference_pairs(seed=seed, n=RM_CONFIG.n_pairs,
                                           questions=splits.train, **kw),
            "rephrased": data.preference_pairs(seed=seed + HELDOUT_SEED, n=N_HELDOUT_PAIRS,
                                               questions=splits.rephrased, **kw),
            "unseen": data.preference_pairs(seed=seed + UNSEEN_SEED, n=N_HELDOUT_PAIRS,
                                            questions=splits.unseen, **kw)}


def _kind_accuracy(pairs, r_c, r_r) -> dict[str, float]:
    kinds = np.array([p.kind for p in pairs])
    better = np.asarray(r_c) > np.asarray(r_r)
    return {kind: float(better[kinds == kind].mean()) for kind in data.PAIR_KINDS
            if (kinds == kind).any()}


class RMRun(NamedTuple):
    """One trained reward model: its parameters, its training history (with the held-out
    accuracy on style and on correctness pairs after every chunk, ``eval_style`` and
    ``eval_correctness``) and its rewards of the held-out pairs' chosen and rejected
    responses, ``{set name: (chosen [N], rejected [N])}``."""

    params: dict
    history: dict
    scores: dict


# [guide:rm-run]
def rm_run(base_params, datasets: dict, config: gpt.GPTConfig | None = None,
           rm_config: RMConfig = RM_CONFIG, seed: int = RM_SEED) -> RMRun:
    """A reward model from ``base_params`` (chapter 4's SFT model) trained on
    ``datasets["train"]`` with ``rm_config`` (the driver of :func:`train_reward_model`, with
    the rephrased pairs' accuracy by kind measured after every chunk), then scored on every
    other set of ``datasets`` (the per-chunk evaluation needs a ``"rephrased"`` set; without
    one the model is only trained)."""
    config = config or gpt.get_config(RM_MODEL)
    params = init_reward_model(jax.random.PRNGKey(seed), base_params, config)
    batches = {name: encode_pairs(pairs, rm_config.seq_len) for name, pairs in datasets.items()}

    def evaluate(state):
        r_c, r_r = score_pairs(state.params, config, batches["rephrased"], rm_config.pooling)
        return _kind_accuracy(datasets["rephrased"], r_c, r_r)

    tc = rm_config.train_config()
    state, history = train.run_in_chunks(
        rm_train_step(config, rm_config, train.random_rows(
            jax.tree.map(jnp.asarray, batches["train"]), tc.batch_size)),
        train.create_train_state(params, train.make_optimizer(tc)), steps=tc.steps,
        chunk_size=tc.log_every, key=jax.random.PRNGKey(seed), progress=False,
        evaluate=evaluate if "rephrased" in datasets else None)
    scores = {name: score_pairs(state.params, config, batch, rm_config.pooling)
              for name, batch in batches.items() if name != "train"}
    return RMRun(state.params, history, scores)
# [/guide]


def annotator_references(pairs) -> dict[str, float]:
    """The two lines every reward-model accuracy is read against: the best accuracy any model
    can reach on these labels (:func:`rlhf_book.data.label_accuracy_ceiling` of each pair's
    labelling probability, the annotators' biases included) and the annotators' agreement."""
    return {"ceiling": data.label_accuracy_ceiling([p.p_true for p in pairs], ANNOTATORS),
            "agreement": data.inter_annotator_agreement([p.votes for p in pairs])}


def _accuracy_row(pairs, r_c, r_r) -> dict[str, float]:
    r_c, r_r = np.asarray(r_c), np.asarray(r_r)
    acc = float(preference_accuracy(r_c, r_r))
    return {"n": len(pairs), "accuracy": acc,
            "se": float(np.sqrt(acc * (1 - acc) / len(pairs))),
            "gold_accuracy": gold_pair_accuracy(pairs, r_c, r_r),
            **annotator_references(pairs)}


def accuracy_by_kind(pairs, r_c, r_r) -> dict[str, dict[str, float]]:
    """``{"all", "style", "correctness": {n, accuracy, se, gold_accuracy, ceiling,
    agreement}}``: accuracy against the majority label (with its binomial standard error),
    against the gold preference, and the two references, over all pairs and per
    :attr:`~rlhf_book.data.PreferencePair.kind`."""
    out = {"all": _accuracy_row(pairs, r_c, r_r)}
    kinds = np.array([p.kind for p in pairs])
    for kind in data.PAIR_KINDS:
        idx = np.flatnonzero(kinds == kind)
        if len(idx):
            out[kind] = _accuracy_row([pairs[i] for i in idx], np.asarray(r_c)[idx],
                                      np.asarray(r_r)[idx])
    return out


def accuracy_by_style(pairs, r_c, r_r) -> dict[str, dict[str, float]]:
    """Accuracy, gold accuracy and ceiling per unordered pair of styles (a correctness pair
    is "<style> vs wrong"), largest groups first."""
    groups = collections.defaultdict(list)
    for k, p in enumerate(pairs):
        groups[" vs ".join(sorted((p.style_chosen, p.style_rejected)))].append(k)
    r_c, r_r = np.asarray(r_c), np.asarray(r_r)
    out = {}
    for name, idx in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        sub = [pairs[k] for k in idx]
        out[name] = {"n": len(idx),
                     "accuracy": float(preference_accuracy(r_c[idx], r_r[idx])),
                     "gold_accuracy": gold_pair_accuracy(sub, r_c[idx], r_r[idx]),
                     "ceiling": annotator_references(sub)["ceiling"]}
    return out


def position_bias_cost(seed: int = HELDOUT_SEED) -> dict[str, float]:
    """The label ceiling of the rephrased held-out pairs with the annotators' biases, and of
    the same pairs (same seed, so the same texts in the same order) labelled without the
    position bias: a reward model scores each response alone, so the position bias can only
    add label noise, and this is what it costs."""
    questions = data.question_splits().rephrased
    kw = dict(n=N_HELDOUT_PAIRS, n_annotators=ANNOTATORS, noise=ANNOTATOR_NOISE,
              questions=questions, correctness_fraction=CORRECTNESS_FRACTION)
    biased = data.preference_pairs(seed=seed, bias=ANNOTATOR_BIAS, **kw)
    no_position = data.preference_pairs(
        seed=seed, bias=dataclasses.replace(ANNOTATOR_BIAS, position=0.0), **kw)
    return {"with position bias": annotator_references(biased)["ceiling"],
            "without position bias": annotator_references(no_position)["ceiling"]}


class Probe(NamedTuple):
    """Two correct answers to one question that the gold reward and the annotators rank
    differently: ``plain`` and ``biased`` (padded, or with "definitely"), their gold rewards,
    and the probability that one annotator prefers ``biased``, averaged over the two orders of
    showing them (:func:`rlhf_book.data.annotator_utility`, the position bias cancels)."""

    question: data.Question
    plain: str
    biased: str
    gold_plain: float
    gold_biased: float
    p_annotator: float


# The two probes of the annotators' documented biases (data.AnnotatorBias): the same correct
# answer padded with pleasantries (verbosity: the gold reward charges 0.02 per byte past 48,
# the annotators pay 0.015 per byte), and "The answer is X." against "It is definitely X."
# (confidence: worth nothing to the gold reward, 0.25 to the annotators).
PROBES = ("verbosity", "confidence")


def bias_probes(seed: int = PROBE_SEED) -> dict[str, list[Probe]]:
    """``{probe: [Probe]}`` for every rephrased fact question (:data:`PROBES`)."""
    rng = np.random.default_rng(seed)
    questions = data.fact_questions(data.question_splits().rephrased)
    bias = ANNOTATOR_BIAS

    def probe(q, plain, biased):
        u = [data.annotator_utility(q, t, bias) for t in (plain, biased)]
        z = (u[1] - u[0]) / ANNOTATOR_NOISE
        p = np.mean([1.0 / (1.0 + np.exp(-(z + s * bias.position))) for s in (1, -1)])
        return Probe(q, plain, biased, data.gold_reward(q, plain), data.gold_reward(q, biased),
                     float(p))

    out = {name: [] for name in PROBES}
    for q in questions:
        padded = data.render_answer(q, "verbose", rng)
        plain = next(s for s in fact_statements(q.topic, q.subject, q.answer) if s in padded)
        out["verbosity"].append(probe(q, plain, padded))
        out["confidence"].append(probe(q, f"The answer is {q.answer}.",
                                       f"It is definitely {q.answer}."))
    return out


def probe_scores(params, probes: list[Probe], config: gpt.GPTConfig | None = None,
                 pooling: str = "last") -> dict[str, float]:
    """How the reward model ``params`` reads one probe set: the share of questions where it
    scores the biased answer higher (with its binomial standard error), the mean score gap
    ``r(biased) - r(plain)`` with its standard error, the mean gold gap, and the annotators'
    mean probability of preferring the biased answer; ``"gaps"`` holds every score gap."""
    config = config or gpt.get_config(RM_MODEL)
    pairs = [data.PreferencePair(p.question.prompt, p.biased, p.plain, p.gold_biased,
                                 p.gold_plain, "biased", "plain", p.question, (1,), 1.0,
                                 p.p_annotator) for p in probes]
    r_b, r_p = score_pairs(params, config, encode_pairs(pairs, RM_CONFIG.seq_len), pooling)
    gaps = np.asarray(r_b, np.float64) - np.asarray(r_p, np.float64)
    share = float(np.mean(gaps > 0))
    q = data.majority_probability([p.p_annotator for p in probes], ANNOTATORS)
    return {"n": len(probes), "prefers_biased": share,
            "prefers_biased_se": float(np.sqrt(share * (1 - share) / len(probes))),
            "score_gap": float(gaps.mean()),
            "score_gap_se": float(gaps.std(ddof=1) / np.sqrt(len(gaps))),
            "gold_gap": float(np.mean([p.gold_biased - p.gold_plain for p in probes])),
            "annotators_prefer_biased": float(np.mean([p.p_annotator for p in probes])),
            "label_gap": float(np.mean(np.log(q / (1 - q)))), "gaps": gaps.tolist()}


_sequence_log_probs = jax.jit(
    lambda params, tokens, mask, config: (token_log_probs(params, tokens, config) * mask).sum(1),
    static_argnums=3)


def policy_prefers_right(lm_params, pairs, config: gpt.GPTConfig | None = None) -> np.ndarray:
    """For each correctness pair of ``pairs``: whether the language model ``lm_params`` (the
    SFT policy the reward model starts from) gives the right answer a higher log-probability
    than the wrong one, ``log pi(right | prompt) > log pi(wrong | prompt)``, the response's
    tokens and ``<|end|>`` counted. A bool array, one entry per correctness pair: does the
    policy know the facts the reward model must learn to check?"""
    config = config or gpt.get_config(RM_MODEL)
    right, wrong = [], []
    for p in pairs:
        if p.kind == "correctness":
            good, bad = ((p.chosen, p.rejected) if p.gold_chosen > p.gold_rejected
                         else (p.rejected, p.chosen))
            right.append((p.prompt, good))
            wrong.append((p.prompt, bad))

    def logp(items):
        rows = [tokenizer.render_chat([{"role": "user", "content": q},
                                       {"role": "assistant", "content": a}]) for q, a in items]
        tokens, _ = tokenizer.pad_batch([ids for ids, _ in rows], RM_CONFIG.seq_len)
        mask, _ = tokenizer.pad_batch([m for _, m in rows], RM_CONFIG.seq_len, pad_id=0)
        return np.asarray(_sequence_log_probs(lm_params, jnp.asarray(tokens),
                                              jnp.asarray(mask, jnp.float32), config))

    return logp(right) > logp(wrong)


# ----------------------------------------------------------------------------------------------
# Notebook section 6: the lecture notes' reward-model lesson, done right


def lesson_lengths(pairs=data.LESSON_PREFERENCE_PAIRS) -> np.ndarray:
    """``[N, 2]`` token counts (chosen, rejected) of the lesson's tokenisation."""
    return np.array([[len(lesson_tokenize(p["prompt"], p[key]))
                      for key in ("preferred", "rejected")] for p in pairs])


def lesson_runs() -> dict[str, dict]:
    """``{pooling: {"history", "seen", "unseen"}}``: the lesson's reward model (randomly
    initialised mini GPT, ``LESSON_CONFIG``) trained on its six pairs with ``LESSON_RM``, once
    per pooling, and its rewards ``(chosen, rejected)`` of the six seen and four unseen pairs."""
    config = LESSON_CONFIG
    seen = lesson_batch(data.LESSON_PREFERENCE_PAIRS)
    unseen = lesson_batch(data.LESSON_UNSEEN_PAIRS)
    runs = {}
    for pooling in POOLINGS:
        key_lm, key_head = jax.random.split(jax.random.PRNGKey(0))
        params = init_reward_model(key_head, gpt.init_params(key_lm, config), config)
        params, history = train_reward_model(
            config, params, dataclasses.replace(LESSON_RM, pooling=pooling), seen, seed=0,
            progress=False)
        runs[pooling] = {"history": history,
                         "seen": score_pairs(params, config, seen, pooling, chunk_size=8),
                         "unseen": score_pairs(params, config, unseen, pooling, chunk_size=8)}
    return runs


# ----------------------------------------------------------------------------------------------
# §5.7: what each kind of model is trained on, and how an ORM is read


def value_targets(rewards: dict | None = None) -> dict[str, np.ndarray]:
    """The return-to-go of each token-reward sequence (gamma = 1): the targets of a value
    function (chapter 3's :func:`~rlhf_book.ch03_training_overview.discounted_returns`)."""
    rewards = RM_TYPE_REWARDS if rewards is None else rewards
    return {name: np.asarray(discounted_returns(jnp.asarray(r), 1.0))
            for name, r in rewards.items()}


def orm_aggregates(probs=ORM_PROBS) -> dict[str, float]:
    """One ORM's per-token probabilities read every way of :data:`AGGREGATIONS` (§5.7.1)."""
    p = jnp.asarray([probs], jnp.float32)
    return {how: float(aggregate_token_scores(p, jnp.ones_like(p), how)[0])
            for how in AGGREGATIONS}
