"""Grading checks for chapter 15 (regularisation).

Oracles: worked numbers (``k3`` at ``log r = 1`` is
``e - 2 = 0.71828``; at ``log r = 1e-6`` it is ``~5e-13 > 0`` in float32, which the naive
``(exp(lr) - 1) - lr`` gets wrong); plain float64 NumPy written from the equations (Schulman's
``k3 = (r - 1) - log r``; ``KL(p || q) = sum_v p_v (log p_v - log q_v)`` over the vocabulary,
i.e. ``scipy.special.rel_entr`` summed); Monte Carlo with standard-error tolerances (``k3`` is
unbiased for ``KL(pi || pi_ref)`` on samples of ``pi``); and invariants: ``k3 >= 0``, the KL is
0 between equal distributions and invariant to a constant added to the logits, forward differs
from reverse on an asymmetric pair, extreme logits stay finite, ``jit`` agrees with eager.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_book.textbook.checks import (as_array, expect, expect_close, expect_finite, expect_shape,
                                       grad_of_sum, jit, require)


def _f32(x) -> jax.Array:
    return jnp.asarray(np.asarray(x, np.float32))


def _call(fn, what, shape, *args, **kwargs) -> np.ndarray:
    out = expect_shape(fn(*args, **kwargs), shape, what)
    return expect_finite(out, what)


def log_softmax64(z) -> np.ndarray:
    z = np.asarray(z, np.float64)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def kl64(logits_p, logits_q) -> np.ndarray:
    """Eq. 128 in float64: ``sum_v p_v (log p_v - log q_v)`` over the last axis, with
    ``0 log 0 = 0`` (a category with ``p_v = 0`` adds nothing)."""
    lp, lq = log_softmax64(logits_p), log_softmax64(logits_q)
    p = np.exp(lp)
    with np.errstate(invalid="ignore"):
        return np.where(p > 0, p * (lp - lq), 0.0).sum(axis=-1)


# ----------------------------------------------------------------------------------------------
# 15.1 Schulman's k3


def kl_k3(fn):
    what = "kl_k3(logp=[0.0], ref_logp=[1.0])"
    expect_close(_call(fn, what, (1,), _f32([0.0]), _f32([1.0])), [math.e - 2],
                 what + " (log r = ref_logp - logp = 1, so k3 = (e - 1) - 1 = e - 2 = 0.71828; "
                 "Schulman 2020)", atol=1e-6)
    what = "kl_k3(logp=[0.0], ref_logp=[-1.0])"
    expect_close(_call(fn, what, (1,), _f32([0.0]), _f32([-1.0])), [math.exp(-1)],
                 what + " (log r = -1: k3 = (1/e - 1) + 1 = 1/e)", atol=1e-6)

    # Nearby models: log r = 1e-6 in float32. k3 = lr^2/2 + ... ~ 5e-13 and must be > 0; the
    # naive (exp(lr) - 1) - lr cancels catastrophically in float32 (use expm1).
    ref = _f32([1e-6])
    lr = float(np.asarray(ref, np.float64)[0])
    out = _call(fn, "kl_k3(logp=[0], ref_logp=[1e-6]) in float32", (1,), _f32([0.0]), ref)
    expect(out[0] > 0, f"kl_k3 at log r = 1e-6 returned {out[0]:.3g}, expected ~{lr**2 / 2:.3g} "
           "> 0: (exp(lr) - 1) - lr loses every digit in float32; write expm1(lr) - lr")
    expect_close(out, [lr**2 / 2], "kl_k3 at log r = 1e-6 (k3 ~ lr^2 / 2 for small lr; float32 "
                 "resolves expm1(1e-6) to about 1e-13, hence the loose tolerance)",
                 atol=0, rtol=0.25)

    rng = np.random.default_rng(0)
    logp = rng.normal(-3.0, 1.5, (4, 7))
    ref_logp = logp + rng.normal(0.0, 1.0, (4, 7))
    lr64 = ref_logp - logp
    what = "kl_k3 on random [4, 7] log-probs"
    out = _call(fn, what, (4, 7), _f32(logp), _f32(ref_logp))
    expect_close(out, np.expm1(lr64) - lr64,
                 what + " (elementwise (r - 1) - log r with log r = ref_logp - logp: the sign "
                 "of the log-ratio is reference minus policy)", atol=1e-5, rtol=1e-5)
    expect(bool((out >= 0).all()), "kl_k3 must be >= 0 everywhere (e^x >= 1 + x); got "
           f"{out.min():.3g}")
    jitted = as_array(jit(fn)(_f32(logp), _f32(ref_logp)), "jax.jit(kl_k3)")
    expect_close(jitted, out, "jax.jit(kl_k3) against the eager result", atol=1e-6, rtol=1e-6)

    # Extreme logits: finite, and for a very negative log r, k3 = -1 - log r + e^{log r}.
    # Checked entry by entry, not with _call: its "not finite" would pre-empt the clamp's hint
    # (e^100 overflows float32 to inf, which is what an unclamped k3 returns at log r = +100).
    what = "kl_k3(logp=[0, 0], ref_logp=[-100, 100])"
    out = expect_shape(fn(_f32([0.0, 0.0]), _f32([-100.0, 100.0])), (2,), what)
    expect_close(out[0], 99.0, "kl_k3 at log r = -100 (e^-100 - 1 + 100 = 99)", atol=1e-4)
    require(bool(np.isfinite(out[1])) and out[1] > 1e6,
            f"kl_k3 at log r = +100 returned {out[1]:.3g}: expected a large finite value. "
            "e^100 overflows float32 to inf; clamp the log-ratio from above (the library uses "
            "20: e^20 - 21 = 4.85e8) before exponentiating")

    # Monte Carlo: on samples of pi, k3 averages to KL(pi || pi_ref) (unbiased).
    V, n = 50, 100_000
    z, zr = rng.normal(size=V), rng.normal(size=V)
    lp, lq = log_softmax64(z), log_softmax64(zr)
    exact = float((np.exp(lp) * (lp - lq)).sum())
    y = rng.choice(V, size=n, p=np.exp(lp))
    k = np.asarray(as_array(fn(_f32(lp[y]), _f32(lq[y])), "kl_k3 on samples"), np.float64)
    se = k.std() / math.sqrt(n)
    expect(abs(k.mean() - exact) < 5 * se + 1e-6,
           f"the mean of kl_k3 over {n} samples of pi is {k.mean():.5f} +- {se:.5f}, but "
           f"KL(pi || pi_ref) = {exact:.5f} by enumeration: k3 is unbiased")


# ----------------------------------------------------------------------------------------------
# 15.2 The exact KL over the vocabulary (eq. 128)


def exact_kl(fn):
    p, q = np.array([0.7, 0.2, 0.1]), np.array([0.4, 0.35, 0.25])
    what = "exact_kl(log [0.7, 0.2, 0.1], log [0.4, 0.35, 0.25])"
    expect_close(_call(fn, what, (), _f32(np.log(p)), _f32(np.log(q))),
                 float(np.sum(p * np.log(p / q))),
                 what + " (eq. 128: sum_v p_v log(p_v / q_v), the first argument's "
                 "distribution weighting the sum)", atol=1e-6)
    what = "exact_kl(log [0.4, 0.35, 0.25], log [0.7, 0.2, 0.1])"
    expect_close(_call(fn, what, (), _f32(np.log(q)), _f32(np.log(p))),
                 float(np.sum(q * np.log(q / p))),
                 what + " (the other direction: the KL is not symmetric)", atol=1e-6)

    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 2, (3, 5, 11)), rng.normal(0, 2, (3, 5, 11))
    what = "exact_kl(logits [3, 5, 11], ref_logits [3, 5, 11])"
    out = _call(fn, what, (3, 5), _f32(a), _f32(b))
    expect_close(out, kl64(a, b), what + " (softmax both over the LAST axis, then sum_v p_v "
                 "(log p_v - log q_v); takes logits, not probabilities)", atol=1e-5, rtol=1e-5)
    expect(bool((out >= -1e-6).all()), f"exact_kl must be >= 0 (Gibbs); got {out.min():.3g}")
    same = _call(fn, "exact_kl(a, a)", (3, 5), _f32(a), _f32(a))
    expect_close(same, np.zeros((3, 5)), "exact_kl of a distribution with itself", atol=1e-6)
    shifted = _call(fn, "exact_kl(a + 7, b - 3)", (3, 5), _f32(a + 7.0), _f32(b - 3.0))
    expect_close(shifted, out, "exact_kl with a constant added to each row's logits (softmax "
                 "is shift-invariant)", atol=1e-5, rtol=1e-5)

    # Extreme logits: a row of +-1e4 must stay finite (log_softmax, never log(softmax)).
    big = np.array([[1e4, -1e4, 0.0, 5e3]])
    ref = np.array([[0.0, 0.0, 0.0, 0.0]])
    what = "exact_kl([[1e4, -1e4, 0, 5e3]], zeros)"
    out = _call(fn, what, (1,), _f32(big), _f32(ref))
    expect_close(out, [math.log(4)], what + " (p is one-hot on token 0, q uniform over 4: "
                 "KL = log 4; compute with log_softmax, and let p_v = 0 contribute 0)", atol=1e-4)
    g = as_array(grad_of_sum(fn)(_f32(big), _f32(ref)), "grad of exact_kl")
    expect(bool(np.isfinite(g).all()), "the gradient of exact_kl at logits of +-1e4 is not "
           "finite (a 0 * log 0 or -inf - -inf reached the sum)")

    # Monte Carlo: the mean log-ratio of samples from p is KL(p || q) (eq. 129).
    V, n = 30, 100_000
    za, zb = rng.normal(size=V), rng.normal(size=V)
    lp, lq = log_softmax64(za), log_softmax64(zb)
    y = rng.choice(V, size=n, p=np.exp(lp))
    k1 = lp[y] - lq[y]
    se = k1.std() / math.sqrt(n)
    value = float(as_array(fn(_f32(za), _f32(zb)), "exact_kl"))
    expect(abs(value - k1.mean()) < 5 * se, f"exact_kl = {value:.5f}, but the mean log-ratio "
           f"of {n} samples of p is {k1.mean():.5f} +- {se:.5f} (eq. 129: KL(p || q) = "
           "E_p[log p - log q])")


# ----------------------------------------------------------------------------------------------
# 15.3 The sequence KL with a mask


def sequence_kl(fn):
    rng = np.random.default_rng(2)
    N, T, V = 3, 6, 9
    logits, ref_logits = rng.normal(0, 1.5, (N, T, V)), rng.normal(0, 1.5, (N, T, V))
    mask = np.array([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]], np.float32)
    what = "sequence_kl(logits [3, 6, 9], ref_logits, mask [3, 6])"
    out = _call(fn, what, (N,), _f32(logits), _f32(ref_logits), _f32(mask))
    expected = (kl64(logits, ref_logits) * mask).sum(axis=1)
    expect_close(out, expected, what + " (sum over t of mask[n, t] * KL(pi(.|t) || "
                 "pi_ref(.|t)), the KL summed over the vocabulary at each position; the policy "
                 "first)", atol=1e-5, rtol=1e-5)
    expect_close(out[2], 0.0, "sequence_kl of a row with no completion token", atol=1e-7)

    # Positions off the mask never reach the result, whatever they hold.
    junk = np.where(mask[..., None] > 0, logits, rng.normal(0, 50, (N, T, V)))
    what = "sequence_kl with garbage logits where mask = 0"
    expect_close(_call(fn, what, (N,), _f32(junk), _f32(ref_logits), _f32(mask)), expected,
                 what + " (only masked positions count: prompt and padding were not sampled "
                 "from the policy)", atol=1e-5, rtol=1e-5)
    full = _call(fn, "sequence_kl with an all-ones mask", (N,), _f32(logits), _f32(ref_logits),
                 _f32(np.ones((N, T))))
    expect_close(full, kl64(logits, ref_logits).sum(axis=1),
                 "sequence_kl with an all-ones mask (every position)", atol=1e-5, rtol=1e-5)
    jitted = as_array(jit(fn)(_f32(logits), _f32(ref_logits), _f32(mask)), "jit")
    expect_close(jitted, out, "jax.jit(sequence_kl) against the eager result", atol=1e-6,
                 rtol=1e-6)
