"""Grading checks for chapter 5 (reward models).

Oracles: the book's test vectors (§5.1's table of Bradley-Terry probabilities and losses, the
margin example 5 - 2 = 3 of §5.4.1, the Plackett-Luce probabilities of §5.4.3); plain float64
Python loops written from the equations (eqs. 16, 17, 18 per pair, eq. 19 per prompt over its valid
pairs, eq. 20 as a product of softmax choices, a scan for the last 1 of a mask, a masked mean);
and math: the gradient ``dL/dDelta = -sigmoid(-Delta)``, Plackett-Luce probabilities summing to
1 over all ``K!`` rankings, invariance to a constant shift of every reward and to the side the
padding is on.
"""

from __future__ import annotations

import functools
import itertools
import math


import jax
import jax.numpy as jnp
import numpy as np

from rlhf_book.ch05_reward_models.loop import PairBatch
from rlhf_book.lm import gpt, tokenizer
from rlhf_book.textbook.checks import (as_array, call, expect_close, expect_dtype,
                                       expect_finite, expect_shape, grad_of, jit, probe, require)
from rlhf_book.textbook.checks.ch04_instruction_tuning import expect_tree_close, param_leaves

# §5.1's table: (r_c, r_r, P(c > r), loss); the last row is the first shifted by +7.
BOOK_BT_TABLE = ((2.0, 0.5, 0.8175745, 0.2014133), (1.0, 1.0, 0.5, math.log(2.0)),
                 (0.0, 3.0, 0.0474259, 3.0485874), (9.0, 7.5, 0.8175745, 0.2014133))
BOOK_BT_GRAD = -0.1824255  # dL/dDelta at Delta = 1.5
BOOK_MARGIN_LOSS = 1.7014133  # r_c = 2, r_r = 0.5, m = 5 - 2 = 3 (§5.4.1)
BOOK_PL_PROB = 0.4863301  # scores (2, 1, 0) ranked 0 > 1 > 2 (§5.4.3)
BOOK_PL_NLL = 0.7208677
BOOK_PL_REVERSED_PROB = 0.0242130  # the same scores ranked 2 > 1 > 0


def _softplus(x: float) -> float:
    """``log(1 + e^x)`` in float64, for any ``x``."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _logsumexp(values) -> float:
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def _f32(x) -> jax.Array:
    return jnp.asarray(np.asarray(x, np.float32))


# ----------------------------------------------------------------------------------------------
# 5.1 the Bradley-Terry loss (eqs. 16, 17, 18)


def bt_loop(r_c, r_r, margin=None) -> float:
    r_c, r_r = np.asarray(r_c, np.float64), np.asarray(r_r, np.float64)
    m = np.broadcast_to(np.asarray(0.0 if margin is None else margin, np.float64), r_c.shape)
    return sum(_softplus(-(c - r - mm)) for c, r, mm in zip(r_c, r_r, m)) / len(r_c)


def _scalar(fn, what, *args, **kwargs) -> np.ndarray:
    out = expect_shape(fn(*args, **kwargs), (), what + " (the loss is a scalar)")
    return expect_finite(out, what)


def bradley_terry_loss(fn):
    for r_c, r_r, _, loss in BOOK_BT_TABLE:
        what = f"bradley_terry_loss([{r_c}], [{r_r}])"
        out = _scalar(fn, what, _f32([r_c]), _f32([r_r]))
        expect_close(out, loss, what + " (the book's table: -log sigmoid(r_c - r_r))", atol=1e-6)
    chosen = _f32([row[0] for row in BOOK_BT_TABLE])
    rejected = _f32([row[1] for row in BOOK_BT_TABLE])
    what = "bradley_terry_loss(the book's 4 pairs at once)"
    expect_close(_scalar(fn, what, chosen, rejected), np.mean([row[3] for row in BOOK_BT_TABLE]),
                 what + " (the mean over pairs, not the sum)", atol=1e-6)

    what = "bradley_terry_loss([2.0], [0.5], margin=3.0)"
    expect_close(_scalar(fn, what, _f32([2.0]), _f32([0.5]), margin=3.0), BOOK_MARGIN_LOSS,
                 what + " (eq. 18: -log sigmoid(r_c - r_r - m), the book's 5 - 2 = 3)", atol=1e-6)
    what = "bradley_terry_loss([2.0], [0.5], margin=[3.0])"
    expect_close(_scalar(fn, what, _f32([2.0]), _f32([0.5]), _f32([3.0])), BOOK_MARGIN_LOSS,
                 what + " (a margin per pair)", atol=1e-6)
    what = "bradley_terry_loss([2.0], [0.5], margin=0.0)"
    expect_close(_scalar(fn, what, _f32([2.0]), _f32([0.5]), margin=0.0), BOOK_BT_TABLE[0][3],
                 what + " (m = 0 is eq. 16)", atol=1e-6)

    rng = np.random.default_rng(0)
    N = 16
    r_c, r_r = 3 * rng.standard_normal(N), 3 * rng.standard_normal(N)
    margins = rng.integers(0, 4, N).astype(np.float64)
    what = f"bradley_terry_loss(random [{N}], [{N}])"
    expect_close(_scalar(fn, what, _f32(r_c), _f32(r_r)), bt_loop(r_c, r_r), what, atol=1e-5)
    what = f"bradley_terry_loss(random [{N}], [{N}], margin [{N}] of rating gaps 0-3)"
    out = _scalar(fn, what, _f32(r_c), _f32(r_r), _f32(margins))
    expect_close(out, bt_loop(r_c, r_r, margins), what + " (each pair its own margin)", atol=1e-5)
    what = f"bradley_terry_loss(random [{N}] + 100, [{N}] + 100)"
    expect_close(_scalar(fn, what, _f32(r_c + 100), _f32(r_r + 100)), bt_loop(r_c, r_r),
                 what + " (only r_c - r_r matters: a shift of both changes nothing)", atol=1e-4)

    # finite for rewards of any size: -log sigmoid(-2e4) = 2e4, not log(0)
    what = "bradley_terry_loss([-1e4], [1e4])"
    expect_close(_scalar(fn, what, _f32([-1e4]), _f32([1e4])), 2e4,
                 what + " (use softplus(-d) or -log_sigmoid(d), not log(sigmoid(d)))", rtol=1e-6)
    what = "bradley_terry_loss([1e4], [-1e4])"
    expect_close(_scalar(fn, what, _f32([1e4]), _f32([-1e4])), 0.0, what, atol=1e-6)
    grad = grad_of(fn)(_f32([-1e4]), _f32([1e4]))
    expect_close(expect_finite(grad, "gradient at Delta = -2e4"), [-1.0],
                 "d bradley_terry_loss / d r_c at Delta = -2e4 (-sigmoid(-Delta) = -1: the "
                 "gradient must not vanish when the model is confidently wrong)", atol=1e-6)

    # gradient: dL/dr_c = -sigmoid(-Delta) / N, dL/dr_r = +sigmoid(-Delta) / N
    g_c, g_r = grad_of(fn, argnums=(0, 1))(_f32([2.0]), _f32([0.5]))
    expect_close(g_c, [BOOK_BT_GRAD], "d bradley_terry_loss / d r_c at Delta = 1.5 "
                 "(-sigmoid(-Delta) = -0.1824255)", atol=1e-6)
    expect_close(g_r, [-BOOK_BT_GRAD], "d bradley_terry_loss / d r_r at Delta = 1.5 "
                 "(+sigmoid(-Delta))", atol=1e-6)
    g_c = grad_of(fn)(_f32(r_c), _f32(r_r), _f32(margins))
    delta = r_c - r_r - margins
    expect_close(g_c, -1.0 / (1.0 + np.exp(delta)) / N,
                 f"d bradley_terry_loss / d r_c on {N} pairs with margins "
                 "(-sigmoid(-(r_c - r_r - m)) / N)", atol=1e-6)

    what = "jax.jit(bradley_terry_loss)(r_c, r_r, margin)"
    expect_close(jit(fn)(_f32(r_c), _f32(r_r), _f32(margins)), bt_loop(r_c, r_r, margins),
                 what, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# 5.2 balancing the C(K, 2) comparisons of each prompt (eq. 19, per prompt)


def balanced_loop(scores, valid=None) -> float:
    """Mean over prompts with >= 2 valid completions of the mean over their pairs i < j
    (i ranked above j) of -log sigmoid(s_i - s_j); 0 when no prompt has a pair."""
    scores = np.asarray(scores, np.float64)
    valid = np.ones(scores.shape, bool) if valid is None else np.asarray(valid, bool)
    per_prompt = []
    for s, v in zip(scores, valid):
        idx = [k for k in range(len(s)) if v[k]]
        pairs = [(i, j) for a, i in enumerate(idx) for j in idx[a + 1:]]
        if pairs:
            per_prompt.append(sum(_softplus(-(s[i] - s[j])) for i, j in pairs) / len(pairs))
    return sum(per_prompt) / len(per_prompt) if per_prompt else 0.0


def balanced_grad_loop(scores, valid) -> np.ndarray:
    """The gradient of :func:`balanced_loop`: pair (i, j) adds -sigmoid(-(s_i - s_j)) to
    s_i and the opposite to s_j, divided by the prompt's number of pairs and of prompts."""
    scores = np.asarray(scores, np.float64)
    valid = np.asarray(valid, bool)
    grad = np.zeros(scores.shape)
    rows = []
    for p, (s, v) in enumerate(zip(scores, valid)):
        idx = [k for k in range(len(s)) if v[k]]
        pairs = [(i, j) for a, i in enumerate(idx) for j in idx[a + 1:]]
        for i, j in pairs:
            g = -1.0 / (1.0 + math.exp(s[i] - s[j])) / len(pairs)
            grad[p, i] += g
            grad[p, j] -= g
        if pairs:
            rows.append(p)
    return grad / max(len(rows), 1)


def balanced_pairwise_loss(fn):
    what = "balanced_pairwise_loss([[2.0, 0.5]])"
    expect_close(_scalar(fn, what, _f32([[2.0, 0.5]])), BOOK_BT_TABLE[0][3],
                 what + " (K = 2 is one Bradley-Terry pair; column 0 is ranked best)", atol=1e-6)
    what = "balanced_pairwise_loss([[3.0, 2.0, 0.0]])"
    expect_close(_scalar(fn, what, _f32([[3.0, 2.0, 0.0]])),
                 (_softplus(-1.0) + _softplus(-3.0) + _softplus(-2.0)) / 3,
                 what + " (the mean of the C(3, 2) = 3 pairs (0,1), (0,2), (1,2))", atol=1e-6)

    rng = np.random.default_rng(1)
    P, K = 5, 6
    scores = 2 * rng.standard_normal((P, K))
    what = f"balanced_pairwise_loss(scores [{P}, {K}])"
    expect_close(_scalar(fn, what, _f32(scores)), balanced_loop(scores), what, atol=1e-5)

    what = "balanced_pairwise_loss([[3.0, 1e4, 0.0]], valid=[[1, 0, 1]])"
    out = _scalar(fn, what, _f32([[3.0, 1e4, 0.0]]), jnp.asarray([[True, False, True]]))
    expect_close(out, _softplus(-3.0), what + " (an invalid completion, valid False, holds "
                 "garbage: only the pairs of valid ones count)", atol=1e-6)

    # each prompt weighs the same, whatever its K: a K = 9 prompt (36 pairs) and a K = 4
    # prompt (6 pairs) each contribute half of the loss and of the gradient
    big = 2 * rng.standard_normal(9)
    small = np.concatenate([2 * rng.standard_normal(4), np.zeros(5)])
    both = np.stack([big, small])
    valid2 = np.stack([np.ones(9, bool), np.arange(9) < 4])
    what = "balanced_pairwise_loss(a K = 9 prompt and a K = 4 prompt)"
    out = _scalar(fn, what, _f32(both), jnp.asarray(valid2))
    alone_big, alone_small = balanced_loop(big[None]), balanced_loop(small[None, :4])
    expect_close(out, (alone_big + alone_small) / 2, what + " (each prompt's pairs are averaged "
                 "first, then the prompts: weights 1/2 and 1/2, not 36/42 and 6/42)", atol=1e-5)
    grad = as_array(grad_of(fn)(_f32(both), jnp.asarray(valid2)), "gradient")
    expected = balanced_grad_loop(both, valid2)
    expect_close(grad[1, 4:], np.zeros(5), "gradient of balanced_pairwise_loss w.r.t. invalid "
                 "completions (must be 0)", atol=0)
    expect_close(grad, expected, "gradient of balanced_pairwise_loss(a K = 9 and a K = 4 "
                 "prompt) (each prompt's pair gradients divided by its own C(K, 2), then by P)",
                 atol=1e-6)

    # prompts with different K: invalid completions hold garbage that must not count
    valid = np.ones((P, K), bool)
    valid[0, 4:] = False                 # K = 4
    valid[1, [1, 3]] = False             # holes
    valid[2, 1:] = False                 # one completion only: no pair, ignored
    valid[3, :] = False                  # no completion at all: ignored
    garbage = np.where(valid, scores, 1e4 * rng.choice([-1.0, 1.0], (P, K)))
    what = f"balanced_pairwise_loss(scores [{P}, {K}], valid with K = 6, 4, 1 and 0 per prompt)"
    out = _scalar(fn, what, _f32(garbage), jnp.asarray(valid))
    expect_close(out, balanced_loop(scores, valid), what + " (pairs need two valid "
                 "completions; prompts without a pair are left out of the mean)", atol=1e-5)
    what = "balanced_pairwise_loss(..., valid as 0/1 floats)"
    expect_close(_scalar(fn, what, _f32(garbage), _f32(valid)), balanced_loop(scores, valid),
                 what, atol=1e-5)
    what = "balanced_pairwise_loss(scores, valid all False)"
    expect_close(_scalar(fn, what, _f32(scores), jnp.zeros((P, K), bool)), 0.0,
                 what + " (no pair anywhere: 0, not NaN)", atol=0)

    what = "jax.jit(balanced_pairwise_loss)(scores, valid)"
    expect_close(jit(fn)(_f32(garbage), jnp.asarray(valid)), balanced_loop(scores, valid),
                 what, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# 5.3 the Plackett-Luce loss (eq. 20)


def pl_nll_loop(scores) -> np.ndarray:
    """-log P of each row's ranking (best first): sum_k logsumexp_{j >= k} s_j - s_k."""
    scores = np.asarray(scores, np.float64)
    return np.array([sum(_logsumexp(row[k:]) - row[k] for k in range(len(row))) for row in scores])


def pl_grad_loop(scores) -> np.ndarray:
    """d mean_n NLL_n / d s: -1 + sum_{i <= k} softmax(s[i:])[k - i] at position k."""
    scores = np.asarray(scores, np.float64)
    grad = np.zeros(scores.shape)
    for n, row in enumerate(scores):
        K = len(row)
        for i in range(K):
            tail = np.exp(row[i:] - _logsumexp(row[i:]))
            grad[n, i:] += tail
            grad[n, i] -= 1.0
    return grad / len(scores)


def plackett_luce_loss(fn):
    what = "plackett_luce_loss([[2.0, 1.0, 0.0]])"
    out = _scalar(fn, what, _f32([[2.0, 1.0, 0.0]]))
    expect_close(out, BOOK_PL_NLL, what + " (book §5.4.3: P = e^2/(e^2+e+1) * e/(e+1) "
                 f"= {BOOK_PL_PROB}; the loss is -log P)", atol=1e-6)
    what = "plackett_luce_loss([[0.0, 1.0, 2.0]])"
    expect_close(_scalar(fn, what, _f32([[0.0, 1.0, 2.0]])), -math.log(BOOK_PL_REVERSED_PROB),
                 what + f" (the reversed ranking: P = {BOOK_PL_REVERSED_PROB})", atol=1e-5)
    what = "plackett_luce_loss([[2.0, 0.5]])"
    expect_close(_scalar(fn, what, _f32([[2.0, 0.5]])), BOOK_BT_TABLE[0][3],
                 what + " (K = 2 is Bradley-Terry: -log sigmoid(1.5))", atol=1e-6)

    rng = np.random.default_rng(2)
    scores = 2 * rng.standard_normal((4, 5))
    what = "plackett_luce_loss(scores [4, 5])"
    expect_close(_scalar(fn, what, _f32(scores)), pl_nll_loop(scores).mean(),
                 what + " (the mean over rankings of sum_k logsumexp_{j >= k} s_j - s_k)",
                 atol=1e-5)
    what = "plackett_luce_loss(scores [4, 5] + 50)"
    expect_close(_scalar(fn, what, _f32(scores + 50)), pl_nll_loop(scores).mean(),
                 what + " (a shift of every score changes nothing)", atol=1e-4)

    # eq. 20 is a distribution over rankings: exp(-NLL) sums to 1 over all K! orderings
    for K in (3, 4):
        s = rng.standard_normal(K)
        total = 0.0
        for perm in itertools.permutations(range(K)):
            total += math.exp(-float(as_array(fn(_f32(s[list(perm)][None])),
                                              "plackett_luce_loss")))
        expect_close(total, 1.0, f"sum over all {K}! rankings of exp(-plackett_luce_loss) for "
                     f"{K} random scores (eq. 20 must be a probability distribution)", atol=1e-4)

    big = 1e4 * rng.standard_normal((3, 4))
    what = "plackett_luce_loss(scores of size 1e4)"
    out = expect_finite(fn(_f32(big)), what + " (use logsumexp, not log(sum(exp)))")
    expect_close(out, pl_nll_loop(np.asarray(_f32(big))).mean(), what, rtol=1e-5, atol=1e-2)

    grad = grad_of(fn)(_f32(scores))
    expect_close(grad, pl_grad_loop(scores), "gradient of plackett_luce_loss(scores [4, 5]) "
                 "(d/ds_k = -1 + sum_{i <= k} softmax(s[i:]) at k, over N)", atol=1e-6)
    expect_close(jit(fn)(_f32(scores)), pl_nll_loop(scores).mean(),
                 "jax.jit(plackett_luce_loss)(scores [4, 5])", atol=1e-5)


# ----------------------------------------------------------------------------------------------
# 5.4 the last real token, whatever side the padding is on


def last_index_loop(mask) -> np.ndarray:
    """The position of the last 1 in each row; ``T - 1`` for a row without one (the
    documented convention)."""
    mask = np.asarray(mask).astype(bool)
    T = mask.shape[1]
    out = []
    for row in mask:
        ones = [t for t in range(T) if row[t]]
        out.append(ones[-1] if ones else T - 1)
    return np.array(out)


def _random_masks(rng, N, T):
    lengths = rng.integers(1, T + 1, N)
    t = np.arange(T)
    right = t[None] < lengths[:, None]
    left = t[None] >= T - lengths[:, None]
    holes = rng.random((N, T)) < 0.5
    holes[np.arange(N), rng.integers(0, T, N)] = True  # at least one real token per row
    return right, left, holes


def last_token_index(fn):
    cases = [([1, 1, 1, 0, 0], 2, "right padding"), ([0, 0, 1, 1, 1], 4, "left padding"),
             ([1, 1, 1, 1, 1], 4, "no padding"), ([0, 1, 1, 0, 0], 2, "padding on both sides"),
             ([1, 0, 1, 1, 0], 3, "a hole")]
    for row, expected, name in cases:
        what = f"last_token_index([{row}]) ({name})"
        out = expect_shape(fn(jnp.asarray([row], jnp.int32)), (1,), what)
        expect_dtype(out, "i", what)
        hint = (" (the index of the last 1 in the row; mask.sum() - 1 is right only with "
                "right padding)")
        expect_close(out, [expected], what + hint)

    rng = np.random.default_rng(3)
    N, T = 32, 12
    for name, mask in zip(("right-padded", "left-padded", "random 0/1"), _random_masks(rng, N, T)):
        for kind, m in (("bool", jnp.asarray(mask)), ("float", _f32(mask))):
            what = f"last_token_index({name} {kind} masks [{N}, {T}])"
            out = expect_shape(fn(m), (N,), what)
            expect_close(out, last_index_loop(mask), what + " (the index of the last 1)")
    what = "last_token_index([[0, 0, 0, 0]])"
    expect_close(fn(jnp.zeros((1, 4), jnp.int32)), [3], what + " (the docstring's convention "
                 "for a row without a real token: T - 1)")

    _, left, holes = _random_masks(rng, 8, T)
    expect_close(jit(fn)(jnp.asarray(left)), last_index_loop(left),
                 "jax.jit(last_token_index)(left-padded masks)")
    expect_close(jit(fn)(jnp.asarray(holes)), last_index_loop(holes),
                 "jax.jit(last_token_index)(random 0/1 masks)")


# ----------------------------------------------------------------------------------------------
# 5.5 mean pooling


def mean_pool_loop(hidden, mask) -> np.ndarray:
    hidden = np.asarray(hidden, np.float64)
    mask = np.asarray(mask).astype(bool)
    N, T, D = hidden.shape
    out = np.zeros((N, D))
    for n in range(N):
        rows = [hidden[n, t] for t in range(T) if mask[n, t]]
        if rows:
            out[n] = np.sum(rows, axis=0) / len(rows)
    return out


def mean_pool(fn):
    rng = np.random.default_rng(4)
    N, T, D = 6, 9, 5
    hidden = rng.standard_normal((N, T, D))
    for name, mask in zip(("right-padded", "left-padded", "random 0/1"), _random_masks(rng, N, T)):
        # padding holds large values that must not leak into the mean
        h = np.where(mask[..., None], hidden, 1e3 * rng.standard_normal((N, T, D)))
        for kind, m in (("bool", jnp.asarray(mask)), ("float", _f32(mask))):
            what = f"mean_pool(hidden [{N}, {T}, {D}], {name} {kind} mask)"
            out = expect_finite(expect_shape(fn(_f32(h), m), (N, D), what), what)
            expect_close(out, mean_pool_loop(h, mask), what + " (the mean over real tokens "
                         "only: divide by the number of 1s in the row, not by T)", atol=1e-5)

    # the same sequences right- and left-padded pool to the same vectors
    lengths = rng.integers(1, T + 1, N)
    right = np.arange(T)[None] < lengths[:, None]
    left = np.stack([np.roll(r, T - k) for r, k in zip(right, lengths)])
    h_left = np.stack([np.roll(h, T - k, axis=0) for h, k in zip(hidden, lengths)])
    expect_close(fn(_f32(h_left), jnp.asarray(left)), fn(_f32(hidden), jnp.asarray(right)),
                 "mean_pool(left-padded) vs mean_pool(the same sequences right-padded)", atol=1e-6)

    mask = np.ones((2, T), bool)
    mask[1] = False
    what = "mean_pool(hidden, a mask whose second row has no real token)"
    out = expect_finite(expect_shape(fn(_f32(hidden[:2]), jnp.asarray(mask)), (2, D), what),
                        what + " (an empty row must give zeros, not 0/0 = NaN)")
    expect_close(out[1], np.zeros(D), what + " (zeros for the empty row)", atol=0)
    expect_close(out[0], hidden[0].mean(axis=0), what + " (the full row)", atol=1e-5)

    mask = _random_masks(rng, N, T)[2]
    expect_close(jit(fn)(_f32(hidden), jnp.asarray(mask)), mean_pool_loop(hidden, mask),
                 "jax.jit(mean_pool)(hidden, mask)", atol=1e-5)


# ----------------------------------------------------------------------------------------------
# 5.6 reward margins (the lecture's exercise 2)


KEYS = ("mean_chosen", "mean_rejected", "margin", "accuracy")
NOTES = {"mean_chosen": " (the mean of chosen_rewards)",
         "mean_rejected": " (the mean of rejected_rewards)",
         "margin": " (the mean of r_c - r_r)",
         "accuracy": " (the fraction of strict wins r_c > r_r: a tie is not a win)"}


def margins_loop(r_c, r_r) -> dict:
    r_c, r_r = [float(x) for x in r_c], [float(x) for x in r_r]
    n = len(r_c)
    return {"mean_chosen": sum(r_c) / n, "mean_rejected": sum(r_r) / n,
            "margin": sum(c - r for c, r in zip(r_c, r_r)) / n,
            "accuracy": sum(1.0 for c, r in zip(r_c, r_r) if c > r) / n}


def _expect_margins(out, expected, what, atol=1e-6):
    require(isinstance(out, dict), f"{what} must return a dict, got {type(out).__name__}")
    missing = [k for k in KEYS if k not in out]
    require(not missing, f"{what} lacks the keys {missing} (expected {list(KEYS)})")
    for key in KEYS:
        value = expect_shape(out[key], (), f"{what}[{key!r}]")
        expect_close(value, expected[key], f"{what}[{key!r}]{NOTES[key]}", atol=atol)


def reward_margins(fn):
    r_c, r_r = [1.0, 2.0, 3.0, 4.0], [0.0, 2.0, 5.0, 1.0]
    what = f"reward_margins({r_c}, {r_r})"
    _expect_margins(fn(r_c, r_r), {"mean_chosen": 2.5, "mean_rejected": 2.0, "margin": 0.5,
                                   "accuracy": 0.5}, what)
    rng = np.random.default_rng(5)
    r_c, r_r = rng.standard_normal(50), rng.standard_normal(50)
    expected = margins_loop(r_c, r_r)
    _expect_margins(fn(r_c, r_r), expected, "reward_margins(random [50], [50])")
    _expect_margins(fn(jnp.asarray(r_c, jnp.float32), jnp.asarray(r_r, jnp.float32)),
                    margins_loop(np.float32(r_c), np.float32(r_r)),
                    "reward_margins(float32 jax arrays)", atol=1e-6)
    shifted = fn(r_c + 10.0, r_r + 10.0)
    _expect_margins(shifted, {**expected, "mean_chosen": expected["mean_chosen"] + 10.0,
                              "mean_rejected": expected["mean_rejected"] + 10.0},
                    "reward_margins(r_c + 10, r_r + 10) (the means shift by 10; the margin and "
                    "the accuracy, which see only differences, do not)")
    _expect_margins(fn(r_r, r_c), {"mean_chosen": expected["mean_rejected"],
                                   "mean_rejected": expected["mean_chosen"],
                                   "margin": -expected["margin"],
                                   "accuracy": margins_loop(r_r, r_c)["accuracy"]},
                    "reward_margins with chosen and rejected swapped (the margin changes sign)")


# ----------------------------------------------------------------------------------------------
# 5.7 a reward-model training step: scores, loss and gradient

STEP_WIDTH = 12
STEP_MARGINS = (0.0, 1.0, 3.0, 0.5)
STEP_LEFT_PADDED = 2  # the pair whose two sequences are left-padded


def _step_pairs(rng, n=len(STEP_MARGINS)):
    """``[(chosen ids, rejected ids)]``: a prompt (``<|bos|>`` and 2-4 bytes) shared by both
    halves of a pair, then two different responses of 1-5 bytes."""
    pairs = []
    for _ in range(n):
        prompt = [tokenizer.BOS] + rng.integers(0, 256, int(rng.integers(2, 5))).tolist()
        chosen = prompt + rng.integers(0, 256, int(rng.integers(1, 6))).tolist()
        rejected = prompt + rng.integers(0, 256, int(rng.integers(1, 6))).tolist()
        pairs.append((chosen, rejected))
    return pairs


def _padded(sequences, width, left=()):
    """Token ids ``[N, width]`` and masks, right-padded with ``<|pad|>`` except rows in
    ``left``, which are left-padded."""
    tokens = np.full((len(sequences), width), tokenizer.PAD, np.int32)
    mask = np.zeros((len(sequences), width), np.int32)
    for r, ids in enumerate(sequences):
        where = slice(width - len(ids), width) if r in left else slice(0, len(ids))
        tokens[r, where], mask[r, where] = ids, 1
    return tokens, mask


def _step_batch(pairs, margins=STEP_MARGINS, swap=False) -> PairBatch:
    chosen, rejected = [p[0] for p in pairs], [p[1] for p in pairs]
    if swap:
        chosen, rejected = rejected, chosen
    c, c_mask = _padded(chosen, STEP_WIDTH, left=(STEP_LEFT_PADDED,))
    r, r_mask = _padded(rejected, STEP_WIDTH, left=(STEP_LEFT_PADDED,))
    return PairBatch(*(jnp.asarray(x) for x in (c, c_mask, r, r_mask)),
                     jnp.asarray(margins, jnp.float32))


def _step_params(config):
    """A reward model built here: the tiny GPT and a head ``w ~ N(0, 0.5^2)``, ``b = 0.25``
    (large enough that the pairs' rewards differ by a few units)."""
    w = 0.5 * jax.random.normal(jax.random.PRNGKey(1), (config.d_model,), jnp.float32)
    return {"lm": gpt.init_params(jax.random.PRNGKey(0), config),
            "head": {"w": w, "b": jnp.asarray(0.25, jnp.float32)}}


@functools.partial(jax.jit, static_argnums=(2, 3))
def _alone_rewards(params, tokens, config, pooling):
    """Rewards of sequences right-padded one per row and run without segment ids (under causal
    attention a token never sees the padding after it: each sequence is scored as if alone):
    the head on the last real token's final hidden state, or on the mean over real tokens."""
    real = tokens != tokenizer.PAD
    _, hidden = gpt.forward(params["lm"], tokens, config, return_hidden=True)
    if pooling == "last":
        last = jnp.sum(real, axis=1) - 1  # right padding only: the real tokens come first
        h = hidden[jnp.arange(tokens.shape[0]), last]
    else:
        h = jnp.sum(hidden * real[..., None], axis=1) / jnp.sum(real, axis=1)[:, None]
    return h @ params["head"]["w"] + params["head"]["b"]


def _alone_tokens(pairs, swap=False):
    """Every chosen sequence, then every rejected one, right-padded: ``[2N, width]``."""
    chosen, rejected = [p[0] for p in pairs], [p[1] for p in pairs]
    if swap:
        chosen, rejected = rejected, chosen
    return jnp.asarray(_padded(chosen + rejected, STEP_WIDTH)[0])


def _alone_scores(params, config, pairs, pooling="last", swap=False):
    r = np.asarray(_alone_rewards(params, _alone_tokens(pairs, swap), config, pooling), np.float64)
    return r[:len(pairs)], r[len(pairs):]


@functools.partial(jax.jit, static_argnums=(2, 3))
def _independent_rm_grad(params, tokens, config, pooling, margins):
    def loss(p):
        r = _alone_rewards(p, tokens, config, pooling)
        n = tokens.shape[0] // 2
        return jnp.mean(jnp.logaddexp(0.0, -(r[:n] - r[n:] - margins)))  # -log sigmoid

    return jax.grad(loss)(params)


def rm_accuracy_loop(r_c, r_r) -> float:
    return sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(r_c, r_r)) / len(r_c)


@probe
def jitted_reward_model_step(fn, params, chosen, chosen_mask, rejected, rejected_mask, margin,
                             config, pooling, use_margin):
    """``jax.jit(fn, static_argnums=(2, 3, 4))(params, PairBatch(...), config, pooling,
    use_margin)``: the step compiled, as the library's loop runs it (the batch is
    rebuilt here: a batch sent between processes arrives as a record, which cannot be an
    argument of jit)."""
    batch = PairBatch(chosen, chosen_mask, rejected, rejected_mask, margin)
    return jax.jit(fn, static_argnums=(2, 3, 4))(params, batch, config, pooling, use_margin)


def _run_rm_step(fn, params, batch, config, pooling, use_margin):
    out = call(fn, jitted_reward_model_step, params, *batch, config, pooling, use_margin)
    what = (f"jax.jit(reward_model_step)(tiny reward model, {len(STEP_MARGINS)} pairs, config, "
            f"pooling={pooling!r}, use_margin={use_margin})")
    require(isinstance(out, tuple) and len(out) == 3, f"{what} must return (loss, accuracy, "
            f"grads), got {type(out).__name__}")
    loss = expect_finite(expect_shape(out[0], (), what + " loss (a scalar)"), what + " loss")
    accuracy = expect_shape(out[1], (), what + " accuracy (a scalar)")
    return what, loss, accuracy, out[2]


def _rm_loss_diagnosis(loss, params, config, batch, pairs, pooling, use_margin) -> str:
    """A hint naming the common bug that ``loss`` reproduces, or '' (each alternative computed
    here in float64 from its own description)."""
    value = float(np.asarray(loss, np.float64))
    r_c, r_r = _alone_scores(params, config, pairs, pooling)
    m = np.asarray(STEP_MARGINS, np.float64)
    right = m if use_margin else 0.0
    candidates = [
        (len(pairs) * bt_loop(r_c, r_r, right), "a sum over pairs: the loss is the mean over "
         "pairs"),
        (bt_loop(r_r, r_c, right), "chosen and rejected swapped: -log sigmoid(r_chosen - "
         "r_rejected), chosen first"),
    ]
    if use_margin:
        candidates += [(bt_loop(r_c, r_r), "the margins are ignored: with use_margin=True "
                        "subtract the batch's margin from every pair's reward gap"),
                       (bt_loop(r_c, r_r, -m), "the margin is added: -log sigmoid(r_c - r_r - "
                        "m), so a pair with a larger margin must be won by more")]
    else:
        candidates.append((bt_loop(r_c, r_r, m), "the margins are used although "
                           "use_margin=False: ignore them then"))
    if pooling == "mean":
        candidates.append((bt_loop(*_alone_scores(params, config, pairs, "last"), right),
                           "last-token pooling: pooling='mean' averages the hidden states of "
                           "the real tokens"))
    # a left-padded pair read at the wrong place, or with the padding seen by the real tokens
    tokens = jnp.concatenate([batch.chosen, batch.rejected])
    mask = np.asarray(jnp.concatenate([batch.chosen_mask, batch.rejected_mask]))
    head = params["head"]
    for segments in (jnp.asarray(mask), None):
        _, hidden = gpt.forward(params["lm"], tokens, config, return_hidden=True,
                                segment_ids=segments)
        hidden = np.asarray(hidden, np.float64)
        if segments is None:  # the right position, but padding in attention and positions
            index = np.array([np.flatnonzero(row)[-1] for row in mask])
        else:  # mask.sum() - 1: the last real token only under right padding
            index = mask.sum(1) - 1
        h = hidden[np.arange(len(index)), index]
        r = h @ np.asarray(head["w"], np.float64) + float(head["b"])
        candidates.append((bt_loop(r[:len(pairs)], r[len(pairs):], right), "the left-padded pair "
                           f"{STEP_LEFT_PADDED} is not scored as its sequences alone: read the "
                           "last real token (exercise 5.4), and pass the mask to the model as "
                           "segment ids so that padding stays out of attention and positions "
                           "(reward_scores does both)"))
    for candidate, hint in candidates:
        if abs(value - candidate) <= 1e-4 * max(1.0, abs(candidate)):
            return f" (looks like {hint})"
    return ""


def _rm_grad_hint(grads, expected):
    def hint():
        got, want = param_leaves(grads), param_leaves(expected)
        lm = [k for k in want if k.startswith("['lm']")]
        if all(not np.any(got[k]) for k in lm) and any(np.any(want[k]) for k in lm):
            return (" (the backbone gets no gradient: differentiate with respect to the whole "
                    "params tree, so that every layer learns, not only the head)")
        ratio = [float(np.vdot(got[k], want[k]) / max(np.vdot(want[k], want[k]), 1e-30))
                 for k in want if np.any(want[k])]
        if np.allclose(ratio, len(STEP_MARGINS), rtol=1e-2):
            return " (looks like the gradient of the sum over pairs, not of the mean loss)"
        if np.allclose(ratio, -1.0, rtol=1e-2):
            return " (looks like the gradient of minus the loss)"
        return ""

    return hint


def reward_model_step(fn):
    config = gpt.get_config("tiny")
    params = _step_params(config)
    pairs = _step_pairs(np.random.default_rng(57))
    batch = _step_batch(pairs)
    m = np.asarray(STEP_MARGINS, np.float64)
    r_c, r_r = _alone_scores(params, config, pairs)
    require(min(abs(r_c - r_r)) > 1e-3, "internal: the test pairs must not tie")

    what, loss, accuracy, grads = _run_rm_step(fn, params, batch, config, "last", False)
    expected = bt_loop(r_c, r_r)
    hint = "" if abs(float(loss) - expected) <= 1e-5 else _rm_loss_diagnosis(
        loss, params, config, batch, pairs, "last", False)
    expect_close(loss, expected, what + " loss (the mean over pairs of -log sigmoid(r_c - r_r), "
                 "each sequence scored alone)" + hint, atol=1e-5)
    expect_close(accuracy, rm_accuracy_loop(r_c, r_r), what + " accuracy (the fraction of pairs "
                 "whose chosen response scores higher)", atol=1e-6)
    tokens = _alone_tokens(pairs)
    expected_grads = _independent_rm_grad(params, tokens, config, "last", jnp.zeros(len(pairs)))
    expect_tree_close(grads, expected_grads, what + " grads (jax.grad of the loss of the "
                      "sequences scored alone)", atol=1e-6, rtol=1e-3,
                      hint=_rm_grad_hint(grads, expected_grads))

    # Llama 2's margins (eq. 18), subtracted from each pair's reward gap
    what, loss, _, grads = _run_rm_step(fn, params, batch, config, "last", True)
    expected = bt_loop(r_c, r_r, m)
    hint = "" if abs(float(loss) - expected) <= 1e-5 else _rm_loss_diagnosis(
        loss, params, config, batch, pairs, "last", True)
    expect_close(loss, expected, what + f" loss (margins {list(STEP_MARGINS)}: the mean of "
                 "-log sigmoid(r_c - r_r - m))" + hint, atol=1e-5)
    expected_grads = _independent_rm_grad(params, tokens, config, "last",
                                          jnp.asarray(m, jnp.float32))
    expect_tree_close(grads, expected_grads, what + " grads", atol=1e-6, rtol=1e-3,
                      hint=_rm_grad_hint(grads, expected_grads))

    # mean pooling
    what, loss, _, _ = _run_rm_step(fn, params, batch, config, "mean", False)
    mean_c, mean_r = _alone_scores(params, config, pairs, "mean")
    expected = bt_loop(mean_c, mean_r)
    hint = "" if abs(float(loss) - expected) <= 1e-5 else _rm_loss_diagnosis(
        loss, params, config, batch, pairs, "mean", False)
    expect_close(loss, expected, what + " loss (rewards of the mean hidden state over real "
                 "tokens)" + hint, atol=1e-5)

    # the invariant: each pair's probability p = sigmoid(r_c - r_r) becomes 1 - p
    what, loss_swapped, accuracy_swapped, _ = _run_rm_step(
        fn, params, _step_batch(pairs, swap=True), config, "last", False)
    what = what.replace("pairs,", "pairs with chosen and rejected swapped,")
    expect_close(loss_swapped, bt_loop(r_r, r_c), what + " loss (each pair's probability p "
                 "becomes 1 - p: the mean of -log(1 - p))", atol=1e-5)
    expect_close(accuracy_swapped, 1.0 - rm_accuracy_loop(r_c, r_r),
                 what + " accuracy (1 - the accuracy before the swap, with no tie)", atol=1e-6)
