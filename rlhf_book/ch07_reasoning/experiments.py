"""Chapter 7's experiments: what the notebook runs, with its settings as named constants.

Two kinds:

* **Worked examples** of the chapter's math with the library's functions: the primes below 20
  (the book's RLVR math example, answer 77) and the ``fib`` unit tests, read by the verifiers;
  the share of groups with no signal, ``p^G + (1 - p)^G`` (§7.2.3); pass@k and majority-vote
  curves.
* **RLVR on the world's arithmetic**: chapter 4's SFT model of the small GPT, trained with a
  0/1 verifier on the training sums (:func:`run_rlvr`, ``N_SEEDS`` seeds vmapped) and measured
  on questions no RL prompt contains: the same sums in new phrasings (``rephrased``) and sums
  no demonstration ever showed (``unseen``). :func:`sample_answers` draws coupled samples
  (the same keys) from the policy before and after, so that differences are paired.

The starting policy is an argument (``sft_params``): a chapter does not know where its models
are cached; the notebook passes ``rlhf_book.textbook.substrate.sft_small()``.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_book import data
from rlhf_book.ch04_instruction_tuning.losses import pack_examples, sft_examples
from rlhf_book.ch04_instruction_tuning.loop import SFTConfig, train_sft
from rlhf_book.ch05_reward_models import experiments as ch05_experiments
from rlhf_book.ch06_policy_gradients.loop import RLConfig, reward_model_reward
from rlhf_book.ch07_reasoning import loop, reasoning_length, rlvr
from rlhf_book.ch07_reasoning.loop import _INTEGERS  # the verifiers' reading of a number
from rlhf_book.lm import gpt, rollout, sampling

# ----------------------------------------------------------------------------------------------
# Settings

# The book's RLVR examples (ch. 7 introduction): a worked solution ending in the answer, and
# the fib function with its three unit tests.
PRIMES_BELOW_20 = (2, 3, 5, 7, 11, 13, 17, 19)
PRIMES_RESPONSE = ("The prime numbers below 20 are 2, 3, 5, 7, 11, 13, 17 and 19. Adding them: "
                   "2 + 3 = 5, 5 + 5 = 10, 10 + 7 = 17, 17 + 11 = 28, 28 + 13 = 41, "
                   "41 + 17 = 58, 58 + 19 = 77. The answer is $\\boxed{77}$.")
FIB_TESTS = ((0, 0), (1, 1), (10, 55))

# The RLVR recipe: GRPO's advantage, KL to the SFT model in the loss, 40 steps of 16 prompts
# x 8 completions at temperature 1 (a 0/1 reward needs a learning rate some 10x chapter 6's:
# at the SFT model's pass rate of about 0.1 a third of the groups of 8 carry no signal).
# Fewer steps or prompts per step (32 x 16, 40 x 12: measured) leave the fall in abstention
# within three standard errors over 4 seeds; this size is the notebook's main cost.
RLVR_CONFIG = RLConfig(algorithm="grpo", steps=40, prompts_per_step=16, group_size=8,
                       max_new_tokens=32, temperature=1.0, learning_rate=3e-4, beta=0.02,
                       log_every=40)
# The notebook's run: the book's verifier (the last integer), a lax one (any integer) that a
# policy can game, and a strict format that closes the loophole, each with N_SEEDS seeds.
VERIFIER_NAMES = ("last_integer", "any_integer", "strict_format")
N_SEEDS = 4

# Evaluation: EVAL_SAMPLES answers per question and seed (pass@k for k <= EVAL_SAMPLES), on
# N_EVAL_REPHRASED rephrased questions and N_EVAL_UNSEEN unseen sums.
EVAL_SAMPLES = 16
N_EVAL_REPHRASED = 96
N_EVAL_UNSEEN = 48
EVAL_SEED = 0



# ----------------------------------------------------------------------------------------------
# Worked examples


def fib(n: int) -> int:
    """The book's example program (ch. 7 introduction): correct, and exponential in ``n``."""
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def fib_test_outcomes(program=fib, tests=FIB_TESTS) -> list[bool]:
    """Run the book's ``assert fib(n) == expected`` tests on ``program``: one bool per test."""
    return [program(n) == expected for n, expected in tests]


# ----------------------------------------------------------------------------------------------
# The world's arithmetic


def arithmetic_sets(seed: int = EVAL_SEED) -> dict[str, list]:
    """``{"train", "rephrased", "unseen"}``: the arithmetic questions of
    ``data.question_splits()``. ``train``: every training sum under the SFT data's phrasings
    (the RL prompts); ``rephrased``: ``N_EVAL_REPHRASED`` of the same sums in phrasings no
    training data uses; ``unseen``: ``N_EVAL_UNSEEN`` questions about the held-out sums (drawn
    without replacement with ``seed``)."""
    splits = data.question_splits()
    rng = np.random.default_rng(seed)
    out = {"train": [q for q in splits.train if q.topic == "arithmetic"]}
    for name, n in (("rephrased", N_EVAL_REPHRASED), ("unseen", N_EVAL_UNSEEN)):
        pool = [q for q in getattr(splits, name) if q.topic == "arithmetic"]
        out[name] = [pool[i] for i in rng.choice(len(pool), min(n, len(pool)), replace=False)]
    return out


def run_rlvr(sft_params, verifiers=("last_integer",), advantage: str = "grpo",
             online_filter: bool = False, config: RLConfig = RLVR_CONFIG,
             n_seeds: int = N_SEEDS, questions=None, betas=None, seed: int = 0):
    """RLVR from ``sft_params`` on ``questions`` (default: the training sums), ``n_seeds``
    policies for every verifier in ``verifiers`` (names of ``loop.VERIFIERS``) and every KL
    coefficient in ``betas`` (default: ``config.beta``), all in one ``jax.jit(jax.vmap(train))``
    -- one compilation: the verifier is a one-hot weight vector of a
    :func:`loop.verifier_mixture`, beta a traced number. Returns ``(metrics, lm_params)``:
    per-step metrics as NumPy arrays ``[runs, steps]`` and the final policies' parameters with
    a leading axis of ``runs = len(verifiers) * len(betas) * n_seeds``, in that order
    (verifier-major, seeds innermost)."""
    questions = arithmetic_sets()["train"] if questions is None else questions
    betas = (config.beta,) if betas is None else tuple(betas)
    model_config = gpt.get_config("small")
    prompts = rollout.encode_prompts([q.prompt for q in questions])
    reward = loop.verifier_mixture(questions, verifiers)
    train = loop.make_rlvr_train(config, model_config, sft_params, prompts, reward, advantage,
                                 online_filter)
    V, K = len(verifiers), len(betas)
    keys = jnp.tile(jax.random.split(jax.random.PRNGKey(seed), n_seeds), (V * K, 1))
    swept = jnp.tile(jnp.repeat(jnp.asarray(betas, jnp.float32), n_seeds), V)
    weights = jnp.repeat(jnp.eye(V, dtype=jnp.float32), K * n_seeds, axis=0)
    state, metrics = jax.jit(jax.vmap(train))(keys, swept, weights)
    return {k: np.asarray(v) for k, v in metrics.items()}, state.params["lm"]


def runs_of(tree, n_runs: int, index: int):
    """The ``index``-th block of ``n_runs`` equal blocks along the leading axis of every leaf of
    ``tree`` (e.g. one verifier's seeds out of :func:`run_rlvr`'s policies)."""
    return jax.tree.map(lambda x: x.reshape(n_runs, -1, *x.shape[1:])[index], tree)


def sample_answers(lm_params, questions, samples: int = EVAL_SAMPLES, n_seeds: int = N_SEEDS,
                   seed: int = 1, max_new_tokens: int = RLVR_CONFIG.max_new_tokens,
                   reward=None):
    """``texts [S, samples, Q]``: ``samples`` completions (temperature 1) of each question from
    each of ``S`` policies. ``lm_params`` has a leading policy axis (a vmapped run's final
    policies) or none (one model, e.g. the SFT policy, sampled with ``n_seeds`` keys). Policy
    ``s`` samples with the same key either way: two policies evaluated with the same ``seed``
    draw coupled samples. With a ``reward`` (a :class:`~rlhf_book.lm.rollout.Reward`, e.g. a
    reward model), returns ``(texts, scores)``: also its score of every sample, as RL and
    best-of-N read them."""
    model_config = gpt.get_config("small")
    if lm_params["tok_emb"].ndim == 2:  # one model: broadcast to n_seeds copies
        lm_params = jax.tree.map(lambda x: jnp.broadcast_to(x, (n_seeds, *x.shape)), lm_params)
    S, Q = jax.tree.leaves(lm_params)[0].shape[0], len(questions)
    prompts = rollout.encode_prompts([q.prompt for q in questions] * samples)
    gen = rollout.sample_policies(lm_params, prompts,
                                  jax.random.split(jax.random.PRNGKey(seed), S), 1.0,
                                  model_config, max_new_tokens=max_new_tokens)
    T = gen.tokens.shape[-1]
    tokens, mask = np.asarray(gen.tokens).reshape(-1, T), np.asarray(gen.mask).reshape(-1, T)
    texts = np.asarray(sampling.decode_masked(tokens, mask), dtype=object).reshape(S, samples, Q)
    if reward is None:
        return texts
    ids = jnp.asarray(np.tile(np.arange(Q), S * samples))  # each row's question, in order
    scores = jax.jit(reward.fn)(reward.params, jnp.asarray(tokens), jnp.asarray(mask), ids)
    return texts, np.asarray(scores, np.float64).reshape(S, samples, Q)


def answer_stats(questions, texts) -> dict[str, np.ndarray]:
    """Per sample (arrays of ``texts``' shape ``[..., Q]``): ``correct`` (the last-integer
    verifier), ``strict`` (the strict-format verifier), ``any`` (the lax any-integer
    verifier), ``none`` (no integer at all: the model abstained or rambled), ``integers``
    (how many numbers the reply writes), ``chars`` (its length), and ``answer`` (the last
    integer, ``-1`` for none; the world's answers are positive)."""
    flat = np.asarray(texts, dtype=object).reshape(-1, len(questions))
    out = {name: np.zeros(flat.shape, np.float32)
           for name in ("correct", "strict", "any", "none", "integers", "chars")}
    answer = np.full(flat.shape, -1, np.int64)
    for i, row in enumerate(flat):
        for j, (q, text) in enumerate(zip(questions, row)):
            numbers = [int(x) for x in _INTEGERS.findall(text)]
            out["correct"][i, j] = loop.last_integer_verifier(q, text)
            out["strict"][i, j] = loop.strict_format_verifier(q, text)
            out["any"][i, j] = float(int(q.answer) in numbers)
            out["none"][i, j] = float(not numbers)
            out["integers"][i, j] = len(numbers)
            out["chars"][i, j] = len(text)
            answer[i, j] = numbers[-1] if numbers else -1
    out["answer"] = answer
    return {k: v.reshape(np.shape(texts)) for k, v in out.items()}


def per_seed(x) -> np.ndarray:
    """``[S, n, Q] -> [S]``: the mean over samples and questions of each policy."""
    return np.asarray(x, np.float64).mean(axis=(1, 2))


def change(after, before) -> tuple[float, float]:
    """``(mean, se)`` of ``after - before`` over seeds: the per-seed means' difference (coupled
    samples), its mean and standard error over the ``S`` seeds."""
    d = per_seed(after) - per_seed(before)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def pass_at_k_curve(correct, ks) -> np.ndarray:
    """``[S, len(ks)]``: for each policy the unbiased pass@k (:func:`rlvr.pass_at_k`) averaged
    over questions, from ``correct [S, n, Q]`` (0/1 per sample)."""
    correct = np.asarray(correct)
    n = correct.shape[1]
    counts = jnp.asarray(correct.sum(axis=1))  # [S, Q]
    return np.stack([np.asarray(rlvr.pass_at_k(n, counts, k)).mean(axis=-1) for k in ks], axis=1)


def vote_curve(answers, gold, Ns) -> np.ndarray:
    """Majority-vote accuracy against the number of votes, from samples: ``answers [S, n, Q]``
    (integers, ``-1`` = none, which does not vote), ``gold [Q]``. For each ``N`` in ``Ns`` the
    ``n`` samples are cut into ``n // N`` disjoint votes of ``N``; returns ``[S, len(Ns)]``, the
    share of votes (over questions and cuts) whose winner is right."""
    return np.stack([_votes_won(answers, gold, N).mean(axis=(1, 2)) for N in Ns], axis=1)


def _votes_won(answers, gold, N: int) -> np.ndarray:
    """``[S, n // N, Q]``: whether each of the disjoint votes of ``N`` samples elects ``gold``."""
    answers, gold = np.asarray(answers), np.asarray(gold)
    S, n, Q = answers.shape
    cuts = answers[:, :(n // N) * N].reshape(S, n // N, N, Q).transpose(0, 1, 3, 2)
    idx = np.asarray(_vote_index(cuts, cuts >= 0))  # [S, cuts, Q]
    voted = np.take_along_axis(cuts, np.maximum(idx, 0)[..., None], -1)[..., 0]
    return (voted == gold) & (idx >= 0)


_vote_index = jax.jit(rlvr.majority_vote_index)  # one compilation per shape, not per operation


def exact_vote_curve(answers, gold, Ns) -> np.ndarray:
    """The exact majority-vote accuracy against ``N`` (:func:`rlvr.majority_vote_accuracy`)
    with each question's answer distribution estimated from all its samples: ``answers [n,
    Q]`` (one policy), ``gold [Q]``; returns ``[len(Ns)]``, averaged over questions."""
    answers = np.asarray(answers)
    curves = []
    for q in range(answers.shape[1]):
        col = answers[:, q]
        p = float(np.mean(col == gold[q]))
        wrong = [float(np.mean(col == a)) for a in np.unique(col) if a >= 0 and a != gold[q]]
        curves.append([rlvr.majority_vote_accuracy(p, wrong, N) for N in Ns])
    return np.asarray(curves).mean(axis=0)


# ----------------------------------------------------------------------------------------------
# §7.2.3's common practices, each switched on against the same base run

# name -> (what changes against RLVR_CONFIG with the last-integer verifier). Clip-higher is
# part of "token-level loss" (chapter 6's DAPO settings) and inert here: with one on-policy
# update per batch every ratio is 1 and no clip binds.
PRACTICES = {
    "GRPO (base)": {},
    "no KL penalty": {"beta": 0.0},
    "online filter (zero-variance groups dropped)": {"online_filter": True},
    "offline difficulty filter (20-80% at N = 16)": {"difficulty_filter": True},
    "MaxRL advantage": {"advantage": "maxrl"},
    "token-level loss + clip-higher (DAPO)": {"algorithm": "dapo"},
    "overlong filtering (truncated = 0)": {"truncation_penalty": 0.0},
}
FILTER_SAMPLES = 16
PRACTICE_EVAL_SAMPLES = 8


def difficulty_filtered(sft_params, questions, samples: int = FILTER_SAMPLES, seed: int = 7,
                        low: float = 0.2, high: float = 0.8):
    """``(kept_questions, pass_rates)``: the offline filter of §7.2.3 -- ``samples`` answers of
    ``sft_params`` to each question, its pass rate under the last-integer verifier, and the
    questions whose rate lies in ``[low, high]`` (:func:`rlvr.difficulty_filter`)."""
    texts = sample_answers(sft_params, questions, samples, n_seeds=1, seed=seed)[0]
    rates = answer_stats(questions, texts)["correct"].mean(axis=0)
    keep = np.asarray(rlvr.difficulty_filter(jnp.asarray(rates), low, high))
    return [q for q, k in zip(questions, keep) if k], rates


def practice_runs(sft_params, practices=PRACTICES, n_seeds: int = N_SEEDS) -> dict:
    """Every practice of ``practices`` as an RLVR run of ``n_seeds`` seeds from ``sft_params``
    (base: ``RLVR_CONFIG``, the last-integer verifier, GRPO's advantage, no online filter),
    measured on the rephrased and unseen sums with ``PRACTICE_EVAL_SAMPLES`` coupled samples
    per question and seed. Returns ``{"sft": stats, name: {"metrics", "stats", "seconds",
    "prompts"}}`` where ``stats`` maps each set to :func:`answer_stats` ``[S, n, Q]``."""
    sets = arithmetic_sets()

    def evaluate(params):
        return {name: answer_stats(sets[name], sample_answers(
            params, sets[name], PRACTICE_EVAL_SAMPLES, n_seeds)) for name in ("rephrased", "unseen")}

    out = {"sft": evaluate(sft_params)}
    for name, change_ in practices.items():
        change_ = dict(change_)
        run = {k: change_.pop(k) for k in ("advantage", "online_filter") if k in change_}
        questions = None
        if change_.pop("difficulty_filter", False):
            questions, _ = difficulty_filtered(sft_params, sets["train"])
        config = dataclasses.replace(RLVR_CONFIG, **change_)
        start = time.perf_counter()
        metrics, params = run_rlvr(sft_params, ("last_integer",), config=config,
                                   n_seeds=n_seeds, questions=questions, **run)
        seconds = time.perf_counter() - start
        out[name] = {"metrics": metrics, "stats": evaluate(params), "seconds": seconds,
                     "prompts": len(questions or sets["train"])}
    return out


# ----------------------------------------------------------------------------------------------
# Reasoning length: two-digit sums, where writing the column addition out pays

# A short mid-training of chapter 4's SFT model on two-digit sums (data.sum_demonstrations:
# half the demonstrations write the column addition out, half answer directly, 30% rehearse a
# one-digit step): 1,000 steps at 1e-3 (about 15 s). Measured on the 1,620 held-out sums,
# 16 samples each: 300 steps leave the one-digit steps at 57% right, and the worked answers no
# better than the direct ones; after 1,000 steps the steps are 90% right and a worked answer
# is right about 0.75 of the time, a direct one about 0.09.
SCRATCHPAD_SFT = SFTConfig(steps=1000, batch_size=16, seq_len=128, learning_rate=1e-3,
                           warmup_steps=20, log_every=250)
N_SUM_DEMONSTRATIONS = 3000
# RLVR on the training sums with the last-integer verifier: RLVR_CONFIG with room for the
# longest worked answer (46 bytes and the end token).
SCRATCHPAD_RLVR = dataclasses.replace(RLVR_CONFIG, max_new_tokens=48)
N_EVAL_SUMS = 64      # held-out sums measured before and after RL
PASS_KS = (1, 2, 4, 8, 16, 32, 64)
PASS_SAMPLES = 64     # samples per held-out sum for pass@k up to k = 64


def scratchpad_model(sft_params, seed: int = 0, config: SFTConfig = SCRATCHPAD_SFT,
                     scratchpad_share: float = data.arithmetic.SCRATCHPAD_SHARE):
    """Chapter 4's SFT step (:func:`~rlhf_book.ch04_instruction_tuning.loop.train_sft`) on
    ``N_SUM_DEMONSTRATIONS`` two-digit-sum demonstrations of the training sums
    (:func:`data.sum_demonstrations`, a ``scratchpad_share`` of the sums worked out), from
    ``sft_params``: a model that sometimes shows its work and sometimes answers directly.
    Returns ``(params, history)``."""
    train_sums, _ = data.two_digit_sums(seed)
    demos = data.sum_demonstrations(train_sums, seed=seed, n=N_SUM_DEMONSTRATIONS,
                                    scratchpad_share=scratchpad_share)
    batch = pack_examples(sft_examples(demos), config.seq_len)
    return train_sft(gpt.get_config("small"), sft_params, config, batch, seed=seed,
                     progress=False)


def sum_sets(seed: int = 0, n_eval: int = N_EVAL_SUMS) -> dict[str, list]:
    """``{"train", "heldout"}``: the two-digit sums the demonstrations and RL prompts use, and
    ``n_eval`` held-out sums (the first of :func:`data.two_digit_sums`' random held-out
    order) that no demonstration or RL prompt contains."""
    train_sums, heldout = data.two_digit_sums(seed)
    if not isinstance(n_eval, (int, np.integer)) or not 1 <= n_eval <= len(heldout):
        raise ValueError(f"n_eval must be an integer in 1..{len(heldout)}, got {n_eval!r}")
    return {"train": train_sums, "heldout": heldout[:n_eval]}


def shows_work(texts) -> np.ndarray:
    """1.0 where a reply writes at least one step (``"a + b = c"``) before its answer, 0.0
    where it answers directly (:func:`reasoning_length.shows_work`); the shape of ``texts``."""
    texts = np.asarray(texts, dtype=object)
    return np.vectorize(lambda t: float(reasoning_length.shows_work(t)), otypes=[np.float64])(texts)


def _per_sum(values, where) -> np.ndarray:
    """``[Q]``: the mean of ``values [..., Q]`` over all leading axes where ``where`` holds,
    per sum (NaN for a sum with no such reply)."""
    values = np.asarray(values, np.float64).reshape(-1, np.shape(values)[-1])
    where = np.asarray(where, bool).reshape(values.shape)
    counts = where.sum(axis=0)
    totals = np.where(where, values, 0.0).sum(axis=0)
    return np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)


def _mean_se(x) -> tuple[float, float, int]:
    x = np.asarray(x, np.float64)
    x = x[~np.isnan(x)]
    se = float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")
    return (float(x.mean()) if len(x) else float("nan")), se, len(x)


def accuracy_by_work(stats, work) -> dict[str, tuple[float, float, float]]:
    """``{"direct", "worked"}`` -> ``(accuracy, se, share)`` from ``stats["correct"]`` and
    ``work`` (:func:`shows_work`), both ``[..., Q]``: each kind's accuracy per sum (the
    last-integer verifier, over the sum's replies of that kind), averaged over the sums that
    have one, with its standard error over those sums (samples of one sum are alike, so the
    sums are the independent units), and the kind's share of all replies."""
    correct, work = np.asarray(stats["correct"]), np.asarray(work) > 0
    out = {}
    for name, sel in (("direct", ~work), ("worked", work)):
        mean, se, _ = _mean_se(_per_sum(correct, sel))
        out[name] = (mean, se, float(sel.mean()))
    return out


def work_gain(stats, work) -> tuple[float, float, int]:
    """``(mean, se, sums)``: how much more often a worked reply is right than a direct one to
    the *same* sum, paired over the sums that got both kinds of reply."""
    correct, work = np.asarray(stats["correct"]), np.asarray(work) > 0
    return _mean_se(_per_sum(correct, work) - _per_sum(correct, ~work))


# Best-of-N on the world's sums: BON_SAMPLES samples of the SFT model per question, scored by
# chapter 5's reward model, cut into disjoint groups of N for N in BON_NS.
BON_SAMPLES = 32
BON_NS = (1, 2, 4, 8, 16, 32)
BON_SEED = 3


def reward_model(rm_params) -> rollout.Reward:
    """Chapter 5's reward model ``rm_params`` (the small GPT with a scalar head, e.g.
    ``rlhf_book.textbook.substrate.reward_model_small()``) as a
    :class:`~rlhf_book.lm.rollout.Reward` that scores completions as it was trained to
    (:func:`rlhf_book.ch06_policy_gradients.loop.reward_model_reward`)."""
    return reward_model_reward(rm_params, gpt.get_config(ch05_experiments.RM_MODEL),
                               ch05_experiments.RM_CONFIG.pooling)


def best_of_n_curves(questions, stats, scores, Ns) -> dict[str, np.ndarray]:
    """Inference-time scaling from one set of samples of one policy (§7 introduction and
    §7.1.2; chapter 9's best-of-N): ``stats`` of ``questions`` from :func:`answer_stats`
    ``[n, Q]`` and a reward model's ``scores [n, Q]``. For each ``N`` in ``Ns`` the ``n``
    samples are cut into ``n // N`` disjoint groups of ``N``, and each group answers once,
    picked

    * ``"verifier"``: by the verifier -- right if any of the ``N`` is (the empirical pass@N);
    * ``"reward model"``: by the highest reward-model score (ties: the first);
    * ``"majority vote"``: by majority vote over the stated answers (:func:`vote_curve`).

    Returns each pick's accuracy per question, ``[len(Ns), Q]`` (the mean over its groups:
    questions are the independent units for a standard error), and ``"chars"``, the characters
    generated per answer, ``[len(Ns)]``: ``N`` times the mean reply."""
    correct, scores = np.asarray(stats["correct"]), np.asarray(scores)
    if correct.ndim != 2 or scores.shape != correct.shape or len(questions) != correct.shape[1]:
        raise ValueError(f"stats and scores must be [n, Q] for the Q = {len(questions)} "
                         f"questions, got {correct.shape} and {scores.shape}")
    n, Q = correct.shape
    if any(not isinstance(N, (int, np.integer)) or not 1 <= N <= n for N in Ns):
        raise ValueError(f"Ns must be integers in 1..{n} (the samples per question), got {Ns!r}")
    gold = np.asarray([int(q.answer) for q in questions])
    out = {"verifier": [], "reward model": [], "majority vote": [], "chars": []}
    for N in Ns:
        groups = (n // N) * N
        c = correct[:groups].reshape(n // N, N, Q)
        best = scores[:groups].reshape(n // N, N, Q).argmax(axis=1)  # [n // N, Q]
        out["verifier"].append(c.max(axis=1).mean(axis=0))
        out["reward model"].append(np.take_along_axis(c, best[:, None], axis=1)[:, 0].mean(axis=0))
        out["majority vote"].append(_votes_won(np.asarray(stats["answer"])[None], gold, N)[0]
                                    .mean(axis=0))
        out["chars"].append(N * float(np.mean(stats["chars"])))
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def audit_scratchpads(questions, texts, by_sum: bool = False) -> dict:
    """The process check :func:`reasoning_length.audit_worked_answer` (exercise 7.9) of every
    worked reply among ``texts [..., Q]`` to the two-digit sums ``questions``: the share that
    passes each of its checks (``"facts"``, ``"columns"``, ``"carry"``, ``"follows"``), and
    ``"replies"``, how many were audited (those with two steps or more). With ``by_sum``, each
    share is ``[Q]``, per sum (NaN for a sum with no worked reply), for paired comparisons."""
    texts = np.asarray(texts, dtype=object).reshape(-1, len(questions))
    operands = [tuple(map(int, q.subject.split(" + "))) for q in questions]
    audits = [[reasoning_length.audit_worked_answer(a, b, text)
               for (a, b), text in zip(operands, row)] for row in texts]
    audited = np.array([[audit is not None for audit in row] for row in audits])
    out = {}
    for check in reasoning_length.AUDIT_CHECKS:
        passed = np.array([[bool(audit and audit[check]) for audit in row] for row in audits])
        per_sum = _per_sum(passed, audited)
        out[check] = per_sum if by_sum else (float(passed[audited].mean()) if audited.any()
                                             else float("nan"))
    return {**out, "replies": int(audited.sum())}
