"""Grading checks for chapter 0 (the mini GPT).

Oracles: plain NumPy loops in float64 written from the equations, ``optax``'s softmax
cross-entropy, the gradient identity ``d log softmax(z)_y / dz = onehot(y) - softmax(z)``, and
Monte-Carlo frequencies of the lecture notes' token policy {0.6, 0.3, 0.1}, accepted
within five standard errors.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlhf_book.data.toy import LESSON_TOKEN_POLICY
from rlhf_book.textbook.checks import (expect, expect_close, expect_dtype, expect_finite,
                                       expect_shape, grad_of_sum, jit, require)


# ----------------------------------------------------------------------------------------------
# 0.1 the causal mask


def causal_mask(fn):
    for t in (1, 2, 5, 9):
        what = f"causal_mask({t})"
        out = fn(t)
        expect_shape(out, (t, t), what)
        expect_dtype(out, "b", what)
        expected = np.array([[j <= i for j in range(t)] for i in range(t)])  # key j <= query i
        expect_close(out, expected, what)
    out = jit(fn, static_argnums=0)(6)
    expect_close(out, np.tril(np.ones((6, 6), bool)), "jax.jit(causal_mask, static_argnums=0)(6)")


# ----------------------------------------------------------------------------------------------
# 0.2 scaled dot-product attention


def attention_loop(q, k, v, mask):
    """softmax over the visible keys of q.k / sqrt(d), then the weighted sum of values; a query
    that sees no key averages all values uniformly (the library's documented convention)."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    N, H, S, d = q.shape
    K = k.shape[2]
    mask = np.broadcast_to(np.asarray(mask, bool), (N, H, S, K))
    out = np.zeros((N, H, S, d))
    for n in range(N):
        for h in range(H):
            for s in range(S):
                visible = [j for j in range(K) if mask[n, h, s, j]]
                if not visible:
                    out[n, h, s] = v[n, h].mean(axis=0)
                    continue
                scores = np.array([q[n, h, s] @ k[n, h, j] / math.sqrt(d) for j in visible])
                weights = np.exp(scores - scores.max())
                weights /= weights.sum()
                out[n, h, s] = sum(w * v[n, h, j] for w, j in zip(weights, visible))
    return out


def attend(fn):
    rng = np.random.default_rng(0)
    N, H, S, d = 2, 3, 5, 4

    def qkv(S, K, scale=1.0):
        return tuple(jnp.asarray(scale * rng.standard_normal(shape), jnp.float32)
                     for shape in ((N, H, S, d), (N, H, K, d), (N, H, K, d)))

    causal = np.tril(np.ones((S, S), bool))
    q, k, v = qkv(S, S)
    expect_close(fn(q, k, v, causal), attention_loop(q, k, v, causal),
                 "attend(q, k, v, causal [5, 5])", atol=1e-5)

    # queries and keys of different lengths; a mask with one value per (n, s, k)
    q, k, v = qkv(2, 5)
    mask = rng.random((N, 1, 2, 5)) < 0.6
    expect_close(fn(q, k, v, mask), attention_loop(q, k, v, mask),
                 "attend(q [2,3,2,4], k, v [2,3,5,4], random mask [2,1,2,5])", atol=1e-5)

    # a query row that may see nothing must not produce NaN
    q, k, v = qkv(S, S)
    blind = causal.copy()
    blind[0] = False
    out = fn(q, k, v, blind)
    expect_finite(out, "attend(...) with a fully masked query row")
    expect_close(out, attention_loop(q, k, v, blind),
                 "attend(...) with a fully masked query row (expected: the uniform average)",
                 atol=1e-5)

    # large scores: softmax must be computed stably
    q, k, v = qkv(S, S, scale=30.0)
    expect_close(fn(q, k, v, causal), attention_loop(q, k, v, causal),
                 "attend(...) with large scores (|q.k| ~ 1e3)", atol=1e-3, rtol=1e-4)
    expect_close(jit(fn)(q, k, v, causal), fn(q, k, v, causal), "jax.jit(attend)(...)",
                 atol=1e-5)


# ----------------------------------------------------------------------------------------------
# 0.3 log-probabilities from logits (minus the softmax cross-entropy)


def log_softmax_loop(logits, targets):
    logits = np.asarray(logits, np.float64)
    flat, flat_targets = logits.reshape(-1, logits.shape[-1]), np.asarray(targets).reshape(-1)
    out = np.empty(len(flat))
    for i, (row, y) in enumerate(zip(flat, flat_targets)):
        m = row.max()
        out[i] = row[y] - (m + math.log(sum(math.exp(z - m) for z in row)))
    return out.reshape(np.shape(targets))


def log_probs_from_logits(fn):
    rng = np.random.default_rng(0)
    logits = jnp.asarray(3 * rng.standard_normal((2, 3, 7)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 7, (2, 3)), jnp.int32)
    out = expect_shape(fn(logits, targets), (2, 3), "log_probs_from_logits(logits [2,3,7], targets [2,3])")
    expect_close(out, log_softmax_loop(logits, targets), "log_probs_from_logits(logits [2,3,7], ...)")
    expect_close(out, -optax.softmax_cross_entropy_with_integer_labels(logits, targets),
                 "log_probs_from_logits vs -optax.softmax_cross_entropy_with_integer_labels")

    one = fn(logits[0, 0], targets[0, 0])
    expect_shape(one, (), "log_probs_from_logits(logits [7], target [])")

    extreme = jnp.array([[1e4, -1e4, 0.0]] * 3, jnp.float32)
    which = jnp.array([0, 1, 2])
    out = expect_finite(fn(extreme, which), "log_probs_from_logits with logits +-1e4")
    expect_close(out, [0.0, -2e4, -1e4], "log_probs_from_logits([1e4, -1e4, 0], targets 0, 1, 2)",
                 atol=1e-3)

    grad = grad_of_sum(fn)(logits, targets)
    z = np.asarray(logits, np.float64)
    softmax = np.exp(z - z.max(-1, keepdims=True))
    softmax /= softmax.sum(-1, keepdims=True)
    expect_close(grad, np.eye(7)[np.asarray(targets)] - softmax,
                 "gradient of sum(log_probs_from_logits) (expected onehot - softmax)", atol=1e-5)
    expect_close(jit(fn)(logits, targets), log_softmax_loop(logits, targets),
                 "jax.jit(log_probs_from_logits)(...)")


# ----------------------------------------------------------------------------------------------
# 0.4 temperature and top-k sampling

TOKEN_POLICY = np.array(list(LESSON_TOKEN_POLICY.values()))  # {0.6, 0.3, 0.1}


def _frequencies_match(tokens, probs, what):
    n = len(tokens)
    freq = np.bincount(tokens, minlength=len(probs)) / n
    se = np.sqrt(probs * (1 - probs) / n)
    worst = int(np.argmax(np.abs(freq - probs) / np.maximum(se, 1e-12)))
    expect(np.all(np.abs(freq - probs) <= 5 * se + 1e-12),
           f"{what}: token {worst} drawn with frequency {freq[worst]:.4f} in {n} draws, "
           f"expected {probs[worst]:.4f} +- {5 * se[worst]:.4f} (5 standard errors)")


def sample_token(fn):
    n = 20_000
    logits = jnp.tile(jnp.log(jnp.asarray(TOKEN_POLICY, jnp.float32)), (n, 1))
    key = jax.random.PRNGKey(0)
    for tau in (1.0, 0.5, 2.0):
        what = f"sample_token(key, logits [{n}, 3], temperature={tau})"
        out = fn(key, logits, tau)
        require(isinstance(out, tuple) and len(out) == 2,
                f"{what} must return a pair (tokens, logprobs), got {type(out).__name__}")
        tokens, logprobs = out
        tokens = expect_dtype(expect_shape(tokens, (n,), what + " tokens"), "i", what + " tokens")
        logprobs = expect_shape(logprobs, (n,), what + " logprobs")
        p_tau = TOKEN_POLICY ** (1 / tau) / np.sum(TOKEN_POLICY ** (1 / tau))
        _frequencies_match(tokens, p_tau, what)
        expect_close(logprobs, np.log(p_tau)[tokens], what + " logprobs (log softmax(logits/tau))",
                     atol=1e-5)

    what = f"sample_token(key, logits [{n}, 3], temperature=1.0, top_k=2)"
    tokens, logprobs = fn(key, logits, 1.0, 2)
    tokens = np.asarray(tokens)
    _frequencies_match(tokens, np.array([2 / 3, 1 / 3, 0.0]), what)
    expect_close(logprobs, np.log(TOKEN_POLICY)[tokens],
                 what + " logprobs (expected before the top-k cut)", atol=1e-5)

    rng = np.random.default_rng(0)
    random_logits = jnp.asarray(rng.standard_normal((8, 11)), jnp.float32)
    what = "sample_token(key, logits [8, 11], temperature=0)"
    tokens, logprobs = fn(key, random_logits, 0.0)
    best = np.argmax(np.asarray(random_logits), axis=-1)
    expect_close(tokens, best, what + " (expected the argmax)")
    expect_close(logprobs, log_softmax_loop(random_logits, best), what + " logprobs (at tau = 1)")

    jitted = jit(fn, static_argnums=3)
    for tau in (0.7, 0.0):
        what = f"jax.jit(sample_token)(key, logits, temperature={tau} as a traced array)"
        tokens, logprobs = jitted(key, random_logits, jnp.float32(tau), 3)
        eager_tokens, eager_logprobs = fn(key, random_logits, tau, 3)
        expect_close(tokens, eager_tokens, what + " tokens vs eager")
        expect_close(logprobs, eager_logprobs, what + " logprobs vs eager", atol=1e-5)
