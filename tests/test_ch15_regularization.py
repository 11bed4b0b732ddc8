"""Chapter 15's KL estimators (k1, k2, k3 of Schulman 2020), which chapters 6 and 8 use.

Expected values: the elementwise formulas, float64 series near zero, Monte-Carlo means over a
categorical pair accepted within a few standard errors (k1 and k3 unbiased, k2 biased), and
distrax's exact categorical KL (skipped when distrax is not installed). Finiteness and
gradients at extreme log-probabilities; the shape and name checks live with chapter 6's
argument-check table.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf_book import ch15_regularization as ch15


def f32(x):
    return jnp.asarray(np.asarray(x, np.float32))



def test_kl_estimators_are_schulmans_formulas():
    rng = np.random.default_rng(15)
    logp, ref = -rng.uniform(0, 5, (3, 4)), -rng.uniform(0, 5, (3, 4))
    log_r = ref - logp
    np.testing.assert_allclose(ch15.kl_k1(f32(logp), f32(ref)), -log_r, atol=1e-6)
    np.testing.assert_allclose(ch15.kl_k2(f32(logp), f32(ref)), 0.5 * log_r ** 2, rtol=1e-5)
    np.testing.assert_allclose(ch15.kl_k3(f32(logp), f32(ref)), np.exp(log_r) - 1 - log_r,
                               rtol=1e-5, atol=1e-6)
    for name in ch15.KL_ESTIMATORS:
        np.testing.assert_array_equal(ch15.kl_estimate(f32(logp), f32(ref), name),
                                      getattr(ch15, f"kl_{name}")(f32(logp), f32(ref)))


@settings(max_examples=60, deadline=None)
@given(st.floats(-19.9, 19.9), st.floats(-5.0, 0.0))
def test_k3_is_non_negative_and_exact_within_the_clamp(log_r, ref):
    with jax.enable_x64(True):
        logp = ref - log_r
        got = float(ch15.kl_k3(jnp.float64(logp), jnp.float64(ref)))
    x = ref - logp  # the log-ratio the function sees, in float64
    exact = (sum(x ** n / math.factorial(n) for n in range(2, 12)) if abs(x) < 1e-2
             else math.expm1(x) - x)
    assert got >= 0.0
    # within a few ulps of x (expm1(x) - x cancels to ~x^2/2) and of the result
    assert abs(got - exact) <= 4 * abs(x) * 2.0 ** -52 + 1e-14 * exact


@pytest.mark.parametrize("x", [1e-7, -1e-6, 3e-5, -1e-4, 1e-3, -1e-2, 0.1])
def test_k3_is_accurate_near_zero_in_float32(x):
    """For nearby models ``r - 1 - log r`` cancels. With expm1 the float32 error of k3 stays
    within about one ulp of the log-ratio ``x`` (compared with the float64 series x^2/2 +
    x^3/6 + ...), where ``exp(x) - 1 - x`` is off by up to an ulp of 1. (Relative to k3 itself,
    which is ~x^2/2, that is still coarse below |x| ~ 1e-4: at x = 1.2e-7 k3 comes out 0.)"""
    logp = np.float32(-1.0)
    ref = np.float32(logp + np.float32(x))
    x32 = float(np.float64(ref) - np.float64(logp))  # the log-ratio float32 can represent
    series = sum(x32 ** n / math.factorial(n) for n in range(2, 9))
    got = float(ch15.kl_k3(jnp.float32(logp), jnp.float32(ref)))
    bound = 2 * abs(x32) * 2.0 ** -23
    assert got >= 0.0
    assert abs(got - series) <= bound
    naive = float(np.exp(np.float32(x32)) - np.float32(1) - np.float32(x32))
    if abs(x) <= 1e-4:
        assert abs(naive - series) > bound
    if abs(x) >= 1e-3:
        assert got == pytest.approx(series, rel=1e-4)


def test_k3_is_not_clamped_where_the_policy_likes_a_token_more_than_the_reference():
    """Only log r > 20 is clamped (expm1 would overflow there); for log r = -30 k3 is the exact
    e^-30 - 1 + 30 and its gradient still pulls log pi down (about +1)."""
    value, grad = jax.value_and_grad(lambda lp: ch15.kl_k3(lp, jnp.float32(-30.0)))(
        jnp.float32(0.0))
    assert float(value) == pytest.approx(29.0, rel=1e-6)
    assert float(grad) == pytest.approx(1.0, rel=1e-6)


def test_k3_stays_finite_beyond_the_clamp():
    logp = f32([-1e4, 0.0, -3e4, -25.0])
    ref = f32([0.0, -1e4, -2e4, 0.0])
    for estimator in ch15.KL_ESTIMATORS:
        assert np.all(np.isfinite(np.asarray(ch15.kl_estimate(logp, ref, estimator))))
        grad = jax.grad(lambda lp: jnp.sum(ch15.kl_estimate(lp, ref, estimator)))(logp)
        assert np.all(np.isfinite(np.asarray(grad)))


def _categorical_pair():
    logits_p = np.array([2.0, 1.0, 0.5, 0.0, -1.0, -2.0])
    logits_q = np.array([0.0, 0.5, 1.0, -0.5, 0.5, -1.0])
    log_p = logits_p - np.log(np.exp(logits_p).sum())
    log_q = logits_q - np.log(np.exp(logits_q).sum())
    return logits_p, logits_q, log_p, log_q


def test_k1_and_k3_are_unbiased_and_k2_is_biased_monte_carlo():
    _, _, log_p, log_q = _categorical_pair()
    p = np.exp(log_p)
    exact = float(np.sum(p * (log_p - log_q)))                        # KL(pi || pi_ref) = 0.6343
    k2_mean = float(np.sum(p * 0.5 * (log_q - log_p) ** 2))           # 0.7519
    n = 100_000
    idx = np.random.default_rng(16).choice(len(p), size=n, p=p)      # samples from pi
    logp, ref = f32(log_p[idx]), f32(log_q[idx])
    est = {k: np.asarray(ch15.kl_estimate(logp, ref, k), np.float64) for k in ch15.KL_ESTIMATORS}
    se = {k: v.std() / math.sqrt(n) for k, v in est.items()}
    assert abs(est["k1"].mean() - exact) < 4 * se["k1"]
    assert abs(est["k3"].mean() - exact) < 4 * se["k3"]
    assert abs(est["k2"].mean() - k2_mean) < 4 * se["k2"]
    assert abs(est["k2"].mean() - exact) > 20 * se["k2"]              # biased
    assert est["k3"].min() >= 0 and est["k1"].min() < 0               # k1 goes negative
    assert est["k3"].std() < est["k1"].std()                          # k3: lower variance here


def test_exact_kl_agrees_with_distrax():
    distrax = pytest.importorskip("distrax")
    logits_p, logits_q, log_p, log_q = _categorical_pair()
    with jax.enable_x64(True):
        kl = distrax.Categorical(logits=jnp.asarray(logits_p)).kl_divergence(
            distrax.Categorical(logits=jnp.asarray(logits_q)))
        assert float(kl) == pytest.approx(float(np.sum(np.exp(log_p) * (log_p - log_q))),
                                          rel=1e-12)
        # the mean of k1 and of k3 under pi, summed exactly over the categories, is the KL
        p = jnp.exp(jnp.asarray(log_p))
        for estimator in ("k1", "k3"):
            est = ch15.kl_estimate(jnp.asarray(log_p), jnp.asarray(log_q), estimator)
            assert float(jnp.sum(p * est)) == pytest.approx(float(kl), rel=1e-12)
