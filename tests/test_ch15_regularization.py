"""Chapter 15 (regularisation): the exact KL and Schulman's estimators k1, k2, k3 (which
chapters 6 and 8 use), the book's §15.1.2 snippet done right, the gradient each estimator
gives in the reward and in the loss, PPO-ptx, DPO + NLL and the margin losses.

Expected values come from formulas written here in float64 NumPy (eq. 128 as a loop, the
snippet as a loop, the closed-form gradients of both KLs, the Gaussian moments of Schulman 2020's example),
central finite differences, enumeration of every outcome, Monte Carlo accepted within four
standard errors (k1 and k3 unbiased, k2 biased; Schulman's table), independent libraries
(distrax, scipy, torch -- skipped when absent), chapters 5 and 8's losses, and math
(non-negativity, the chain rule of the KL, the monotonicity of a penalised optimum).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf_book import ch15_regularization as ch15
from rlhf_book.textbook.checks.ch15_regularization import kl64 as np_kl
from rlhf_book.textbook.checks.ch15_regularization import log_softmax64 as np_log_softmax


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
    """Measured (seed 16, 1e5 samples; mean +- standard error, per-sample std): exact KL
    0.6343; k1 0.6312 +- 0.0033 (std 1.05), k3 0.6299 +- 0.0023 (std 0.73), k2 0.7480 +-
    0.0017 (std 0.53; its exact mean 0.7519), 67 standard errors above the KL."""
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


# ----------------------------------------------------------------------------------------------
# Helpers written here from the equations (float64 NumPy), independent of the module


def central_difference(f, x, eps=1e-6):
    x = np.asarray(x, np.float64)
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[i] = eps
        grad[i] = (f(x + step) - f(x - step)) / (2 * eps)
    return grad


def random_logits(seed, shape, scale=1.5):
    return np.random.default_rng(seed).normal(size=shape) * scale


# ----------------------------------------------------------------------------------------------
# The estimators elementwise: derivatives, non-negativity and accuracy near zero


def test_estimator_derivatives_with_respect_to_logp():
    """d k1 / d logp = 1, d k2 / d logp = logp - ref = -log r, d k3 / d logp = 1 - r."""
    logp = np.array([-0.3, -2.0, -5.0, -0.01])
    ref = np.array([-1.0, -0.5, -5.0, -3.0])
    log_r = ref - logp
    expected = {"k1": np.ones(4), "k2": -log_r, "k3": 1.0 - np.exp(log_r)}
    with jax.enable_x64(True):
        for k, want in expected.items():
            got = jax.vmap(jax.grad(lambda lp, rf: ch15.kl_estimate(lp, rf, k)))(
                jnp.asarray(logp), jnp.asarray(ref))
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12, atol=1e-15)


@settings(max_examples=100, deadline=None)
@given(st.floats(-1e4, 0.0, width=32), st.floats(-1e4, 0.0, width=32))
def test_k3_is_non_negative_and_finite_everywhere_in_float32(logp, ref):
    value = float(ch15.kl_k3(jnp.float32(logp), jnp.float32(ref)))
    assert math.isfinite(value) and value >= 0.0
    grad = float(jax.grad(lambda lp: ch15.kl_k3(lp, jnp.float32(ref)))(jnp.float32(logp)))
    assert math.isfinite(grad)


@pytest.mark.parametrize("x", [1e-8, -1e-8, 3e-8, -2.5e-7])
def test_k3_at_log_ratios_near_1e_minus_8_matches_the_float64_series(x):
    """k3(x) = x^2/2 + x^3/6 + x^4/24 + ... ~ 5e-17 at x = 1e-8. With expm1 the float64 result
    is within 1e-7 relative (measured 1.4e-8 at x = 1e-8); the naive (exp(x) - 1) - x is off by
    about an ulp of 1 (2e-16): 220 % at x = 1e-8, 7.5 % at 3e-8, 0.075 % at -2.5e-7."""
    series = x ** 2 / 2 + x ** 3 / 6 + x ** 4 / 24
    with jax.enable_x64(True):
        got = float(ch15.kl_k3(jnp.float64(0.0), jnp.float64(x)))   # log r = x - 0 exactly
    assert got == pytest.approx(series, rel=1e-7)
    naive = (np.exp(np.float64(x)) - 1.0) - x
    assert abs(naive - series) > 5e-4 * series


# ----------------------------------------------------------------------------------------------
# Schulman's table (2020): q = N(0, 1) sampled (the policy), p = N(mu, 1) the reference


# Schulman (2020), "Approximating KL divergence": bias/true and std/true for mu = 0.1 and 1.
SCHULMAN_TABLE = {
    0.1: {"k1": (0.0, 20.0), "k2": (0.002, 1.42), "k3": (0.0, 1.42)},
    1.0: {"k1": (0.0, 2.0), "k2": (0.25, 1.73), "k3": (0.0, 1.7)},
}


def gaussian_moments(mu):
    """Closed forms with log r = mu x - mu^2 / 2, x ~ N(0, 1), true KL = mu^2 / 2 (derived with
    u = log r ~ N(-mu^2/2, mu^2)): E[k1] = mu^2/2, sd(k1) = mu; E[k2] = mu^2/2 + mu^4/8,
    sd(k2) = mu^2 sqrt(2 + mu^2) / 2 (Var u^2 = 2 s^4 + 4 m^2 s^2); E[k3] = mu^2/2 (E e^u = 1),
    Var(k3) = Var(e^u) + Var(u) - 2 Cov(e^u, u) = (e^{mu^2} - 1) + mu^2 - 2 mu^2."""
    true = mu ** 2 / 2
    return true, {"k1": (0.0, mu / true),
                  "k2": (mu ** 4 / 8 / true, mu ** 2 * math.sqrt(2 + mu ** 2) / 2 / true),
                  "k3": (0.0, math.sqrt(math.expm1(mu ** 2) - mu ** 2) / true)}


def test_schulman_table_by_monte_carlo():
    """2e6 samples; standard errors from 40 batches of 50 000. Measured (seed 1501):

        mu   est  bias/true             std/true           Schulman
        0.1  k1   -0.0118 +- 0.0135     19.993 +- 0.009    0, 20
             k2    0.0017 +- 0.0009      1.4161 +- 0.0019  0.002, 1.42  (exact 0.0025, 1.4177)
             k3   -0.0008 +- 0.0009      1.4147 +- 0.0018  0, 1.42      (exact 1.4166)
        0.5  k1   -0.0024 +- 0.0027      3.9985 +- 0.0018  (exact 0, 4)
             k2    0.0615 +- 0.0010      1.4984 +- 0.0020  (exact 0.0625, 1.5000)
             k3   -0.0010 +- 0.0010      1.4726 +- 0.0033  (exact 0, 1.4757)
        1.0  k1   -0.0012 +- 0.0014      1.9993 +- 0.0009  0, 2
             k2    0.2487 +- 0.0012      1.7305 +- 0.0023  0.25, 1.73   (exact 1.7321)
             k3   -0.0013 +- 0.0011      1.6881 +- 0.0128  0, 1.7       (exact 1.6951)

    At mu = 0.1 k2's bias (exact 0.0025) is under 3 standard errors at this sample size; at
    mu = 0.5 and 1 it is 60 and 200 standard errors away from 0.
    """
    n, batches = 2_000_000, 40
    x = np.random.default_rng(1501).standard_normal(n)
    for mu in (0.1, 0.5, 1.0):
        logp = -0.5 * x ** 2                       # the shared -log(2 pi)/2 cancels in log r
        ref = -0.5 * (x - mu) ** 2
        true, exact = gaussian_moments(mu)
        with jax.enable_x64(True):
            est = {k: np.asarray(ch15.kl_estimate(jnp.asarray(logp), jnp.asarray(ref), k))
                   for k in ch15.KL_ESTIMATORS}
        for k, v in est.items():
            per_batch = v.reshape(batches, -1)
            bias, sd = (v.mean() - true) / true, v.std() / true
            se_bias = per_batch.mean(1).std(ddof=1) / math.sqrt(batches) / true
            se_sd = per_batch.std(1).std(ddof=1) / math.sqrt(batches) / true
            assert abs(bias - exact[k][0]) < 4 * se_bias, (mu, k, bias)
            assert abs(sd - exact[k][1]) < 4 * se_sd + 1e-9, (mu, k, sd)
            if mu in SCHULMAN_TABLE:                 # his printed digits, +- half a unit
                his_bias, his_sd = SCHULMAN_TABLE[mu][k]
                half_unit_bias = 0.0005 if his_bias == 0.002 else 0.005
                half_unit_sd = 0.5 if his_sd == 20.0 else (0.05 if his_sd in (2.0, 1.7) else 0.005)
                assert abs(bias - his_bias) < 4 * se_bias + half_unit_bias, (mu, k, bias)
                assert abs(sd - his_sd) < 4 * se_sd + half_unit_sd, (mu, k, sd)
        if mu >= 0.5:
            se = est["k2"].reshape(batches, -1).mean(1).std(ddof=1) / math.sqrt(batches)
            assert est["k2"].mean() - true > 20 * se     # k2 biased (upwards) for far-apart pairs
    # the closed forms against Schulman's table (2020)
    assert gaussian_moments(0.1)[1]["k2"][0] == pytest.approx(0.0025)
    assert gaussian_moments(1.0)[1]["k2"][1] == pytest.approx(math.sqrt(3))


# ----------------------------------------------------------------------------------------------
# §15.1, eq. 128: the exact KL


def test_exact_kl_is_eq_128_summed_in_numpy():
    lp, lq = random_logits(1, (3, 4, 7)), random_logits(2, (3, 4, 7))
    with jax.enable_x64(True):
        got = np.asarray(ch15.exact_kl(jnp.asarray(lp), jnp.asarray(lq)))
    np.testing.assert_allclose(got, np_kl(lp, lq), rtol=1e-12)
    got32 = np.asarray(ch15.exact_kl(f32(lp), f32(lq)))
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, np_kl(lp, lq), rtol=2e-5, atol=1e-6)


def test_exact_kl_agrees_with_scipy_rel_entr():
    special = pytest.importorskip("scipy.special")
    lp, lq = random_logits(3, (5, 6)), random_logits(4, (5, 6))
    p, q = np.exp(np_log_softmax(lp)), np.exp(np_log_softmax(lq))
    with jax.enable_x64(True):
        got = np.asarray(ch15.exact_kl(jnp.asarray(lp), jnp.asarray(lq)))
    np.testing.assert_allclose(got, special.rel_entr(p, q).sum(-1), rtol=1e-12)


def test_exact_kl_properties():
    lp, lq = random_logits(5, (4, 6)), random_logits(6, (4, 6))
    forward = np.asarray(ch15.exact_kl(f32(lq), f32(lp)))
    reverse = np.asarray(ch15.exact_kl(f32(lp), f32(lq)))
    assert np.all(reverse > 0) and np.all(forward > 0)
    assert np.all(np.abs(forward - reverse) > 1e-3)                     # not symmetric
    np.testing.assert_array_equal(ch15.exact_kl(f32(lp), f32(lp)), np.zeros(4))
    # shifting a row's logits by a constant leaves its distribution, hence the KL, unchanged
    np.testing.assert_allclose(ch15.exact_kl(f32(lp + 3.0), f32(lq - 7.0)), reverse, rtol=1e-5)
    # log-probabilities are valid logits
    np.testing.assert_allclose(ch15.exact_kl(f32(np_log_softmax(lp)), f32(lq)), reverse,
                               rtol=1e-5)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-30, 30), min_size=5, max_size=5),
       st.lists(st.floats(-30, 30), min_size=5, max_size=5))
def test_exact_kl_is_non_negative(a, b):
    with jax.enable_x64(True):
        assert float(ch15.exact_kl(jnp.asarray(a), jnp.asarray(b))) >= -1e-12


def test_exact_kl_is_finite_at_logits_of_1e4():
    """p = one-hot(0), q = one-hot(1) in float32: KL = log p(0) - log q(0) = 0 - (-1e4)."""
    a, b = f32([1e4, 0.0, -1e4]), f32([0.0, 1e4, -1e4])
    assert float(ch15.exact_kl(a, b)) == pytest.approx(1e4, rel=1e-6)
    assert float(ch15.exact_kl(b, a)) == pytest.approx(1e4, rel=1e-6)
    for fn in (lambda x: ch15.exact_kl(x, b), lambda x: ch15.exact_kl(b, x)):
        assert np.all(np.isfinite(np.asarray(jax.grad(fn)(a))))
    big = f32(1e4 * random_logits(7, (3, 5), 1.0))
    np.testing.assert_allclose(ch15.exact_kl(big, big[::-1]), np_kl(big, big[::-1]), rtol=1e-5)
    assert float(ch15.exact_kl(f32([1e4, -1e4]), f32([1e4, -1e4]))) == 0.0


def test_exact_kl_handles_impossible_tokens():
    """A logit of -inf (a token masked out of the vocabulary): 0 log 0 = 0, gradient finite;
    where q(v) = 0 < p(v) the KL is +inf (its value), not NaN."""
    ninf = -jnp.inf
    p_logits, q_logits = jnp.array([0.0, ninf, 1.0]), jnp.array([1.0, ninf, 0.0])
    expected = np_kl([0.0, 1.0], [1.0, 0.0])
    assert float(ch15.exact_kl(p_logits, q_logits)) == pytest.approx(float(expected), rel=1e-6)
    grad = jax.grad(lambda z: ch15.exact_kl(z, q_logits))(p_logits)
    assert np.all(np.isfinite(np.asarray(grad)))
    assert float(ch15.exact_kl(jnp.array([0.0, 1.0, 1.0]), q_logits)) == np.inf


def test_exact_kl_function_agrees_with_distrax():
    distrax = pytest.importorskip("distrax")
    lp, lq = random_logits(8, (4, 9)), random_logits(9, (4, 9))
    with jax.enable_x64(True):
        want = distrax.Categorical(logits=jnp.asarray(lp)).kl_divergence(
            distrax.Categorical(logits=jnp.asarray(lq)))
        got = ch15.exact_kl(jnp.asarray(lp), jnp.asarray(lq))
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# Sequences: the exact per-position KL and the sampled estimate, summed under a mask


def two_token_world(seed=11, V=3):
    """A two-token generation: y1 ~ softmax(l1), y2 ~ softmax(l2[y1]); the same for the
    reference. Returns per-sequence logits [V*V, 2, V], tokens [V*V, 2] (every sequence) and
    the sequence probabilities / log-ratios in float64."""
    rng = np.random.default_rng(seed)
    l1, l2 = rng.normal(size=V) * 1.5, rng.normal(size=(V, V)) * 1.5
    r1, r2 = rng.normal(size=V) * 1.5, rng.normal(size=(V, V)) * 1.5
    seqs = [(a, b) for a in range(V) for b in range(V)]
    logits = np.stack([np.stack([l1, l2[a]]) for a, _ in seqs])
    ref_logits = np.stack([np.stack([r1, r2[a]]) for a, _ in seqs])
    tokens = np.array(seqs)
    lp = np_log_softmax(logits)[np.arange(len(seqs))[:, None], np.arange(2)[None], tokens]
    lr = np_log_softmax(ref_logits)[np.arange(len(seqs))[:, None], np.arange(2)[None], tokens]
    return logits, ref_logits, tokens, lp, lr


def test_sequence_kl_by_enumeration_is_the_kl_of_whole_sequences():
    """The chain rule: E_{y ~ pi}[sum_t KL_t(y_<t)] = KL(pi(y) || pi_ref(y)) over the 9
    sequences; the sampled sums of k1 and k3 are unbiased for it, k2's is not."""
    logits, ref_logits, _, lp, lr = two_token_world()
    seq_p = np.exp(lp.sum(1))
    assert seq_p.sum() == pytest.approx(1.0)
    seq_kl = float(np.sum(seq_p * (lp.sum(1) - lr.sum(1))))
    mask = np.ones(lp.shape)
    with jax.enable_x64(True):
        exact = np.asarray(ch15.sequence_kl(jnp.asarray(logits), jnp.asarray(ref_logits), mask))
        assert float(np.sum(seq_p * exact)) == pytest.approx(seq_kl, rel=1e-12)
        for k in ch15.KL_ESTIMATORS:
            est = np.asarray(ch15.sequence_kl_estimate(jnp.asarray(lp), jnp.asarray(lr), mask, k))
            if k == "k2":   # its own mean: 1.2948 here, against the KL's 1.3077
                k2_mean = np.sum(seq_p * np.sum(0.5 * (lp - lr) ** 2, axis=1))
                assert float(np.sum(seq_p * est)) == pytest.approx(k2_mean, rel=1e-12)
                assert abs(k2_mean - seq_kl) > 1e-2
            else:
                assert float(np.sum(seq_p * est)) == pytest.approx(seq_kl, rel=1e-12)
        # per-token k3 summed differs from k3 of the sequence log-ratio, and both are unbiased
        k3_seq = np.asarray(ch15.kl_k3(jnp.asarray(lp.sum(1)), jnp.asarray(lr.sum(1))))
        k3_sum = np.asarray(ch15.sequence_kl_estimate(jnp.asarray(lp), jnp.asarray(lr), mask))
        assert np.max(np.abs(k3_seq - k3_sum)) > 0.1
        assert float(np.sum(seq_p * k3_seq)) == pytest.approx(seq_kl, rel=1e-12)


def test_sequence_kl_and_estimate_respect_the_mask():
    N, T, V = 3, 5, 4
    logits, ref_logits = random_logits(12, (N, T, V)), random_logits(13, (N, T, V))
    mask = np.array([[0, 1, 1, 1, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], np.float32)
    per_position = np_kl(logits, ref_logits)
    want = np.array([sum(per_position[n, t] for t in range(T) if mask[n, t]) for n in range(N)])
    got = ch15.sequence_kl(f32(logits), f32(ref_logits), mask)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert float(got[2]) == 0.0
    # garbage (even NaN) off the mask does not reach the result under jit; called eagerly, a NaN
    # anywhere is refused (the convention of rlhf_book.lm.checks: pad with 0)
    dirty = logits.copy()
    dirty[mask == 0] = np.nan
    np.testing.assert_array_equal(jax.jit(ch15.sequence_kl)(f32(dirty), f32(ref_logits), mask), got)
    with pytest.raises(ValueError, match="logits must hold numbers or -inf, got 28 NaN"):
        ch15.sequence_kl(f32(dirty), f32(ref_logits), mask)
    lp, lr = -random_logits(14, (N, T)) ** 2, -random_logits(15, (N, T)) ** 2
    for k in ch15.KL_ESTIMATORS:
        per_token = np.asarray(ch15.kl_estimate(f32(lp), f32(lr), k))
        want = np.where(mask > 0, per_token, 0).sum(1)
        lp_dirty = np.where(mask > 0, lp, -1e30)
        np.testing.assert_allclose(ch15.sequence_kl_estimate(f32(lp_dirty), f32(lr), mask, k),
                                   want, rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# §15.1.2 The book's snippet, done right, and its erratum


def book_snippet_numpy(logits, ref_logits, tokens, mask):
    """The snippet as a loop over positions with the mask fix: the model's logits at position
    t predict tokens[t + 1]; kl_approx sums log pi - log pi_ref over completion targets, kl_full
    sums the exact KL over the same positions."""
    N, T, _ = logits.shape
    lp, lr = np_log_softmax(logits), np_log_softmax(ref_logits)
    approx, full = np.zeros(N), np.zeros(N)
    for n in range(N):
        for t in range(T - 1):
            if mask[n, t + 1]:
                y = tokens[n, t + 1]
                approx[n] += lp[n, t, y] - lr[n, t, y]
                full[n] += np.sum(np.exp(lp[n, t]) * (lp[n, t] - lr[n, t]))
    return approx, full


def test_generation_kl_is_the_snippet_with_a_mask():
    N, T, V = 3, 6, 5
    logits, ref_logits = random_logits(21, (N, T, V)), random_logits(22, (N, T, V))
    tokens = np.random.default_rng(23).integers(0, V, (N, T))
    mask = np.array([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]])
    approx, full = book_snippet_numpy(logits, ref_logits, tokens, mask)
    with jax.enable_x64(True):
        out = ch15.generation_kl(jnp.asarray(logits), jnp.asarray(ref_logits), tokens, mask)
        np.testing.assert_allclose(np.asarray(out.sampled), approx, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(np.asarray(out.exact), full, rtol=1e-12, atol=1e-14)
        assert float(out.sampled[2]) == 0.0 and float(out.exact[2]) == 0.0
        k3 = ch15.generation_kl(jnp.asarray(logits), jnp.asarray(ref_logits), tokens, mask, "k3")
        assert np.all(np.asarray(k3.sampled) >= 0)
        np.testing.assert_array_equal(np.asarray(k3.exact), np.asarray(out.exact))
        # the reference is a constant
        g = jax.grad(lambda r: jnp.sum(ch15.generation_kl(jnp.asarray(logits), r, tokens,
                                                          mask).exact))(jnp.asarray(ref_logits))
        np.testing.assert_array_equal(np.asarray(g), 0.0)


def test_the_books_kl_div_call_is_nan_and_log_target_fixes_it():
    """Erratum (book §15.1.2): F.kl_div(ref_logprobs, logprobs, reduction='batchmean') is NaN;
    with log_target=True it is KL(pi || pi_ref) summed over positions over B -- the mean of
    the exact KL when every position counts; swapped, it is the forward KL."""
    B, T, V = 2, 4, 5
    logits, ref_logits = random_logits(31, (B, T, V)), random_logits(32, (B, T, V))
    tokens = np.random.default_rng(33).integers(0, V, (B, T))
    logprobs, ref_logprobs = f32(np_log_softmax(logits[:, :-1])), f32(np_log_softmax(ref_logits[:, :-1]))
    as_written = ch15.torch_kl_div(ref_logprobs, logprobs, reduction="batchmean")
    assert np.isnan(float(as_written))
    fixed = float(ch15.torch_kl_div(ref_logprobs, logprobs, "batchmean", log_target=True))
    ours = ch15.generation_kl(f32(logits), f32(ref_logits), tokens, np.ones((B, T)))
    reverse = np_kl(logits[:, :-1], ref_logits[:, :-1]).sum() / B
    assert fixed == pytest.approx(reverse, rel=1e-5)
    assert float(jnp.mean(ours.exact)) == pytest.approx(reverse, rel=1e-5)
    swapped = float(ch15.torch_kl_div(logprobs, ref_logprobs, "batchmean", log_target=True))
    assert swapped == pytest.approx(np_kl(ref_logits[:, :-1], logits[:, :-1]).sum() / B, rel=1e-5)
    assert abs(swapped - fixed) > 1e-2
    # with probabilities as the target (log_target=False) the call is right too
    probs = jnp.exp(logprobs)
    assert float(ch15.torch_kl_div(ref_logprobs, probs, "batchmean")) == pytest.approx(fixed,
                                                                                    rel=1e-5)
    # the other reductions
    none = np.asarray(ch15.torch_kl_div(ref_logprobs, logprobs, "none", log_target=True))
    assert none.shape == (B, T - 1, V)
    assert float(ch15.torch_kl_div(ref_logprobs, logprobs, "sum", True)) == pytest.approx(
        none.sum(), rel=1e-6)
    assert float(ch15.torch_kl_div(ref_logprobs, logprobs, "mean", True)) == pytest.approx(
        none.mean(), rel=1e-6)


def test_torch_kl_div_matches_pytorch():
    torch = pytest.importorskip("torch")
    a, b = np_log_softmax(random_logits(34, (3, 4))), np_log_softmax(random_logits(35, (3, 4)))
    for log_target in (False, True):
        target = b if log_target else np.exp(b)
        for reduction in ch15.TORCH_REDUCTIONS:
            want = torch.nn.functional.kl_div(torch.tensor(a), torch.tensor(target),
                                              reduction=reduction, log_target=log_target)
            with jax.enable_x64(True):
                got = ch15.torch_kl_div(jnp.asarray(a), jnp.asarray(target), reduction,
                                        log_target)
            np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=1e-10)
    want = torch.nn.functional.kl_div(torch.tensor(a), torch.tensor(b), reduction="batchmean")
    assert torch.isnan(want)


# ----------------------------------------------------------------------------------------------
# KL in the reward vs in the loss: the gradients, by enumeration


def closed_form_gradients(z, zr):
    """grad_z of KL(pi || pi_ref), of KL(pi_ref || pi) and of D2 = E_pi[d^2 / 2], from
    d pi_i / d z_j = pi_i (delta_ij - pi_j) (float64 NumPy)."""
    lp, lr = np_log_softmax(z), np_log_softmax(zr)
    p, q, d = np.exp(lp), np.exp(lr), lp - lr
    ev = lambda f: np.sum(p * f, axis=-1, keepdims=True)  # noqa: E731
    reverse = p * (d - ev(d))
    forward = p - q
    d2 = p * (0.5 * d ** 2 - ev(0.5 * d ** 2) + d - ev(d))
    return reverse, forward, d2


def test_kl_gradient_matches_closed_forms_and_finite_differences():
    z, zr = random_logits(41, (3, 6)), random_logits(42, (3, 6))
    reverse, forward, _ = closed_form_gradients(z, zr)
    with jax.enable_x64(True):
        got_rev = np.asarray(ch15.kl_gradient(jnp.asarray(z), jnp.asarray(zr)))
        got_fwd = np.asarray(ch15.kl_gradient(jnp.asarray(z), jnp.asarray(zr), "forward"))
    np.testing.assert_allclose(got_rev, reverse, atol=1e-13)
    np.testing.assert_allclose(got_fwd, forward, atol=1e-13)
    fd = central_difference(lambda x: float(np_kl(x, zr[0])), z[0])
    np.testing.assert_allclose(got_rev[0], fd, atol=1e-8)


def test_estimator_gradients_by_enumeration():
    """As a loss: E[grad k1] = 0, E[grad k2] = grad KL(pi || pi_ref), E[grad k3] = grad
    KL(pi_ref || pi). In the reward: k1 gives grad KL(pi || pi_ref), k2 grad D2 - grad KL,
    k3 grad KL(pi || pi_ref) - grad KL(pi_ref || pi). To machine precision, V = 6."""
    z, zr = random_logits(43, (4, 6)), random_logits(44, (4, 6))
    reverse, forward, d2 = closed_form_gradients(z, zr)
    loss_want = {"k1": np.zeros_like(z), "k2": reverse, "k3": forward}
    reward_want = {"k1": reverse, "k2": d2 - reverse, "k3": reverse - forward}
    with jax.enable_x64(True):
        for k in ch15.KL_ESTIMATORS:
            loss = np.asarray(ch15.estimator_loss_gradient(jnp.asarray(z), jnp.asarray(zr), k))
            reward = np.asarray(ch15.estimator_reward_gradient(jnp.asarray(z), jnp.asarray(zr),
                                                               k))
            np.testing.assert_allclose(loss, loss_want[k], atol=1e-13, err_msg=k)
            np.testing.assert_allclose(reward, reward_want[k], atol=1e-13, err_msg=k)
            # reward part + loss part = grad E_pi[k], by finite differences of E_pi[k]
            def expected_k(x, k=k):
                lp, lr = np_log_softmax(x), np_log_softmax(zr[0])
                log_r = lr - lp
                k_val = {"k1": -log_r, "k2": 0.5 * log_r ** 2, "k3": np.expm1(log_r) - log_r}[k]
                return float(np.sum(np.exp(lp) * k_val))
            np.testing.assert_allclose(loss[0] + reward[0], central_difference(expected_k, z[0]),
                                       atol=1e-8)
    assert np.max(np.abs(forward - reverse)) > 0.05   # the two KL gradients differ here


def test_estimator_loss_gradient_is_the_mean_of_sampled_gradients():
    """jax.grad of the mean of k over samples from pi (stop-gradient on the sampling) agrees
    with the enumeration within 4 standard errors, for each component."""
    z, zr = random_logits(45, 6), random_logits(46, 6)
    p = np.exp(np_log_softmax(z))
    ys = np.random.default_rng(47).choice(6, size=20_000, p=p)
    with jax.enable_x64(True):
        zj, ref_lp = jnp.asarray(z), jax.nn.log_softmax(jnp.asarray(zr))
        for k in ch15.KL_ESTIMATORS:
            def per_sample_loss(logits, y, k=k):
                logp = jax.nn.log_softmax(logits)[y]
                return ch15.kl_estimate(logp, ref_lp[y], k)
            grads = np.asarray(jax.vmap(jax.grad(per_sample_loss), (None, 0))(zj, jnp.asarray(ys)))
            mean_grad = np.asarray(jax.grad(lambda x: jnp.mean(jax.vmap(
                per_sample_loss, (None, 0))(x, jnp.asarray(ys))))(zj))
            np.testing.assert_allclose(mean_grad, grads.mean(0), atol=1e-12)
            se = grads.std(0, ddof=1) / math.sqrt(len(ys))
            want = np.asarray(ch15.estimator_loss_gradient(zj, jnp.asarray(zr), k))
            assert np.all(np.abs(grads.mean(0) - want) < 4 * se + 1e-12), k


def test_forward_and_reverse_kl_gradients_agree_to_first_order_near_the_reference():
    """||grad KL(pi||ref) - grad KL(ref||pi)|| = O(eps^2) while each gradient is O(eps): so
    k3 in the loss is nearly the right regulariser close to the reference."""
    zr, u = random_logits(48, 6), random_logits(49, 6)
    rel = []
    for eps in (1e-1, 1e-2, 1e-3):
        reverse, forward, _ = closed_form_gradients(zr + eps * u, zr)
        rel.append(np.linalg.norm(reverse - forward) / np.linalg.norm(reverse))
        with jax.enable_x64(True):
            k3 = np.asarray(ch15.estimator_loss_gradient(jnp.asarray(zr + eps * u),
                                                          jnp.asarray(zr), "k3"))
        np.testing.assert_allclose(k3, forward, atol=1e-15)
    assert rel[1] < rel[0] / 5 and rel[2] < rel[1] / 5     # relative gap shrinks like eps


def test_in_sequences_per_token_k2_in_the_loss_is_not_the_sequence_kl_gradient():
    """Two tokens, parameters (l1, l2): k1 of the whole sequence in the reward (REINFORCE)
    gives the gradient of the sequence KL; per-token k2 summed in the loss gives the gradient
    of sum_t E[KL_t] with the prefix distribution frozen, which is a different vector."""
    rng = np.random.default_rng(51)
    V = 3
    l1, l2 = rng.normal(size=V) * 1.5, rng.normal(size=(V, V)) * 1.5
    r1, r2 = rng.normal(size=V) * 1.5, rng.normal(size=(V, V)) * 1.5
    a, b = np.repeat(np.arange(V), V), np.tile(np.arange(V), V)     # the 9 sequences

    def token_logps(theta1, theta2, xp):
        ls = (lambda x: x - jax.nn.logsumexp(x, -1, keepdims=True)) if xp is jnp else np_log_softmax
        return ls(theta1)[a], ls(theta2)[a, b]

    def np_seq_kl(flat):
        t1, t2 = flat[:V], flat[V:].reshape(V, V)
        lp1, lp2 = token_logps(t1, t2, np)
        lr1, lr2 = token_logps(r1, r2, np)
        return float(np.sum(np.exp(lp1 + lp2) * (lp1 + lp2 - lr1 - lr2)))

    theta = np.concatenate([l1, l2.ravel()])
    true = central_difference(np_seq_kl, theta)
    p1 = np.exp(np_log_softmax(l1))

    def np_frozen_prefix(flat):                     # KL_1 + sum_y1 pi_0(y1) KL_2(y1)
        t1, t2 = flat[:V], flat[V:].reshape(V, V)
        return float(np_kl(t1, r1) + np.sum(p1 * np_kl(t2, r2)))

    frozen = central_difference(np_frozen_prefix, theta)
    with jax.enable_x64(True):
        lr1, lr2 = token_logps(jnp.asarray(r1), jnp.asarray(r2), jnp)

        def k1_in_reward(flat):
            lp1, lp2 = token_logps(flat[:V], flat[V:].reshape(V, V), jnp)
            seq = lp1 + lp2
            k1 = ch15.kl_k1(seq, lr1 + lr2)
            return jnp.sum(jax.lax.stop_gradient(jnp.exp(seq) * k1) * seq)

        def k2_in_loss(flat):
            lp1, lp2 = token_logps(flat[:V], flat[V:].reshape(V, V), jnp)
            w = jax.lax.stop_gradient(jnp.exp(lp1 + lp2))
            return jnp.sum(w * (ch15.kl_k2(lp1, lr1) + ch15.kl_k2(lp2, lr2)))

        g_reward = np.asarray(jax.grad(k1_in_reward)(jnp.asarray(theta)))
        g_loss = np.asarray(jax.grad(k2_in_loss)(jnp.asarray(theta)))
    np.testing.assert_allclose(g_reward, true, atol=1e-8)
    np.testing.assert_allclose(g_loss, frozen, atol=1e-8)
    assert np.max(np.abs(g_loss - true)) > 1e-2


# ----------------------------------------------------------------------------------------------
# §15.3.1 Pretraining gradients: PPO-ptx and DPO + NLL


def test_ppo_ptx_objective_and_loss():
    logp = np.array([-12.0, -30.5, -7.25])
    assert float(ch15.ppo_ptx_objective(0.8, f32(logp), 0.5)) == pytest.approx(
        0.8 + 0.5 * logp.mean(), rel=1e-6)
    assert float(ch15.ppo_ptx_objective(0.8, f32(logp), 0.0)) == pytest.approx(0.8)
    assert float(ch15.ptx_loss(-0.8, -logp.mean(), 0.5)) == pytest.approx(
        -float(ch15.ppo_ptx_objective(0.8, f32(logp), 0.5)), rel=1e-6)
    g = jax.grad(lambda a, b: ch15.ptx_loss(a, b, 2.5), argnums=(0, 1))(1.0, 3.0)
    assert (float(g[0]), float(g[1])) == (1.0, 2.5)


def test_ppo_ptx_gamma_keeps_the_pretraining_likelihood():
    """PPO-ptx (eq. 137) on a categorical toy: maximise E_pi[r] - beta KL(pi || pi_0) + gamma mean log pi(x)
    over documents x (tokens). The maximiser's pretraining log-likelihood is non-decreasing in
    gamma (compare the optimality of each maximiser at the other gamma) and its RL part
    non-increasing; gradient ascent to convergence shows both, strictly here."""
    reward = jnp.array([1.0, 0.0, 0.0, -1.0, 0.5])
    ref_logits = jnp.zeros(5)
    docs = jnp.array([1, 1, 2, 2, 2, 3, 4, 4])
    beta = 0.5

    def parts(z):
        rl = jnp.sum(jax.nn.softmax(z) * reward) - beta * ch15.exact_kl(z, ref_logits)
        return rl, jax.nn.log_softmax(z)[docs]

    def solve(gamma):
        def objective(z):
            rl, logp = parts(z)
            return ch15.ppo_ptx_objective(rl, logp, gamma)

        def step(z, _):
            return z + 0.5 * jax.grad(objective)(z), None
        z, _ = jax.lax.scan(step, ref_logits, None, length=4000)
        return z, jnp.max(jnp.abs(jax.grad(objective)(z)))

    gammas = jnp.array([0.0, 0.05, 0.2, 1.0])
    zs, residual = jax.jit(jax.vmap(solve))(gammas)
    assert float(jnp.max(residual)) < 1e-4
    rl, logp = jax.vmap(parts)(zs)
    pretrain = np.asarray(jnp.mean(logp, axis=1))
    assert np.all(np.diff(pretrain) > 1e-3), pretrain
    assert np.all(np.diff(np.asarray(rl)) < -1e-4), rl


def test_dpo_nll_loss():
    from rlhf_book.ch08_direct_alignment import losses as ch08
    rng = np.random.default_rng(61)
    pc, pr, rc, rr = (-rng.uniform(5, 40, 4) for _ in range(4))
    lengths = np.array([5, 12, 7, 30])
    beta, alpha = 0.2, 0.7
    h = (pc - pr) - (rc - rr)
    want = np.mean(np.log1p(np.exp(-beta * h)) - alpha * pc / lengths)
    got = ch15.dpo_nll_loss(f32(pc), f32(pr), f32(rc), f32(rr), lengths, beta, alpha)
    assert float(got) == pytest.approx(want, rel=1e-5)
    assert float(ch15.dpo_nll_loss(f32(pc), f32(pr), f32(rc), f32(rr), lengths, beta, 0.0)) == \
        pytest.approx(float(jnp.mean(ch08.dpo_loss(f32(pc), f32(pr), f32(rc), f32(rr), beta))),
                      rel=1e-6)
    # the NLL term adds -alpha / (N |c + y|) to the gradient of each chosen log-prob
    g = jax.grad(lambda x: ch15.dpo_nll_loss(x, f32(pr), f32(rc), f32(rr), lengths, beta,
                                             alpha))(f32(pc))
    g0 = jax.grad(lambda x: ch15.dpo_nll_loss(x, f32(pr), f32(rc), f32(rr), lengths, beta,
                                              0.0))(f32(pc))
    np.testing.assert_allclose(np.asarray(g - g0), -alpha / (4 * lengths), rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# §15.3.2 Margins


def test_margin_bt_loss():
    from rlhf_book import ch05_reward_models as ch05
    r_c, r_r = np.array([1.0, 0.2, -3.0, 4.0]), np.array([0.0, 0.5, -1.0, -4.0])
    m = np.array([3.0, 0.0, 1.0, 2.0 / 3.0])
    want = np.log1p(np.exp(-(r_c - r_r - m)))
    got = np.asarray(ch15.margin_bt_loss(f32(r_c), f32(r_r), f32(m)))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert float(np.mean(got)) == pytest.approx(
        float(ch05.bradley_terry_loss(f32(r_c), f32(r_r), f32(m))), rel=1e-6)
    no_margin = np.asarray(ch15.margin_bt_loss(f32(r_c), f32(r_r), 0.0))
    np.testing.assert_allclose(no_margin, np.log1p(np.exp(-(r_c - r_r))), rtol=1e-6)
    assert np.all(got[m > 0] > no_margin[m > 0])
    # the book's ch. 5 example: ratings 5 and 2 give m = 3; the gap must pass 3 to be "won"
    assert float(ch15.margin_bt_loss(f32([3.0]), f32([0.0]), 5.0 - 2.0)[0]) == \
        pytest.approx(math.log(2.0))
    extreme = ch15.margin_bt_loss(f32([-1e4, 1e4]), f32([1e4, -1e4]), 3.0)
    np.testing.assert_allclose(np.asarray(extreme), [2e4 + 3.0, 0.0], rtol=1e-6, atol=1e-30)
    assert ch15.LLAMA2_MARGINS["large"] == (3.0, 2.0, 1.0, 0.0)


def test_margin_dpo_loss():
    from rlhf_book.ch08_direct_alignment import losses as ch08
    rng = np.random.default_rng(71)
    pc, pr, rc, rr = (f32(-rng.uniform(5, 40, 5)) for _ in range(4))
    beta, m = 0.1, f32([0.0, 0.5, 1.0, 2.0, 3.0])
    assert float(ch15.margin_dpo_loss(pc, pr, rc, rr, 0.0, beta)) == pytest.approx(
        float(jnp.mean(ch08.dpo_loss(pc, pr, rc, rr, beta))), rel=1e-6)
    implicit_c, implicit_r = beta * (pc - rc), beta * (pr - rr)
    assert float(ch15.margin_dpo_loss(pc, pr, rc, rr, m, beta)) == pytest.approx(
        float(jnp.mean(ch15.margin_bt_loss(implicit_c, implicit_r, m))), rel=1e-5)


# ----------------------------------------------------------------------------------------------
# jit == eager, vmap == a loop


def _cases():
    rng = np.random.default_rng(81)
    L = lambda *s: f32(rng.normal(size=s) * 1.5)  # noqa: E731
    mask = f32(rng.integers(0, 2, (2, 4)))
    tokens = jnp.asarray(rng.integers(0, 5, (2, 4)), jnp.int32)
    pairs = [f32(-rng.uniform(5, 40, 3)) for _ in range(4)]
    return [
        ("exact_kl", ch15.exact_kl, (L(3, 5), L(3, 5))),
        ("sequence_kl", ch15.sequence_kl, (L(2, 4, 5), L(2, 4, 5), mask)),
        ("sequence_kl_estimate", lambda a, b, m: ch15.sequence_kl_estimate(a, b, m, "k3"),
         (L(2, 4), L(2, 4), mask)),
        ("generation_kl", lambda a, b, m: ch15.generation_kl(a, b, tokens, m),
         (L(2, 4, 5), L(2, 4, 5), mask)),
        ("torch_kl_div", lambda a, b: ch15.torch_kl_div(a, b, "batchmean", True),
         (L(2, 5), L(2, 5))),
        ("kl_gradient", ch15.kl_gradient, (L(3, 5), L(3, 5))),
        ("estimator_loss_gradient", ch15.estimator_loss_gradient, (L(3, 5), L(3, 5))),
        ("estimator_reward_gradient", ch15.estimator_reward_gradient, (L(3, 5), L(3, 5))),
        ("ppo_ptx_objective", lambda a, b: ch15.ppo_ptx_objective(a, b, 0.3),
         (f32(0.7), L(4))),
        ("ptx_loss", lambda a, b: ch15.ptx_loss(a, b, 0.3), (f32(0.7), f32(2.5))),
        ("dpo_nll_loss", lambda *x: ch15.dpo_nll_loss(*x, 0.1, 1.0),
         (*pairs, f32([3.0, 4.0, 9.0]))),
        ("margin_bt_loss", ch15.margin_bt_loss, (L(3), L(3), f32([0.0, 1.0, 2.0]))),
        ("margin_dpo_loss", lambda *x: ch15.margin_dpo_loss(*x, 0.1), (*pairs, f32(0.5))),
    ]


@pytest.mark.parametrize("name, fn, args", _cases(), ids=[c[0] for c in _cases()])
def test_jit_equals_eager_and_vmap_equals_a_loop(name, fn, args):
    eager = fn(*args)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                           eager, jax.jit(fn)(*args))
    other = [a * 0.5 - 0.25 if jnp.issubdtype(a.dtype, jnp.floating) and a.ndim else a
             for a in args]
    batched = jax.vmap(fn)(*[jnp.stack([a, b]) for a, b in zip(args, other)])
    for i, one in enumerate((args, other)):
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a[i], b, rtol=1e-5, atol=1e-6),
            batched, fn(*one))


# ----------------------------------------------------------------------------------------------
# Bad arguments


_L3 = jnp.ones((2, 3, 4))
_M = jnp.ones((2, 3))
_P = jnp.ones(3)
BAD_CALLS = [
    (lambda: ch15.exact_kl(jnp.ones((2, 3)), jnp.ones((2, 4))),
     r"logits_q must have the shape of logits_p \(2, 3\), got \(2, 4\)"),
    (lambda: ch15.exact_kl(["a"], ["b"]), r"logits_p must be an array of numbers"),
    (lambda: ch15.sequence_kl(_M, _M, _M), r"logits must have shape \[N, T, V\], got shape \(2, 3\)"),
    (lambda: ch15.sequence_kl(_L3, jnp.ones((2, 3, 5)), _M), r"ref_logits must have the shape of logits"),
    (lambda: ch15.sequence_kl(_L3, _L3, jnp.ones((2, 4))), r"mask must have the shape of \[N, T\] \(2, 3\), got \(2, 4\)"),
    (lambda: ch15.sequence_kl_estimate(_M, _M, jnp.ones(3)), r"mask must have the shape of logp \[N, T\]"),
    (lambda: ch15.sequence_kl_estimate(jnp.ones((2, 4)), _M, _M), r"ref_logp must have the shape of logp"),
    (lambda: ch15.sequence_kl_estimate(_M, _M, _M, "k4"), r"estimator must be one of"),
    (lambda: ch15.generation_kl(_L3, _L3, jnp.zeros(3, int), _M), r"tokens must have shape \[N, T\]"),
    (lambda: ch15.generation_kl(_L3, _L3, jnp.zeros((2, 3), int), jnp.ones((3, 3))), r"mask must have the shape"),
    (lambda: ch15.generation_kl(_L3, _L3[:1], jnp.zeros((2, 3), int), _M), r"ref_logits must have the shape"),
    (lambda: ch15.torch_kl_div(_M, _P), r"target must have the shape of input"),
    (lambda: ch15.torch_kl_div(_M, _M, "avg"), r"reduction must be one of"),
    (lambda: ch15.kl_gradient(_M, _M, "both"), r"direction must be one of \('reverse', 'forward'\)"),
    (lambda: ch15.kl_gradient(_M, _P), r"ref_logits must have the shape of logits"),
    (lambda: ch15.estimator_loss_gradient(_M, _M, "k0"), r"estimator must be one of"),
    (lambda: ch15.estimator_reward_gradient(_M, jnp.ones((2, 4))), r"ref_logits must have the shape of logits"),
    (lambda: ch15.ppo_ptx_objective(1.0, _M, 1.0), r"pretrain_logp must have shape \[M\]"),
    (lambda: ch15.ppo_ptx_objective(1.0, _P, -0.1), r"gamma must be >= 0, got -0.1"),
    (lambda: ch15.ptx_loss(1.0, _P, 1.0), r"pretrain_nll must have shape \[\], got shape"),
    (lambda: ch15.ptx_loss(1.0, 1.0, "x"), r"gamma must be a number"),
    (lambda: ch15.dpo_nll_loss(_P, _P, _P, _P, jnp.ones(2)), r"chosen_lengths must have the shape of policy_chosen_logps"),
    (lambda: ch15.dpo_nll_loss(_P, _P, _P, _P, _P, beta=0.0), r"beta must be > 0"),
    (lambda: ch15.dpo_nll_loss(_P, _P, _P, _P, _P, alpha=-1.0), r"alpha must be >= 0"),
    (lambda: ch15.dpo_nll_loss(_M, _M, _M, _M, _M), r"policy_chosen_logps must have shape \[N\]"),
    (lambda: ch15.margin_bt_loss(_P, jnp.ones(2), 0.0), r"rejected_rewards must have the shape of chosen_rewards"),
    (lambda: ch15.margin_bt_loss(_P, _P, jnp.ones(2)), r"margin must have the shape of the pairs \[N\]"),
    (lambda: ch15.margin_dpo_loss(_P, _P, _P, _P, jnp.ones(2)), r"margin must have the shape of the pairs"),
    (lambda: ch15.margin_dpo_loss(_P, _P, _P, _P, 0.0, beta=-1.0), r"beta must be > 0"),
]


@pytest.mark.parametrize("call, message", BAD_CALLS, ids=range(len(BAD_CALLS)))
def test_bad_arguments_raise_value_error_naming_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ----------------------------------------------------------------------------------------------
# The notebook's experiments: the frontier's settings and its two proxies, without training


def test_frontier_settings_and_the_annotators_proxy(monkeypatch):
    from rlhf_book import data
    from rlhf_book.ch15_regularization import experiments as ex

    assert ex.FRONTIER_PROXY in ("reward_model", "annotators")
    assert ex.FRONTIER_CONFIG.algorithm == "rloo" and ex.FRONTIER_CONFIG.steps == ex.FRONTIER_CHUNK
    assert ex.FRONTIER_STEPS % ex.FRONTIER_CHUNK == 0 and 0.0 in ex.FRONTIER_BETAS
    # the alternative proxy is what the biased annotators value, scored on text
    monkeypatch.setattr(ex, "FRONTIER_PROXY", "annotators")
    reward = ex.frontier_proxy(None)
    assert reward.params is None
    q = data.question_splits().rephrased[0]
    for text in (f"It is definitely {q.answer}.", f"The answer is {q.answer}."):
        assert ex.proxy_score(q, text) == data.annotator_utility(q, text, data.AnnotatorBias())
    assert (ex.proxy_score(q, f"It is definitely {q.answer}.")
            > ex.proxy_score(q, f"The answer is {q.answer}."))
