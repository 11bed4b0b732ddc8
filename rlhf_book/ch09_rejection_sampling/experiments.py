"""Chapter 9's experiments: what the notebook runs, with its settings as named constants.

* **The book's worked example** (eqs. 117, 118, 119, 120, 121, 122, 123): the reward matrix of
  5 prompts x 4 completions and its two selections.
* **Best-of-N as a distribution** (§9.3): the exact expected reward and KL of best-of-N against
  N, by one compiled ``vmap`` over N, next to Monte Carlo and the formula ``log N - (N - 1)/N``.
* **Best-of-N and rejection sampling on the synthetic world** from chapter 4's SFT model of the
  small GPT: best-of-16 samples of the rephrased questions ranked by chapter 5's learned reward
  model (:func:`reward_model`) and, as the upper reference, by the gold reward; one round of
  rejection-sampling fine-tuning on the training questions with each selection rule, the tuned
  models' answers and their KL from the SFT model (:func:`world_runs`). The starting policy is an argument (``sft_params``): a chapter
  does not know where its models are cached; the notebook and the figures pass
  ``rlhf_book.textbook.substrate.sft_small()``.

Change a constant below (say ``BON_N`` or ``RS_SFT_CONFIG``) and rerun the notebook to see its
effect.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_book import ch04_instruction_tuning as ch04
from rlhf_book import data
from rlhf_book.ch05_reward_models import experiments as ch05_experiments
from rlhf_book.ch06_policy_gradients import reward_model_reward
from rlhf_book.ch09_rejection_sampling import loop, selection
from rlhf_book.lm import gpt, rollout, sampling
from rlhf_book.lm.eval import ANSWER_KINDS, mean_se, sampled_kl, score_answers

# ----------------------------------------------------------------------------------------------
# Settings

# Book eq. 117: M = 5 prompts x N = 4 completions, and the K = 5 of eqs. 121, 122, 123.
BOOK_R = np.array([[0.7, 0.3, 0.5, 0.2],
                   [0.4, 0.8, 0.6, 0.5],
                   [0.9, 0.3, 0.4, 0.7],
                   [0.2, 0.5, 0.8, 0.6],
                   [0.5, 0.4, 0.3, 0.6]])
BOOK_K = 5

# §9.3 curves: N from 1 to 256; rewards ~ N(0, 1) as 6,001 atoms on [-9, 9] (exact E[max] to
# about 1e-4 for these N); Monte Carlo with 20,000 draws at a few N; the exact KL for uniform
# distributions over K distinct rewards, for 1,000 outcomes sharing three reward levels (ties),
# and for a fair coin (0.6930 at N = 16: at most log 2).
CURVE_NS = np.unique(np.round(np.logspace(0, np.log10(256), 49)).astype(int))
TABLE_NS = (2, 4, 16)
MC_NS = (2, 4, 10, 16, 32, 100)
MC_DRAWS = 20_000
UNIFORM_KS = (10, 100, 1000)
COARSE_OUTCOMES, COARSE_LEVELS = 1000, 3

# The synthetic world (notebook sections 5 and 6): 128 training questions chosen with seed 0, 16
# completions of at most 32 new tokens (bytes) each at temperature 1 (the book's §9.2: 10 to
# 30+ completions, temperature 0.7-1.0), the gold reward as the scorer. One round of rejection
# sampling keeps the best completion of each prompt (eq. 113), or the best 128 pairs overall
# (eq. 116), if it stopped, and fine-tunes for 100 steps at chapter 4's SFT learning rate.
WORLD_PROMPTS = 128
BON_N = 16
MAX_NEW_TOKENS = 32
RS_CONFIG = loop.RSConfig(n=BON_N, selection="per_prompt", max_new_tokens=MAX_NEW_TOKENS)
RS_TOP_K_CONFIG = dataclasses.replace(RS_CONFIG, selection="top_k", k=WORLD_PROMPTS)
RS_SFT_CONFIG = ch04.SFTConfig(steps=100, batch_size=16, seq_len=128, learning_rate=3e-4,
                               warmup_steps=5, log_every=100)
RS_SEED, EVAL_SEED, HELDOUT_SEED = 0, 1, 2
WORLD_NS = (1, 2, 4, 8, 16)  # the N of the best-of-N curves estimated from the 16 samples
# The main evaluation: 128 of the 520 rephrased fact questions (training facts in phrasings no
# training data contains), chosen with seed 0, 16 samples each; each sample scored by the gold
# reward and by chapter 5's reward model (the pipeline's recipe on the same SFT model,
# ch05_experiments.RM_CONFIG), so best-of-N can be ranked by either.
REPHRASED_PROMPTS = 128


# ----------------------------------------------------------------------------------------------
# Best-of-N as a distribution


def normal_atoms(lo: float = -9.0, hi: float = 9.0, points: int = 6001):
    """``(probs [K], rewards [K])``: the standard normal as ``points`` equally spaced atoms."""
    x = np.linspace(lo, hi, points)
    p = np.exp(-0.5 * x ** 2)
    return p / p.sum(), x


_reward_curve = jax.jit(jax.vmap(selection.expected_best_of_n_reward, in_axes=(None, None, 0)))
_kl_curve = jax.jit(jax.vmap(selection.best_of_n_exact_kl, in_axes=(None, None, 0)))


def expected_reward_curve(probs, rewards, ns) -> np.ndarray:
    """``E[max of n]`` for every ``n`` in ``ns``, exactly (:func:`expected_best_of_n_reward`,
    one compiled ``vmap`` over ``n``)."""
    return np.asarray(_reward_curve(jnp.asarray(probs, jnp.float32),
                                    jnp.asarray(rewards, jnp.float32), jnp.asarray(ns)))


def exact_kl_curve(probs, rewards, ns) -> np.ndarray:
    """``KL(pi_BoN || pi)`` for every ``n`` in ``ns``, exactly (:func:`best_of_n_exact_kl`)."""
    return np.asarray(_kl_curve(jnp.asarray(probs, jnp.float32),
                                jnp.asarray(rewards, jnp.float32), jnp.asarray(ns)))


def monte_carlo_max(ns=MC_NS, draws: int = MC_DRAWS, seed: int = 0) -> dict[int, tuple]:
    """``{n: (mean, standard error)}`` of the maximum of ``n`` i.i.d. N(0, 1) draws."""
    rng = np.random.default_rng(seed)
    out = {}
    for n in ns:
        best = rng.standard_normal((draws, n)).max(axis=1)
        out[int(n)] = (float(best.mean()), float(best.std(ddof=1) / math.sqrt(draws)))
    return out


def coarse_distribution(outcomes: int = COARSE_OUTCOMES, levels: int = COARSE_LEVELS,
                        seed: int = 0):
    """``(probs, rewards)``: ``outcomes`` equally likely outcomes whose rewards take only
    ``levels`` values (ties), e.g. a reward that only says wrong / no answer / right."""
    rewards = np.random.default_rng(seed).integers(0, levels, outcomes).astype(np.float64)
    return np.full(outcomes, 1.0 / outcomes), rewards


def kl_curves(ns=CURVE_NS) -> dict[str, np.ndarray]:
    """The formula ``log N - (N - 1)/N`` and the exact KL of best-of-N for: uniform over ``K``
    distinct rewards (``K`` in ``UNIFORM_KS``), :func:`coarse_distribution`, and a fair coin."""
    ns = np.asarray(ns)
    out = {"n": ns, "formula": np.asarray(selection.best_of_n_kl(ns))}
    for K in UNIFORM_KS:
        out[f"uniform K={K}"] = exact_kl_curve(np.full(K, 1.0 / K), np.arange(K), ns)
    probs, rewards = coarse_distribution()
    out[f"{COARSE_OUTCOMES} outcomes, {COARSE_LEVELS} reward levels"] = exact_kl_curve(
        probs, rewards, ns)
    out["fair coin"] = exact_kl_curve(np.array([0.5, 0.5]), np.array([0.0, 1.0]), ns)
    return out


def pool_best_of_n(rewards, n: int, by=None) -> np.ndarray:
    """The unbiased estimate of ``E[reward of the best of n draws]`` from a pool of ``m >= n``
    scored samples of each prompt (Gao et al. 2022): with the pool sorted ascending by the
    ranking score, the ``i``-th sample has weight ``C(i - 1, n - 1) / C(m, n)``, the chance
    that it ranks first in a random subset of ``n``. ``rewards [B, m]`` -> ``[B]``; ``by [B,
    m]`` (default ``rewards``) is the score best-of-n ranks by, e.g. a reward model's while
    ``rewards`` holds the gold reward of the same samples (ties in ``by`` are assumed away). The
    mean of the pool at ``n = 1``; at ``n = m`` the reward of the pool's top-ranked sample."""
    rewards = np.asarray(rewards, np.float64)
    order = np.argsort(rewards if by is None else np.asarray(by, np.float64), axis=1,
                       kind="stable")
    rewards = np.take_along_axis(rewards, order, axis=1)
    m = rewards.shape[1]
    if not 1 <= n <= m:
        raise ValueError(f"n must be in [1, {m}] for a pool of {m}, got {n}")
    weights = np.array([math.comb(i - 1, n - 1) for i in range(1, m + 1)], np.float64)
    return rewards @ (weights / math.comb(m, n))


def answer_shares(questions, tokens, mask) -> dict[str, float]:
    """What completions answer: ``tokens, mask [B, n, T]`` (a :class:`~.loop.BestOfN`'s
    ``all_tokens`` and ``all_mask``) for ``questions [B]``, classified by
    :func:`rlhf_book.lm.eval.answer_kind` as ``right``, ``wrong`` or ``none`` (no answer
    stated); fractions of all ``B * n``."""
    tokens, mask = np.asarray(tokens), np.asarray(mask)
    B, n, T = tokens.shape
    texts = sampling.decode_masked(tokens.reshape(B * n, T), mask.reshape(B * n, T))
    kinds = score_answers([q for q in questions for _ in range(n)], texts)["kind"]
    return {k: float(np.mean(kinds == k)) for k in ANSWER_KINDS}


def completion_kl(params, ref_params, model_config, tokens, mask) -> np.ndarray:
    """:func:`rlhf_book.lm.eval.sampled_kl` of completions laid out per prompt: ``tokens,
    mask [B, n, T] -> [B, n]``; for samples of ``params`` its mean is an unbiased (k1) estimate
    of ``KL(pi || pi_ref)`` per completion."""
    tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
    shape = tokens.shape
    kl = sampled_kl(params, ref_params, tokens.reshape(-1, shape[-1]),
                     mask.reshape(-1, shape[-1]), model_config)
    return kl.reshape(shape[:-1])


def paired_gain(after, before) -> tuple[float, float]:
    """Mean over prompts of ``mean(after) - mean(before)`` (``[B, n]`` each) and its standard
    error across prompts (:func:`rlhf_book.lm.eval.mean_se`)."""
    d = np.asarray(after, np.float64).mean(axis=1) - np.asarray(before, np.float64).mean(axis=1)
    mean, se = mean_se(d)
    return float(mean), float(se)


# ----------------------------------------------------------------------------------------------
# Best-of-N and rejection sampling on the synthetic world


def world_task(n_prompts: int = WORLD_PROMPTS, seed: int = 0):
    """``(model_config, questions, prompts, gold)``: ``n_prompts`` training questions (chosen
    with ``seed``, in their original order), their chat-template prompts, and the gold reward
    on them (``rollout.text_reward(data.gold_reward, questions)``); the small GPT's config."""
    train = data.question_splits().train
    ids = np.sort(np.random.default_rng(seed).choice(len(train), n_prompts, replace=False))
    questions = [train[i] for i in ids]
    prompts = rollout.encode_prompts([q.prompt for q in questions])
    return (gpt.get_config("small"), questions, prompts,
            rollout.text_reward(data.gold_reward, questions))


def rephrased_task(n_prompts: int = REPHRASED_PROMPTS, seed: int = 0):
    """``(questions, prompts, gold)``: ``n_prompts`` of the rephrased fact questions (the main
    evaluation; chosen with ``seed``, in their original order), their prompts and gold reward."""
    rephrased = data.fact_questions(data.question_splits().rephrased)
    ids = np.sort(np.random.default_rng(seed).choice(len(rephrased), n_prompts, replace=False))
    questions = [rephrased[i] for i in ids]
    prompts = rollout.encode_prompts([q.prompt for q in questions])
    return questions, prompts, rollout.text_reward(data.gold_reward, questions)


def reward_model(sft_params, model_config=None):
    """Chapter 5's reward model (:func:`rlhf_book.ch05_reward_models.experiments.rm_run` on
    its training pairs, ``RM_CONFIG``: the pipeline's recipe) from ``sft_params``, as a
    :class:`~rlhf_book.lm.rollout.Reward` (:func:`rlhf_book.ch06_policy_gradients.reward_model_reward`)."""
    model_config = model_config or gpt.get_config("small")
    run = ch05_experiments.rm_run(sft_params, {"train": ch05_experiments.rm_datasets()["train"]},
                                  model_config)
    return reward_model_reward(run.params, model_config, ch05_experiments.RM_CONFIG.pooling)


def score_samples(reward: rollout.Reward, tokens, mask) -> np.ndarray:
    """``reward`` of every sample of a :class:`~.loop.BestOfN` (``all_tokens``, ``all_mask``
    ``[B, n, T]``) -> ``[B, n]``: how a second reward would have ranked the same samples."""
    tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
    B, n, T = tokens.shape
    ids = jnp.repeat(jnp.arange(B), n)
    scores = jax.jit(reward.fn)(reward.params, tokens.reshape(B * n, T), mask.reshape(B * n, T),
                                ids)
    return np.asarray(scores, np.float64).reshape(B, n)


def sample_texts(tokens, mask) -> list[list[str]]:
    """The completions of a :class:`~.loop.BestOfN` as text, ``[B][n]``."""
    tokens, mask = np.asarray(tokens), np.asarray(mask)
    B, n, T = tokens.shape
    flat = sampling.decode_masked(tokens.reshape(B * n, T), mask.reshape(B * n, T))
    return [flat[b * n:(b + 1) * n] for b in range(B)]


def chosen_answers(questions, texts, scores=None) -> dict[str, float]:
    """What best-of-n keeps when it ranks by ``scores [B, n]``: the shares of right, wrong and
    no answers among the ``B`` kept samples, and their mean length in bytes; with no
    ``scores``, the same over every sample (what one sample says)."""
    if scores is None:
        questions = [q for q, row in zip(questions, texts) for _ in row]
        kept = [t for row in texts for t in row]
    else:
        kept = [texts[b][int(np.argmax(scores[b]))] for b in range(len(questions))]
    a = score_answers(questions, kept)
    return {**{k: float(np.mean(a["kind"] == k)) for k in ANSWER_KINDS},
            "bytes": float(a["bytes"].mean())}


def world_runs(sft_params) -> dict:
    """Everything the world figures show, as notebook sections 5 and 6 compute it: 16 samples
    of ``sft_params`` for each of :func:`rephrased_task`'s questions, scored by the gold reward
    and by :func:`reward_model`; one round of rejection sampling on :func:`world_task`'s
    training prompts with each selection rule (same key, so the same samples), scored by the
    gold reward; samples of the tuned policies on the training prompts with the SFT model's key,
    and of the per-prompt policy on the rephrased questions, with its KL from the SFT model
    there."""
    sft = sft_params
    model_config, questions, prompts, gold = world_task()
    sample = functools.partial(loop.best_of_n_sample, model_config=model_config, n=BON_N,
                               max_new_tokens=MAX_NEW_TOKENS)
    r_questions, r_prompts, r_gold = rephrased_task()
    r_key = jax.random.PRNGKey(HELDOUT_SEED)
    r_before = sample(sft, prompts=r_prompts, reward=r_gold, key=r_key)
    rm = reward_model(sft, model_config)
    r_rm = score_samples(rm, r_before.all_tokens, r_before.all_mask)
    r_texts = sample_texts(r_before.all_tokens, r_before.all_mask)
    r_gold_scores = np.asarray(r_before.all_rewards, np.float64)

    key = jax.random.PRNGKey(EVAL_SEED)
    before = sample(sft, prompts=prompts, reward=gold, key=key)
    tuned, record = loop.rejection_sampling_finetune(sft, model_config, prompts, gold, RS_CONFIG,
                                                     RS_SFT_CONFIG,
                                                     key=jax.random.PRNGKey(RS_SEED))
    after = sample(tuned, prompts=prompts, reward=gold, key=key)
    tuned_top, record_top = loop.rejection_sampling_finetune(
        sft, model_config, prompts, gold, RS_TOP_K_CONFIG, RS_SFT_CONFIG,
        key=jax.random.PRNGKey(RS_SEED))
    after_top = sample(tuned_top, prompts=prompts, reward=gold, key=key)
    r_after = sample(tuned, prompts=r_prompts, reward=r_gold, key=r_key)
    return {
        "record": record, "record_top_k": record_top,
        "before": np.asarray(before.all_rewards), "after": np.asarray(after.all_rewards),
        "after_top_k": np.asarray(after_top.all_rewards),
        "rephrased_gold": r_gold_scores, "rephrased_rm": r_rm,
        "rephrased_after": np.asarray(r_after.all_rewards),
        "kl": completion_kl(tuned, sft, model_config, r_after.all_tokens, r_after.all_mask),
        "chosen": {"one sample": chosen_answers(r_questions, r_texts),
                   "best of 16 by the reward model": chosen_answers(r_questions, r_texts, r_rm),
                   "best of 16 by gold": chosen_answers(r_questions, r_texts, r_gold_scores)},
        "answers": {
            "SFT, training": answer_shares(questions, before.all_tokens, before.all_mask),
            "RS, training": answer_shares(questions, after.all_tokens, after.all_mask),
            "RS top-K, training": answer_shares(questions, after_top.all_tokens,
                                                after_top.all_mask),
            "SFT, rephrased": answer_shares(r_questions, r_before.all_tokens, r_before.all_mask),
            "RS, rephrased": answer_shares(r_questions, r_after.all_tokens, r_after.all_mask)},
    }


def best_of_n_curve(rewards, ns=WORLD_NS, by=None) -> tuple[np.ndarray, np.ndarray]:
    """The reward of best-of-``n`` for every ``n`` in ``ns`` from ``rewards [B, m]`` (``m``
    samples of each of ``B`` prompts, :func:`pool_best_of_n`), ranked by ``by [B, m]``
    (default the rewards themselves): the mean over prompts and its standard error."""
    est = np.stack([pool_best_of_n(rewards, int(n), by) for n in ns], axis=1)  # [B, len(ns)]
    return est.mean(0), est.std(0, ddof=1) / math.sqrt(est.shape[0])


def plug_in_exact_kl(rewards, ns=WORLD_NS) -> np.ndarray:
    """``[B, len(ns)]``: :func:`best_of_n_exact_kl` with each prompt's ``m`` samples taken as
    its distribution (each of probability ``1/m``; equal rewards tie). A plug-in estimate of
    the KL of best-of-``n`` from the policy that drew them; 0 for a prompt whose samples all
    earned the same reward."""
    rewards = jnp.asarray(rewards, jnp.float32)
    uniform = jnp.full(rewards.shape[1], 1.0 / rewards.shape[1], jnp.float32)
    per_n = jax.vmap(selection.best_of_n_exact_kl, in_axes=(None, None, 0))
    kl = np.asarray(jax.jit(jax.vmap(lambda r: per_n(uniform, r, jnp.asarray(ns))))(rewards))
    return np.maximum(kl, 0.0)  # round-off: -0.0 or -1e-9 for a prompt whose samples all tie
