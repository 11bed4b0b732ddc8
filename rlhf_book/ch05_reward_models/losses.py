"""Chapter 5's math: the reward-model losses and how a reward model reads a sequence.

The book's chapter 5 in its order:

* §5.1 the Bradley-Terry model: :func:`bradley_terry_probability` (eqs. 12, 13, 14) and
  :func:`bradley_terry_loss` (eqs. 15, 16, 17), with Llama 2's margin (§5.4.1, eq. 18);
* §5.4.2 balancing the ``C(K, 2)`` comparisons of a prompt: :func:`balanced_pairwise_loss`
  (InstructGPT, eq. 19 read per prompt);
* §5.4.3 K-wise rankings: :func:`plackett_luce_loss` (eq. 20) and
  :func:`sample_plackett_luce` (exact samples with the Gumbel-max trick);
* §5.5 outcome reward models, :func:`orm_loss` (eq. 21, per-token binary cross-entropy), and
  §5.6 process reward models, :func:`prm_loss` (3-class, at step ends) and
  :func:`prm_binary_loss` (eq. 22);
* §5.7.1 how each kind of model is read at inference: :func:`aggregate_token_scores`,
  :func:`best_of_n`; and the RewardBench metric :func:`preference_accuracy` (§5.9);
* §5.2, §5.3 a reward model on the mini GPT: a scalar head on the hidden state of the last
  real token (:func:`last_token_index`, correct for left *and* right padding) or on the mean of
  the hidden states (:func:`mean_pool`), :func:`reward_scores`.

A Bradley-Terry reward is a *logit*, not a probability: only differences ``r_c - r_r`` are
identified (adding a constant to every reward changes nothing), so the gradient of the head's
bias is zero (up to float32 round-off in the sum over the batch). Shapes: ``N`` pairs or
sequences, ``K`` completions per prompt, ``T`` tokens, ``D`` model width; masks are 1 on
entries that count. Argument checks sit at the entry points that take data
(:func:`rlhf_book.ch05_reward_models.encode_pairs`); the functions here check ranks only.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from rlhf_book.lm import gpt
from rlhf_book.lm.checks import (as_float_array, as_float_vectors, as_like, check_choice,
                                check_range, check_values)
from rlhf_book.lm.ops import masked_mean, masked_sum

__all__ = ["bradley_terry_probability", "bradley_terry_loss", "balanced_pairwise_loss",
           "plackett_luce_loss", "sample_plackett_luce", "orm_loss", "PRM_CLASSES", "prm_loss",
           "prm_binary_loss", "AGGREGATIONS", "aggregate_token_scores", "best_of_n",
           "preference_accuracy", "last_token_index", "mean_pool", "POOLINGS",
           "init_reward_model", "reward_scores", "n_pairs_per_prompt"]


# ----------------------------------------------------------------------------------------------
# §5.1 The Bradley-Terry model


# [guide:bradley-terry]
def bradley_terry_probability(r_a, r_b) -> jax.Array:
    """``P(a > b) = exp(r_a) / (exp(r_a) + exp(r_b)) = sigmoid(r_a - r_b)`` (book §5.1,
    eqs. 12, 13, 14; Bradley and Terry, 1952).

    ``r_a`` and ``r_b`` are rewards (logits, any real number) of broadcastable shapes. Only the
    difference matters: ``r_a + c, r_b + c`` give the same probability for every ``c``.
    """
    r_a, r_b = as_float_array(r_a, "r_a"), as_float_array(r_b, "r_b")
    return jax.nn.sigmoid(r_a - r_b)


def bradley_terry_loss(chosen_rewards, rejected_rewards, margin=None) -> jax.Array:
    """Mean negative log-likelihood of the preferences,
    ``mean(-log sigmoid(r_c - r_r - m))`` (book §5.1, eqs. 16, 17; §5.4.1, eq. 18).

    Shapes: ``chosen_rewards [N]``, ``rejected_rewards [N]``, ``margin`` ``None`` (no margin,
    eq. 16 of InstructGPT), a scalar or ``[N]`` (Llama 2: the rating gap, e.g. 5 - 2 = 3 for
    ratings 5 and 2; :func:`~rlhf_book.ch05_reward_models.encode_pairs` checks its shape).
    Returns a scalar: the mean over pairs, not the sum. Finite, with a finite gradient, for any
    reward difference: at ``r_c - r_r = -1e4`` the loss is ``1e4``.

    How: ``-log sigmoid(d) = softplus(-d) = log(1 + exp(-d))`` (eq. 17, Askell et al. 2021) is
    computed by ``jax.nn.softplus``, never as ``log(sigmoid(d))``, which is ``log 0`` there.
    """
    r_c, r_r = as_float_vectors((chosen_rewards, "chosen_rewards"),
                                (rejected_rewards, "rejected_rewards"))
    margin = None if margin is None else as_float_array(margin, "margin")
    # BEGIN SOLUTION
    delta = r_c - r_r
    if margin is not None:
        delta = delta - jnp.broadcast_to(margin, delta.shape)  # a scalar or [N], never [N, 1]
    return jnp.mean(jax.nn.softplus(-delta))
    # END SOLUTION
# [/guide]


# ----------------------------------------------------------------------------------------------
# §5.4.2 Several comparisons per prompt; §5.4.3 K-wise rankings


# [guide:balanced-loss]
def balanced_pairwise_loss(scores, valid=None) -> jax.Array:
    """Bradley-Terry over all ``C(K, 2)`` pairs of each prompt, averaged *per prompt* first
    (book §5.4.2, eq. 19; Ouyang et al. 2022, InstructGPT).

    Shapes: ``scores [P, K]``, the rewards of each prompt's ``K`` completions **ordered
    best-first** (column 0 was ranked highest); ``valid [P, K]`` (optional, boolean or 0/1)
    marks the completions that exist when prompts have different ``K``; an invalid completion's
    score, whatever it holds, never counts. Returns a scalar:

        L = mean over prompts x of  1 / C(K_x, 2) * sum_{i < j valid} -log sigmoid(s_i - s_j),

    over the prompts with at least two valid completions (0, not NaN, when there are none).
    Averaging each prompt's pairs first gives every prompt the same weight whatever its ``K``,
    so a prompt with 9 completions (36 correlated pairs) does not count 6 times as much as one
    with 4 (6 pairs).

    How: all pairs at once as ``[P, K, K]`` arrays: the differences ``s_i - s_j``, a pair mask
    (upper triangle ``i < j``, both valid), ``softplus(-d)``, a masked mean per prompt, then a
    masked mean over the prompts that have a pair.
    """
    s = as_float_array(scores, "scores", "[P, K]")
    valid = jnp.ones(s.shape, bool) if valid is None else as_like(valid, "valid", s, "scores") > 0
    # BEGIN SOLUTION
    K = s.shape[1]
    upper = jnp.triu(jnp.ones((K, K), bool), k=1)  # pairs (i, j) with i ranked above j
    pairs = upper[None] & valid[:, :, None] & valid[:, None, :]  # [P, K, K]
    losses = jax.nn.softplus(-(s[:, :, None] - s[:, None, :]))  # [P, K, K]
    per_prompt = masked_mean(losses, pairs, axis=(1, 2))  # 1 / C(K_x, 2) * sum over pairs
    has_pairs = jnp.any(pairs, axis=(1, 2))
    return masked_mean(per_prompt, has_pairs)
    # END SOLUTION
# [/guide]


# [guide:plackett-luce]
def plackett_luce_loss(scores) -> jax.Array:
    """Negative log-likelihood of a ranking under the Plackett-Luce model (book §5.4.3, eq. 20;
    Zhu et al. 2023; used for Starling).

    ``scores [N, K]`` are the rewards of each ranking's ``K`` items **ordered best-first**
    (column 0 ranked first). The probability of the ranking is

        P = prod_k exp(s_k) / sum_{j >= k} exp(s_j),

    a sequence of softmax choices: the best item among all, then the best among the rest, and so
    on. Returns the scalar ``mean_n -log P_n`` over the ``N`` rankings. With ``K = 2`` this is
    :func:`bradley_terry_loss`. A shift of every score changes nothing, and scores of any size
    (``1e4``) give a finite loss.

    How: ``-log P_n = sum_k (logsumexp_{j >= k} s_j - s_k)``; the reversed cumulative
    ``logsumexp`` (``jax.lax.cumlogsumexp(..., reverse=True)``) gives every tail at once and
    keeps it finite for scores of any size.
    """
    s = as_float_array(scores, "scores", "[N, K]")
    # BEGIN SOLUTION
    tail_lse = jax.lax.cumlogsumexp(s, axis=1, reverse=True)  # logsumexp_{j >= k} s_j
    return jnp.mean(jnp.sum(tail_lse - s, axis=1))
    # END SOLUTION
# [/guide]


def sample_plackett_luce(key: jax.Array, scores) -> jax.Array:
    """Sample rankings from the Plackett-Luce model (book §5.4.3, eq. 20): ``scores [..., K] ->
    [..., K]`` indices, best first.

    The Gumbel-max trick: sorting ``s + Gumbel(0, 1)`` noise in descending order gives an exact
    Plackett-Luce sample (each position's winner is a softmax draw among the items left).
    """
    s = jnp.asarray(scores)
    g = jax.random.gumbel(key, s.shape, s.dtype)
    return jnp.argsort(-(s + g), axis=-1)


# ----------------------------------------------------------------------------------------------
# §5.5, §5.6 Outcome and process reward models


def _binary_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``-[y log sigmoid(z) + (1 - y) log sigmoid(-z)]`` elementwise, finite for any ``z``."""
    return -(labels * jax.nn.log_sigmoid(logits) + (1.0 - labels) * jax.nn.log_sigmoid(-logits))


# [guide:orm-prm]
def orm_loss(logits, labels, mask) -> jax.Array:
    """Outcome reward model loss: per-token binary cross-entropy against the completion's
    correctness (book §5.5, eq. 21; Cobbe et al. 2021).

    Shapes: ``logits [N, T]`` (one correctness logit per token), ``labels [N]`` (1 if the
    completion is correct, 0 if not; every completion token of a row gets its row's label) or
    ``[N, T]``, ``mask [N, T]`` (1 on completion tokens; prompt and padding excluded). Returns
    the mean over every masked token of the batch, 0 when nothing is masked in.
    """
    z = as_float_array(logits, "logits", "[N, T]")
    y = jnp.asarray(labels, z.dtype)
    y = y[:, None] + jnp.zeros_like(z) if y.shape == z.shape[:1] else y  # a label per row
    y, mask = as_like(y, "labels", z, "logits"), as_like(mask, "mask", z, "logits")
    check_values(y, "labels", (0, 1), where=mask)
    return masked_mean(_binary_cross_entropy(z, y), mask)


PRM_CLASSES = (-1, 0, 1)  # step labels: incorrect, neutral, correct -> class indices 0, 1, 2


def prm_loss(logits, step_labels, mask) -> jax.Array:
    """Process reward model loss: 3-class cross-entropy at the end of each reasoning step
    (book §5.6; Lightman et al. 2023, PRM800K's labels).

    Shapes: ``logits [N, T, 3]`` (classes incorrect / neutral / correct), ``step_labels [N, T]``
    with values in ``{-1, 0, 1}`` where ``mask`` is 1 (anything elsewhere), ``mask [N, T]``,
    1 on the last token of each step. The labels -1 / 0 / +1 map to class indices 0 / 1 / 2.
    Returns the mean over labelled tokens, 0 when no token is labelled.
    """
    z = as_like(logits, "logits", jnp.zeros((*jnp.shape(mask), 3)), "[N, T, 3] (mask [N, T])")
    labels = as_like(step_labels, "step_labels", z[..., 0], "mask")
    mask = as_like(mask, "mask", labels, "step_labels") > 0
    check_values(labels, "step_labels", PRM_CLASSES, where=mask)
    classes = jnp.clip(labels + 1, 0, 2).astype(jnp.int32)  # -1, 0, 1 -> 0, 1, 2
    nll = -jnp.take_along_axis(jax.nn.log_softmax(z, axis=-1), classes[..., None], axis=-1)[..., 0]
    return masked_mean(nll, mask)


def prm_binary_loss(logits, step_labels, mask) -> jax.Array:
    """Eq. 22's binary process reward model: BCE of each step's correctness logit at its last
    token (book §5.6, eq. 22). ``logits [N, T]``, ``step_labels [N, T]`` in ``{0, 1}`` (1 = the
    step is correct), ``mask [N, T]`` 1 at step ends. Mean over labelled tokens, 0 if none."""
    return orm_loss(logits, step_labels, mask)  # the same BCE, with a label per step end
# [/guide]


# ----------------------------------------------------------------------------------------------
# §5.7.1 Reading each kind of model at inference; §5.9 the RewardBench metric

AGGREGATIONS = ("mean", "min", "prod", "sum_log", "last")


def aggregate_token_scores(probs, mask, how: str = "mean") -> jax.Array:
    """Turn per-token (ORM) or per-step (PRM) correctness probabilities into one score per
    sequence (book §5.7.1). ``probs [N, T]`` in (0, 1), ``mask [N, T]``; returns ``[N]``.

    ``how``: ``"mean"``; ``"min"`` (fail-fast: one bad step sinks the answer); ``"prod"`` and
    ``"sum_log"`` (the same ranking; *not* a probability of correctness, since every ``p_t``
    estimates the same event); ``"last"`` (the last masked entry). A row with nothing masked
    scores 0 (``"mean"``, ``"sum_log"``), 1 (``"min"``, ``"prod"``) or 0 (``"last"``).
    """
    check_choice(how, "how", AGGREGATIONS)
    p = as_float_array(probs, "probs", "[N, T]")
    m = as_like(mask, "mask", p, "probs") > 0
    if how == "mean":
        return masked_mean(p, m, axis=1)
    if how == "min":
        return jnp.min(jnp.where(m, p, 1.0), axis=1)
    log_p = jnp.log(jnp.clip(p, 1e-30, 1.0))
    if how == "sum_log":
        return masked_sum(log_p, m, axis=1)
    if how == "prod":
        return jnp.exp(masked_sum(log_p, m, axis=1))
    last = last_token_index(m)
    return jnp.where(jnp.any(m, axis=1), jnp.take_along_axis(p, last[:, None], axis=1)[:, 0], 0.0)


def best_of_n(scores) -> jax.Array:
    """Index of the best of ``N`` candidates per prompt: ``scores [..., N] -> [...]``; ties go
    to the first (book §5.7.1, reranking; chapter 9, rejection sampling)."""
    return jnp.argmax(jnp.asarray(scores), axis=-1)


def preference_accuracy(chosen_rewards, rejected_rewards, tie: float = 0.5) -> jax.Array:
    """Fraction of pairs whose chosen response scores higher (RewardBench, book §5.9).

    ``chosen_rewards [N]``, ``rejected_rewards [N]``; a tie counts ``tie`` (0.5: a coin flip
    would break it; RewardBench-style strict accuracy uses 0).
    """
    r_c, r_r = as_float_vectors((chosen_rewards, "chosen_rewards"),
                                (rejected_rewards, "rejected_rewards"))
    check_range(tie, "tie", 0.0, 1.0)
    return jnp.mean(jnp.where(r_c > r_r, 1.0, jnp.where(r_c == r_r, tie, 0.0)))


# ----------------------------------------------------------------------------------------------
# §5.2, §5.3 A reward model on the mini GPT


# [guide:last-token]
def last_token_index(mask) -> jax.Array:
    """Index of the last 1 in each row of ``mask [N, T]``: ``[N]`` int32 (book §5.3).

    Searching for the last 1 finds the last real token under left *and* right padding (the
    book's ``mask.sum(1) - 1`` is right only under right padding). A row with no 1 gives
    ``T - 1``; callers that can meet empty rows must mask them out.

    How: the first 1 of the reversed row (``argmax`` of the row read backwards), counted from
    the end: ``T - 1 - argmax(mask[..., ::-1])``.
    """
    # BEGIN SOLUTION
    m = jnp.asarray(mask).astype(bool)
    T = m.shape[-1]
    return (T - 1 - jnp.argmax(m[..., ::-1], axis=-1)).astype(jnp.int32)
    # END SOLUTION


def mean_pool(hidden, mask) -> jax.Array:
    """Mean of the hidden states of the real tokens: ``hidden [N, T, D]``, ``mask [N, T]`` ->
    ``[N, D]`` (zeros for a row with no real token, not NaN). The alternative to the last-token
    pooling of book §5.3, from the exercise of the lecture notes' reward-model lesson.

    How: the masked sum over ``T`` divided by the number of real tokens, floored at 1 so that
    an empty row gives ``0 / 1``.
    """
    hidden = as_float_array(hidden, "hidden", "[N, T, D]")
    mask = as_like(mask, "mask", hidden[..., 0], "hidden [N, T]")
    # BEGIN SOLUTION
    m = jnp.asarray(mask).astype(hidden.dtype)[..., None]
    return jnp.sum(hidden * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
    # END SOLUTION
# [/guide]


POOLINGS = ("last", "mean")


def init_reward_model(key: jax.Array, lm_params, config: gpt.GPTConfig) -> dict:
    """Reward-model parameters: the language model's (usually the SFT checkpoint) plus a scalar
    head ``r = w . h + b`` with ``w ~ N(0, 0.02^2)`` and ``b = 0`` (book §5.2). The LM's own
    unembedding stays in the tree but is not used by :func:`reward_scores`."""
    w = 0.02 * jax.random.normal(key, (config.d_model,), jnp.float32)
    return {"lm": lm_params, "head": {"w": w, "b": jnp.zeros((), jnp.float32)}}


# [guide:reward-scores]
def reward_scores(params, tokens, mask, config: gpt.GPTConfig, pooling: str = "last") -> jax.Array:
    """Scalar rewards ``r_theta(x, y)`` of whole sequences: ``tokens [N, T]``, ``mask [N, T]``
    (1 on real tokens, prompt and response; padding on either side) -> ``[N]``
    (book §5.2, §5.3, Figure 12).

    The mask also goes into the transformer as segment ids (padding is its own segment), so real
    tokens never attend to padding and their positions start at 0 wherever the padding is: the
    score of a sequence is the same under left and right padding. With causal attention the last
    real token has seen the whole sequence, which is why ``pooling="last"`` reads it (the
    sequence ends with ``<|end|>``, as the book's EOS); ``pooling="mean"`` averages all real
    tokens. Under ``jit`` XLA drops the vocabulary logits that ``gpt.forward`` also computes.
    """
    check_choice(pooling, "pooling", POOLINGS)
    mask = jnp.asarray(mask)
    _, hidden = gpt.forward(params["lm"], tokens, config, return_hidden=True,
                            segment_ids=mask.astype(jnp.int32))
    if pooling == "last":
        idx = last_token_index(mask)
        h = jnp.take_along_axis(hidden, idx[:, None, None], axis=1)[:, 0]  # [N, D]
    else:
        h = mean_pool(hidden, mask)
    return h @ params["head"]["w"] + params["head"]["b"]
# [/guide]


def n_pairs_per_prompt(k: int) -> int:
    """``C(K, 2)``: the comparisons a ranking of ``K`` completions gives (book §5.4.2)."""
    return math.comb(k, 2)
