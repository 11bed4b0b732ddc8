"""Grading checks for chapter 9 (rejection sampling and best-of-N).

Oracles: the book's worked example (eqs. 117, 118, 119, 120, 121, 122, 123: the reward matrix,
its row-major flattening and the five pairs it keeps, best first), the book's code snippet in
§9.1 (a sort undone by a scatter and by ``argsort``), a table of ``log N - (N - 1)/N`` computed
independently; plain Python loops written from the equations, public here so that the tests use
the same ones (:func:`top_k_oracle`: pick the largest remaining reward, lowest flat index first
on ties; :func:`inverse_permutation_oracle`: ``inv[perm[i]] = i``;
:func:`uniform_exact_kl_oracle`: the exact KL of best-of-N over equally likely distinct
rewards); and math: ``i = k // N, j = k % N`` on a matrix that is
not square, a permutation composed with its inverse is the identity, the best-of-N KL as an
integral over the reward quantile (``N u^(N-1)`` against the uniform) and as the limit of the
exact KL for a uniform distribution over many distinct rewards, which it bounds from above;
``jit``/``vmap`` agreeing with the eager result. The SFT batch of a round (9.4): the worked
example, a loop over prompts, and a loss mask rebuilt from each kept completion's position.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_book.textbook.checks import (Mismatch, as_array, expect, expect_close, expect_dtype,
                                       expect_shape, jit, require, vmap)

# Book eq. 117: M = 5 prompts x N = 4 completions; eq. 123: the top 5, best first.
BOOK_R = np.array([[0.7, 0.3, 0.5, 0.2],
                   [0.4, 0.8, 0.6, 0.5],
                   [0.9, 0.3, 0.4, 0.7],
                   [0.2, 0.5, 0.8, 0.6],
                   [0.5, 0.4, 0.3, 0.6]])
BOOK_S5 = [8, 5, 14, 0, 11]
BOOK_ARGSORT = [0, 11, 5, 14, 8]  # eq. 116 taken literally: np.argsort(R_flat)[-5:]


def _f32(x) -> jax.Array:
    return jnp.asarray(np.asarray(x, np.float32))


# ----------------------------------------------------------------------------------------------
# 9.1 The top K pairs overall (eqs. 115, 116)


def top_k_oracle(rewards, k) -> list[tuple[int, int]]:
    """Eqs. 115, 116 by hand: flatten row-major, then ``k`` times take the largest remaining
    entry (the lowest flat index among equals) and map ``f`` to ``(f // N, f % N)``."""
    rewards = np.asarray(rewards, np.float64)
    N = rewards.shape[1]
    flat = [float(v) for v in rewards.reshape(-1)]
    taken, out = set(), []
    for _ in range(k):
        best = None
        for f, v in enumerate(flat):
            if f not in taken and (best is None or v > flat[best]):
                best = f
        taken.add(best)
        out.append((best // N, best % N))
    return out


def _pairs(fn, rewards, k, what) -> tuple[np.ndarray, np.ndarray]:
    """``fn(rewards, k)`` checked to be two integer arrays of shape ``[k]``."""
    out = fn(rewards, k)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise Mismatch(f"{what} returned {type(out).__name__}, expected a pair "
                       f"(prompt_idx [{k}], completion_idx [{k}])")
    prompt = expect_dtype(expect_shape(out[0], (k,), what + "[0] (prompt_idx)"), "i",
                          what + "[0] (prompt_idx)")
    completion = expect_dtype(expect_shape(out[1], (k,), what + "[1] (completion_idx)"), "i",
                              what + "[1] (completion_idx)")
    return prompt.astype(np.int64), completion.astype(np.int64)


def select_top_overall(fn):
    what = "select_top_overall(R, 5) on the book's R (eq. 117)"
    prompt, completion = _pairs(fn, _f32(BOOK_R), 5, what)
    flat = prompt * 4 + completion
    expect(bool(np.all((0 <= prompt) & (prompt < 5) & (0 <= completion) & (completion < 4))),
           f"{what}: indices out of range, prompt_idx {prompt.tolist()}, completion_idx "
           f"{completion.tolist()} (R is [5 prompts, 4 completions]; 0-based)")
    expect(sorted(flat.tolist()) == sorted(BOOK_S5),
           f"{what} keeps the pairs {list(zip(prompt.tolist(), completion.tolist()))}; the book "
           f"keeps flat indices {sorted(BOOK_S5)} of R_flat (eq. 122), i.e. (prompt, completion) = "
           f"(2, 0), (1, 1), (3, 2), (0, 0), (2, 3) 0-based: flatten row-major and map a flat "
           f"index k back with i = k // N, j = k % N, N = 4 completions per prompt")
    if flat.tolist() == BOOK_ARGSORT:
        raise Mismatch(f"{what} returned flat indices {BOOK_ARGSORT}: the right set, in the "
                       f"ascending order of eq. 116's argsort(R_flat)[-K:] (erratum); the "
                       f"exercise asks for the best first, as eq. 123 prints: {BOOK_S5}")
    expect(flat.tolist() == BOOK_S5,
           f"{what} returned flat indices {flat.tolist()}: the right set in the wrong order; "
           f"best first, and among equal rewards the lower flat index first: {BOOK_S5} "
           f"(eq. 123; 5 and 14 are both 0.8, 0 and 11 both 0.7)")
    expect_close(BOOK_R[prompt, completion], [0.9, 0.8, 0.8, 0.7, 0.7],
                 what + ": the kept rewards (book eq. 123)", atol=1e-9)

    # a matrix that is not square, so that k // N and k // M (or k % M) differ
    rng = np.random.default_rng(0)
    rewards = rng.permutation(21).reshape(3, 7) / 20.0
    for k in (1, 4, 21):
        what = f"select_top_overall(R [3 prompts, 7 completions], {k})"
        got = list(zip(*(a.tolist() for a in _pairs(fn, _f32(rewards), k, what))))
        expected = top_k_oracle(rewards, k)
        expect(got == expected, f"{what} returned {got[:6]}{'...' if k > 6 else ''}, expected "
               f"{expected[:6]}{'...' if k > 6 else ''} (best first; flat index k -> (k // N, "
               f"k % N) with N = 7 completions per prompt, not M = 3)")

    # ties (integers 0..3): among equal rewards the lower flat index comes first
    ties = rng.integers(0, 4, size=(4, 6)).astype(np.float32)
    for k in (3, 10, 24):
        what = f"select_top_overall(integer rewards with ties [4, 6], {k})"
        got = list(zip(*(a.tolist() for a in _pairs(fn, jnp.asarray(ties), k, what))))
        expected = top_k_oracle(ties, k)
        expect(got == expected, f"{what} returned {got[:8]}..., expected {expected[:8]}... (ties "
               f"go to the lower flat index, as jax.lax.top_k and a stable descending sort do)")

    # one prompt: top-1 overall is the argmax of the row (book eq. 125)
    row = rng.normal(size=(1, 9))
    what = "select_top_overall(one prompt [1, 9], 1)"
    prompt, completion = _pairs(fn, _f32(row), 1, what)
    expect(prompt.tolist() == [0] and completion.tolist() == [int(np.argmax(row))],
           f"{what} returned ({prompt.tolist()}, {completion.tolist()}), expected ([0], "
           f"[{int(np.argmax(row))}]) (eq. 125: for a single prompt, top-K with K = 1 is the "
           f"argmax)")

    many = rng.normal(size=(6, 5))
    what = "jax.jit(select_top_overall, static_argnums=1)(R [6, 5], 7)"
    out = jit(fn, static_argnums=1)(_f32(many), 7)
    got = list(zip(*(as_array(a, what).tolist() for a in out)))
    expect(got == top_k_oracle(many.astype(np.float32), 7),
           f"{what} returned {got}, expected {top_k_oracle(many.astype(np.float32), 7)}")


# ----------------------------------------------------------------------------------------------
# 9.2 The inverse permutation (the book's code snippet)


def inverse_permutation_oracle(perm) -> np.ndarray:
    """``inv`` with ``inv[perm[i]] = i``, one entry at a time."""
    inv = np.zeros(len(perm), np.int64)
    for i, p in enumerate(perm):
        inv[p] = i
    return inv


def _call_inverse(fn, perm, what) -> np.ndarray:
    out = expect_shape(fn(jnp.asarray(perm)), (len(perm),), what)
    return expect_dtype(out, "i", what).astype(np.int64)


def inverse_permutation(fn):
    # the book's snippet, seeded (the book's is not): sort x, then undo the sort
    rng = np.random.default_rng(0)
    for trial in range(3):
        x = rng.integers(10, size=10)
        sorted_indices = np.argsort(x, kind="stable")
        x_sorted = x[sorted_indices]
        what = f"inverse_permutation(np.argsort(x)) for x = {x.tolist()}"
        inv = _call_inverse(fn, sorted_indices.astype(np.int32), what)
        require(bool(np.all((0 <= inv) & (inv < 10))), f"{what} = {inv.tolist()}: entries must be "
                f"positions 0..9")
        expect(x_sorted[inv].tolist() == x.tolist(),
               f"{what} = {inv.tolist()}: x_sorted[inv] = {x_sorted[inv].tolist()} is not x (the "
               f"book's check np.allclose(x, x_sorted[i_rev])). inv[perm[i]] = i, the scatter "
               f"i_rev[sorted_indices] = arange(10); perm itself would index the wrong way")
        expect_close(inv, inverse_permutation_oracle(sorted_indices), what + " (the book's first way: "
                     "i_rev[sorted_indices] = np.arange(10))", atol=0)

    for n in (1, 2, 7, 100):
        perm = rng.permutation(n)
        what = f"inverse_permutation(a random permutation of {n})"
        inv = _call_inverse(fn, perm.astype(np.int32), what)
        expect_close(inv, np.argsort(perm), what + " (the book's second way: "
                     "np.argsort(perm))", atol=0)
        expect_close(inv[perm], np.arange(n), what + ": inv[perm] must be arange(n)", atol=0)
        expect_close(perm[inv], np.arange(n), what + ": perm[inv] must be arange(n) too (the "
                     "inverse works from both sides)", atol=0)
        twice = _call_inverse(fn, inv.astype(np.int32), "inverse_permutation(inverse)")
        expect_close(twice, perm, what + ": the inverse of the inverse is perm", atol=0)

    perms = np.stack([rng.permutation(12) for _ in range(5)]).astype(np.int32)
    expected = np.stack([inverse_permutation_oracle(p) for p in perms])
    expect_close(jit(fn)(jnp.asarray(perms[0])), expected[0],
                 "jax.jit(inverse_permutation)(perm)", atol=0)
    expect_close(vmap(fn)(jnp.asarray(perms)), expected,
                 "jax.vmap(inverse_permutation)(5 permutations of 12)", atol=0)


# ----------------------------------------------------------------------------------------------
# 9.3 The best-of-N KL (book §9.3)

# log N - (N - 1)/N, computed independently (4 decimals).
BON_KL_TABLE = {1: 0.0, 2: 0.1931, 4: 0.6363, 8: 1.2044, 16: 1.8351, 32: 2.4970, 64: 3.1745,
                128: 3.8598, 256: 4.5491, 1000: 5.9088}


def _quantile_integral(n: int, points: int = 400_000) -> float:
    """``KL = int_0^1 q(u) log q(u) du`` with ``q(u) = n u^(n-1)``: the best of ``n`` draws has
    a reward quantile ``u`` with density ``n u^(n-1)`` where a single draw has the uniform one
    (continuous rewards). Midpoint rule."""
    u = (np.arange(points) + 0.5) / points
    q = n * u ** (n - 1)
    return float(np.mean(q * (math.log(n) + (n - 1) * np.log(u))))


def uniform_exact_kl_oracle(K: int, n: int) -> float:
    """Exact KL of best-of-``n`` from a uniform distribution over ``K`` distinct rewards:
    the ``i``-th smallest wins with probability ``(i/K)^n - ((i-1)/K)^n``."""
    i = np.arange(1, K + 1, dtype=np.float64)
    p = (i / K) ** n - ((i - 1) / K) ** n
    return float(np.sum(np.where(p > 0, p * np.log(np.where(p > 0, K * p, 1.0)), 0.0)))


def best_of_n_kl(fn):
    for n, value in BON_KL_TABLE.items():
        what = f"best_of_n_kl({n})"
        out = expect_shape(fn(n), (), what)
        expect_close(out, value, what + " (the table of log N - (N - 1)/N; "
                     "natural log)", atol=6e-5)
    what = "best_of_n_kl(1)"
    expect_close(fn(1), 0.0, what + " (best of one draw is the policy itself: KL 0)", atol=1e-7)

    for n in (2, 4, 16):
        what = f"best_of_n_kl({n})"
        expect_close(fn(n), _quantile_integral(n), what + " vs the integral over the reward "
                     "quantile u of q log q, q(u) = n u^(n-1) (continuous rewards)", atol=1e-5)
        exact = uniform_exact_kl_oracle(2000, n)
        bound = float(as_array(fn(n), what))
        expect(exact <= bound + 1e-6 and bound - exact < 1e-4,
               f"{what} = {bound:.6g}: the exact KL of best-of-{n} over 2000 equally likely "
               f"distinct rewards is {exact:.6g}, which the formula must bound from above and "
               f"match to 1e-4 (Beirami et al. 2024)")

    ns = np.array([[1, 2, 3], [5, 10, 1000]])
    what = "best_of_n_kl(array [[1, 2, 3], [5, 10, 1000]])"
    out = expect_shape(fn(ns), ns.shape, what)
    expected = [[math.log(n) - (n - 1) / n for n in row] for row in ns.tolist()]
    expect_close(out, expected, what + " (elementwise, same shape)", atol=1e-5)
    expect_dtype(out, "f", what)
    what = "best_of_n_kl(2.5)"
    expect_close(fn(2.5), math.log(2.5) - 1.5 / 2.5, what + " (n may be any number >= 1)",
                 atol=1e-6)

    grid = np.arange(1, 200)
    curve = as_array(fn(grid), "best_of_n_kl(1..199)").astype(np.float64)
    expect(bool(np.all(np.diff(curve) > 0)), "best_of_n_kl(n) must increase with n")
    expect_close(curve[grid == 199][0] - math.log(199), -198 / 199,
                 "best_of_n_kl(199) - log(199) (the KL grows like log n, minus nearly 1)",
                 atol=1e-4)

    f = np.array([1.0, 2.0, 4.0, 16.0], np.float32)
    expected = [math.log(n) - (n - 1) / n for n in f]
    expect_close(jit(fn)(jnp.asarray(f)), expected, "jax.jit(best_of_n_kl)(n)", atol=1e-5)
    expect_close(vmap(fn)(jnp.asarray(f)), expected, "jax.vmap(best_of_n_kl)(n)", atol=1e-5)


# ----------------------------------------------------------------------------------------------
# 9.4 rejection sampling into an SFT batch (eqs. 113, 114, 115, 116; the worked example)
#
# Sampled sequences laid out as the sampler lays them out (prompt, completion, padding), with
# prompts of different lengths and completions whose tokens name their (prompt, completion),
# so that a wrong gather shows. Oracles: the book's worked example (eqs. 117, 120, 123), a plain
# Python loop over prompts (the first best completion of each), top_k_oracle for the top K, and
# the loss mask built here from each selected completion's start and length.

PER_PROMPT_EQ_120 = [0, 1, 0, 2, 3]  # eq. 120's S(R) = [1, 2, 1, 3, 4], 0-based


def _sampled(B: int, N: int, T: int = 12, seed: int = 12):
    """``(tokens [B, N, T], mask [B, N, T], starts [B], lengths [B, N])``: prompt ``i`` is
    ``starts[i]`` tokens ``10 + i``; completion ``j`` of it ``lengths[i, j]`` tokens ``100 + i
    * N + j``; padding 0."""
    rng = np.random.default_rng(seed)
    starts = rng.integers(2, 5, B)
    lengths = rng.integers(1, T - 4, (B, N))
    tokens = np.zeros((B, N, T), np.int32)
    mask = np.zeros((B, N, T), np.float32)
    for i in range(B):
        for j in range(N):
            s, c = int(starts[i]), int(lengths[i, j])
            tokens[i, j, :s] = 10 + i
            tokens[i, j, s:s + c] = 100 + i * N + j
            mask[i, j, s:s + c] = 1.0
    return tokens, mask, starts, lengths


def per_prompt_oracle(rewards) -> list[int]:
    """Eq. 113 by hand: for each prompt, the first completion with the largest reward."""
    out = []
    for row in np.asarray(rewards, np.float64):
        best = 0
        for j in range(1, len(row)):
            if row[j] > row[best]:
                best = j
        out.append(best)
    return out


def _rs_batch(fn, rewards, tokens, mask, what, K, selection, k=None):
    out = fn(_f32(rewards), jnp.asarray(tokens), _f32(mask), selection, k)
    require(isinstance(out, (tuple, list)) and len(out) == 4,
            f"{what} must return (prompt_idx, completion_idx, batch_tokens, loss_mask), got "
            f"{type(out).__name__}")
    T = tokens.shape[2]
    p = expect_dtype(expect_shape(out[0], (K,), what + " prompt_idx"), "i", what + " prompt_idx")
    c = expect_dtype(expect_shape(out[1], (K,), what + " completion_idx"), "i",
                     what + " completion_idx")
    return p, c, expect_shape(out[2], (K, T), what + " batch_tokens"), expect_shape(
        out[3], (K, T), what + " loss_mask")


def _expect_batch(p, c, got_tokens, got_mask, tokens, starts, lengths, what):
    """The rows are the selected sequences and the loss mask is 1 exactly on their completion."""
    require(np.all((p >= 0) & (p < tokens.shape[0]) & (c >= 0) & (c < tokens.shape[1])),
            f"{what}: indices out of range")
    T = tokens.shape[2]
    want_mask = np.zeros((len(p), T))
    for r, (i, j) in enumerate(zip(p.tolist(), c.tolist())):
        s, n = int(starts[i]), int(lengths[i, j])
        want_mask[r, s:s + n] = 1.0
    expect_close(got_tokens, tokens[p, c], what + " batch_tokens (row r is the sampled sequence "
                 "tokens[prompt_idx[r], completion_idx[r]], prompt included)", atol=0)
    expect_close(got_mask, want_mask, what + " loss_mask (1 exactly on the selected completion's "
                 "tokens: the prompt and the padding are not trained on)", atol=0)


def rejection_sampling_batch(fn):
    B, N = BOOK_R.shape
    tokens, mask, starts, lengths = _sampled(B, N)

    what = "rejection_sampling_batch(the book's R, eq. 117, 'per_prompt')"
    p, c, got_tokens, got_mask = _rs_batch(fn, BOOK_R, tokens, mask, what, B, "per_prompt")
    expect_close(p, np.arange(B), what + " prompt_idx (one row per prompt, in prompt order)",
                 atol=0)
    expect_close(c, PER_PROMPT_EQ_120, what + " completion_idx (eq. 120: the argmax of each "
                 "ROW, 0-based)", atol=0)
    _expect_batch(p, c, got_tokens, got_mask, tokens, starts, lengths, what)

    what = "rejection_sampling_batch(the book's R, 'top_k', k=5)"
    p, c, got_tokens, got_mask = _rs_batch(fn, BOOK_R, tokens, mask, what, 5, "top_k", 5)
    flat = p * N + c
    expect(flat.tolist() == BOOK_S5,
           f"{what} keeps flat indices {flat.tolist()}, expected eq. 123's {BOOK_S5}: the 5 "
           "largest rewards of the whole matrix, best first (not eq. 116's ascending argsort)")
    _expect_batch(p, c, got_tokens, got_mask, tokens, starts, lengths, what)
    what = "rejection_sampling_batch(the book's R, 'top_k', k=None)"
    p, c, _, _ = _rs_batch(fn, BOOK_R, tokens, mask, what, B, "top_k")
    expect((p * N + c).tolist() == BOOK_S5, f"{what} must keep the top B = {B} pairs, "
           f"{BOOK_S5}, got flat indices {(p * N + c).tolist()}")

    # random rewards with ties, more prompts than completions
    rng = np.random.default_rng(13)
    B, N = 6, 3
    rewards = rng.integers(0, 4, (B, N)).astype(np.float64)
    tokens, mask, starts, lengths = _sampled(B, N, seed=14)
    what = f"rejection_sampling_batch(rewards [{B}, {N}] with ties, 'per_prompt')"
    p, c, got_tokens, got_mask = _rs_batch(fn, rewards, tokens, mask, what, B, "per_prompt")
    expect_close(c, per_prompt_oracle(rewards), what + " completion_idx (the best of each "
                 "prompt; among equal rewards the first)", atol=0)
    _expect_batch(p, c, got_tokens, got_mask, tokens, starts, lengths, what)
    what = f"rejection_sampling_batch(rewards [{B}, {N}] with ties, 'top_k', k=7)"
    p, c, got_tokens, got_mask = _rs_batch(fn, rewards, tokens, mask, what, 7, "top_k", 7)
    expect(list(zip(p.tolist(), c.tolist())) == top_k_oracle(rewards, 7),
           f"{what} keeps {list(zip(p.tolist(), c.tolist()))}, expected "
           f"{top_k_oracle(rewards, 7)} (best first; among equal rewards the lower flat index "
           "i * N + j first)")
    _expect_batch(p, c, got_tokens, got_mask, tokens, starts, lengths, what)
