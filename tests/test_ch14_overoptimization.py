"""Tests of chapter 14's library (rlhf_book.ch14_overoptimization).

Expected values come from outside the implementation: the peaks of Gao et al.'s forms by
calculus and by a grid search, least squares recovering known parameters, the pool's optimum
and best-of-N written out again here in float64 NumPy (`_tilt_float64`, `_bon_float64`), plain
loops and enumeration over small pools, chapter 9's float64 best-of-N estimator (`math.comb`),
and Monte Carlo simulation of best-of-N within 4 standard errors.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_book import ch14_overoptimization as ch14

# ----------------------------------------------------------------------------------------------
# Gao et al.'s forms, their peaks and their fit


@pytest.mark.parametrize("alpha, beta", [(1.3, 0.36), (0.5, 0.1), (2.0, 1.5)])
def test_the_bon_form_peaks_where_calculus_says(alpha, beta):
    d = np.linspace(0, 3 * alpha / beta, 200_001)
    r = np.asarray(ch14.gao_bon(jnp.asarray(d, jnp.float32), alpha, beta), np.float64)
    d_star, r_star = ch14.gao_peak(alpha, beta, "bon")
    assert d_star == pytest.approx(d[np.argmax(r)], abs=1e-3 * d[-1])
    assert r_star == pytest.approx(alpha ** 2 / (4 * beta)) and r_star == pytest.approx(r.max(), rel=1e-4)
    assert float(ch14.gao_bon(0.0, alpha, beta)) == 0.0
    slope = jax.grad(lambda x: ch14.gao_bon(x, alpha, beta))(jnp.float32(d_star))
    assert abs(float(slope)) < 1e-5


@pytest.mark.parametrize("alpha, beta", [(1.0, 0.5), (0.6, 0.4), (2.0, 1.0)])
def test_the_rl_form_peaks_where_calculus_says_and_is_0_at_0(alpha, beta):
    d_star, r_star = ch14.gao_peak(alpha, beta, "rl")
    assert d_star == pytest.approx(math.exp(alpha / beta - 1)) and r_star == pytest.approx(beta * d_star)
    d = np.linspace(1e-6, 4 * d_star, 400_001)
    r = d * (alpha - beta * np.log(d))  # the form in float64, written out
    assert d_star == pytest.approx(d[np.argmax(r)], rel=1e-3)
    assert float(ch14.gao_rl(d_star, alpha, beta)) == pytest.approx(r_star, rel=1e-5)
    assert float(ch14.gao_rl(0.0, alpha, beta)) == 0.0
    grad = jax.grad(lambda x: ch14.gao_rl(x, alpha, beta))
    assert abs(float(grad(jnp.float32(d_star)))) < 1e-4
    assert np.isfinite(float(grad(jnp.float32(0.0))))  # no NaN from log 0 under where


@pytest.mark.parametrize("form, alpha, beta", [("bon", 1.31, 0.363), ("rl", 0.8, 0.25)])
def test_fit_gao_recovers_the_parameters_of_a_noiseless_curve(form, alpha, beta):
    d = np.linspace(0.0, 3.0, 25)  # d = 0 is left out of the fit
    g = d if form == "bon" else np.log(np.where(d > 0, d, 1.0))
    r = d * (alpha - beta * g)
    got = ch14.fit_gao(d, r, form)
    assert got == pytest.approx((alpha, beta), abs=1e-6)


def test_fit_gao_on_noisy_curves_is_within_its_standard_error():
    rng = np.random.default_rng(0)
    d = np.linspace(0.2, 3.0, 30)
    alpha, beta, sigma = 1.2, 0.4, 0.05
    design = np.stack([np.ones_like(d), -d], axis=1)
    # the OLS covariance of (alpha, beta) for noise sigma on R / d, i.e. sigma / d per point
    weights = (sigma / d) ** 2
    cov = np.linalg.inv(design.T @ design) @ design.T @ np.diag(weights) @ design @ \
        np.linalg.inv(design.T @ design)
    se = np.sqrt(np.diag(cov))
    fits = np.array([ch14.fit_gao(d, d * (alpha - beta * d) + sigma * rng.standard_normal(d.size))
                     for _ in range(400)])
    assert np.all(np.abs(fits.mean(0) - (alpha, beta)) < 4 * se / math.sqrt(400))  # unbiased
    assert fits.std(0, ddof=1) == pytest.approx(se, rel=0.15)  # and as spread as OLS says


# ----------------------------------------------------------------------------------------------
# The closed-form pool

REFERENCE_BETAS = (10, 3, 2, 1.5, 1, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
REFERENCE_NS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _tilt_float64(pool, beta):
    """pi ∝ exp(proxy / beta) over the pool, its sqrt KL to uniform and its mean gold, proxy and
    length: float64 NumPy, written from book eq. 95."""
    logits = pool.proxy / beta
    p = np.exp(logits - logits.max())
    p /= p.sum()
    kl = float(np.sum(p * np.log(p * len(p), where=p > 0, out=np.zeros_like(p))))
    return {"sqrt_kl": math.sqrt(kl), "gold": p @ pool.gold, "proxy": p @ pool.proxy,
            "length": p @ pool.length}


def _bon_float64(pool, n):
    """Best-of-n of uniform draws ranked by the proxy: the i-th lowest of K is the best of n
    draws with probability (i / K)^n - ((i - 1) / K)^n (distinct proxies)."""
    order = np.argsort(pool.proxy)
    i = np.arange(1, len(order) + 1)
    pmf = (i / len(i)) ** n - ((i - 1) / len(i)) ** n
    return {key: float(pmf @ getattr(pool, key)[order]) for key in ("gold", "proxy", "length")}


@pytest.fixture(scope="module")
def pool():
    return ch14.length_pool()


def test_the_tilts_agree_with_float64_numpy_and_peak_in_the_middle(pool):
    got = ch14.tilt_curve(pool, REFERENCE_BETAS)
    for j, beta in enumerate(REFERENCE_BETAS):
        want = _tilt_float64(pool, beta)
        for key, value in want.items():
            assert got[key][j] == pytest.approx(value, abs=2e-3), (key, beta)
    # the proxy rises with optimisation; gold rises, peaks in the middle, falls; length drifts up
    assert np.all(np.diff(got["proxy"]) > 0) and np.all(np.diff(got["length"]) > 0)
    peak = int(np.argmax(got["gold"]))
    assert 0 < peak < len(REFERENCE_BETAS) - 1 and REFERENCE_BETAS[peak] == 0.5
    assert got["gold"][-1] < got["gold"][0]  # past the peak, below where it started


def test_exact_best_of_n_agrees_with_float64_numpy_and_the_kl_formula(pool):
    got = ch14.bon_curve(pool, REFERENCE_NS)
    for j, n in enumerate(REFERENCE_NS):
        for key, value in _bon_float64(pool, n).items():
            assert got[key][j] == pytest.approx(value, abs=2e-3), (key, n)
        # the continuous formula (Stiennon et al. 2020), written out
        assert got["sqrt_kl_formula"][j] == pytest.approx(math.sqrt(math.log(n) - (n - 1) / n),
                                                          abs=1e-6)
    # with 20,000 distinct proxy values the exact KL is the continuous formula's, almost
    np.testing.assert_allclose(got["sqrt_kl"], got["sqrt_kl_formula"], atol=2e-3)
    assert REFERENCE_NS[int(np.argmax(got["gold"]))] == 64
    assert np.all(np.diff(got["proxy"]) > 0)


def test_the_fitted_bon_peak_is_where_the_gold_peaks(pool):
    ns = 2 ** np.arange(0, 11)  # N <= K / 20: beyond it the finite pool runs out of tail
    curve = ch14.bon_curve(pool, ns)
    alpha, beta = ch14.fit_gao(curve["sqrt_kl_formula"], curve["gold"] - curve["gold"][0], "bon")
    d_star, _ = ch14.gao_peak(alpha, beta, "bon")
    assert d_star == pytest.approx(curve["sqrt_kl_formula"][np.argmax(curve["gold"])], abs=0.1)


def test_tilt_and_bon_against_plain_loops_on_a_small_pool():
    rng = np.random.default_rng(3)
    K = 12
    pool = ch14.Pool(rng.normal(size=K), rng.normal(size=K), rng.uniform(1, 9, K))
    for beta in (0.3, 1.0, 4.0):
        w = np.exp(pool.proxy / beta)
        p = w / w.sum()
        got = ch14.tilt_curve(pool, [beta])
        assert got["sqrt_kl"][0] == pytest.approx(math.sqrt(sum(pi * math.log(pi * K) for pi in p)), abs=1e-5)
        assert got["gold"][0] == pytest.approx(float(p @ pool.gold), abs=1e-5)
    # best-of-N by enumeration of every ordered N-tuple of draws (K^N of them)
    for n in (1, 2, 3):
        pmf = np.zeros(K)
        import itertools
        for draw in itertools.product(range(K), repeat=n):
            pmf[max(draw, key=lambda i: pool.proxy[i])] += K ** -n
        got = ch14.bon_curve(pool, [n])
        assert got["gold"][0] == pytest.approx(float(pmf @ pool.gold), abs=1e-5)
        assert got["proxy"][0] == pytest.approx(float(pmf @ pool.proxy), abs=1e-5)


def test_best_of_n_against_monte_carlo(pool):
    rng = np.random.default_rng(1)
    for n in (4, 64):
        draws = rng.integers(0, len(pool.gold), size=(20_000, n))
        picked = draws[np.arange(draws.shape[0]), np.argmax(pool.proxy[draws], axis=1)]
        gold = pool.gold[picked]
        got = ch14.bon_curve(pool, [n])["gold"][0]
        assert abs(got - gold.mean()) < 4 * gold.std(ddof=1) / math.sqrt(gold.size)


def test_regressional_goodhart_keeps_rising_extremal_goodhart_falls():
    # One finite pool's extreme tilts rest on a handful of responses (seed 2's length pool even
    # keeps rising), so the claim is about the expectation: 60 pools, paired differences, 3 SE.
    betas = [10, 1, 0.6, 0.3, 0.2]
    seeds = range(60)
    noisy = np.array([ch14.tilt_curve(ch14.noisy_pool(seed=s), betas)["gold"] for s in seeds])
    length = np.array([ch14.tilt_curve(ch14.length_pool(seed=s), betas)["gold"] for s in seeds])

    def mean_se(x):
        return x.mean(), x.std(ddof=1) / math.sqrt(len(x))
    # proxy = gold + independent noise: E[gold | proxy] rises with the proxy, so optimising
    # harder keeps raising gold (more slowly than the proxy): every step up, beyond 3 SE
    for i in range(len(betas) - 1):
        m, se = mean_se(noisy[:, i + 1] - noisy[:, i])
        assert m > 3 * se, (betas[i + 1], m, se)
    # a proxy that rewards length: gold rises to beta = 0.6, then falls
    m, se = mean_se(length[:, 2] - length[:, 0])
    assert m > 3 * se
    for i in (3, 4):
        m, se = mean_se(length[:, 2] - length[:, i])
        assert m > 3 * se, (betas[i], m, se)


@pytest.mark.parametrize("call, name", [
    (lambda: ch14.gao_peak(1.0, 0.0, "bon"), "beta"),
    (lambda: ch14.gao_peak(1.0, 0.5, "ppo"), "form"),
    (lambda: ch14.fit_gao([0.0, 1.0], [0.0, 0.5]), "two points"),
    (lambda: ch14.fit_gao([0.5, 1.0, 2.0], [0.1, 0.2]), "d and rewards"),
    (lambda: ch14.fit_gao([0.5, float("nan")], [0.1, 0.2]), "d"),
    (lambda: ch14.length_pool(size=1), "size"),
    (lambda: ch14.noisy_pool(noise=-1.0), "noise"),
    (lambda: ch14.tilt_curve(ch14.noisy_pool(size=10), [1.0, 0.0]), "betas"),
    (lambda: ch14.bon_curve(ch14.noisy_pool(size=10), [0, 2]), "ns"),
    (lambda: ch14.bon_curve(ch14.noisy_pool(size=10), [1.5]), "ns"),
])
def test_bad_inputs_name_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


# ----------------------------------------------------------------------------------------------
# The exercises' checks: the reference passes, wrong versions fail with their hint


from rlhf_book.textbook.checks import Mismatch  # noqa: E402
from rlhf_book.textbook.checks import ch14_overoptimization as checks  # noqa: E402


@pytest.mark.parametrize("name", ["gao_bon", "gao_rl", "gao_peak", "fit_gao",
                                  "best_of_n_from_samples", "pg_step"])
def test_the_reference_passes_each_check_of_chapter_14(name):
    getattr(checks, name)(getattr(ch14, name))


def _bon_without_the_square(d, alpha, beta):
    return jnp.asarray(d) * alpha - beta * jnp.asarray(d)


def _rl_plain(d, alpha, beta):
    d = jnp.asarray(d)
    return d * (alpha - beta * jnp.log(d))


def _rl_single_where(d, alpha, beta):
    d = jnp.asarray(d)
    return jnp.where(d > 0, d * (alpha - beta * jnp.log(d)), 0.0)


def _peak_rl_without_minus_one(alpha, beta, form="bon"):
    if form == "bon":
        return ch14.gao_peak(alpha, beta, "bon")
    return math.exp(alpha / beta), beta * math.exp(alpha / beta)


def _peak_bon_at_alpha_over_beta(alpha, beta, form="bon"):
    if form == "rl":
        return ch14.gao_peak(alpha, beta, "rl")
    return alpha / beta, alpha ** 2 / beta


def _fit_keeping_d_0(d, rewards, form="bon"):
    d, rewards = np.asarray(d, float), np.asarray(rewards, float)
    g = d if form == "bon" else np.log(np.where(d > 0, d, 1.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        (a, b), *_ = np.linalg.lstsq(np.stack([np.ones_like(d), -g], 1), rewards / d, rcond=None)
    return float(a), float(b)


def _fit_with_the_other_g(d, rewards, form="bon"):
    return ch14.fit_gao(d, rewards, "rl" if form == "bon" else "bon")


def _bon_with_replacement(proxy, gold, n):
    proxy, gold = jnp.asarray(proxy), jnp.asarray(gold)
    m = proxy.shape[-1]
    ranked = jnp.take_along_axis(gold, jnp.argsort(proxy, axis=-1, stable=True), axis=-1)
    i = jnp.arange(1, m + 1)
    return ranked @ ((i / m) ** n - ((i - 1) / m) ** n)


def _bon_later_tied_wins(proxy, gold, n):  # a plain stable sort: the later tie ranks higher
    proxy, gold = jnp.asarray(proxy), jnp.asarray(gold)
    ranked = jnp.take_along_axis(gold, jnp.argsort(proxy, axis=-1, stable=True), axis=-1)
    return ranked @ ch14.best_of_n_weights(proxy.shape[-1], n)


def _bon_over_the_first_axis(proxy, gold, n):
    proxy, gold = jnp.asarray(proxy), jnp.asarray(gold)
    if proxy.ndim == 1:
        return ch14.best_of_n_from_samples(proxy, gold, n)
    return ch14.best_of_n_from_samples(proxy.T, gold.T, min(n, proxy.shape[0]))


def _pg_without_the_kl(logits, proxy, ref_logprobs, beta, lr, natural=False):
    return ch14.pg_step(logits, proxy, ref_logprobs, 0.0, lr, natural)


def _pg_kl_as_a_bonus(logits, proxy, ref_logprobs, beta, lr, natural=False):
    return ch14.pg_step(logits, proxy, ref_logprobs, -beta, lr, natural)


def _pg_without_the_baseline(logits, proxy, ref_logprobs, beta, lr, natural=False):
    logp = jax.nn.log_softmax(jnp.asarray(logits))
    shaped = jnp.asarray(proxy) - beta * (logp - jnp.asarray(ref_logprobs))
    pi = jnp.exp(logp)
    return jnp.asarray(logits) + (lr * shaped if natural else lr * len(pi) * pi * shaped)


def _pg_natural_as_plain(logits, proxy, ref_logprobs, beta, lr, natural=False):
    return ch14.pg_step(logits, proxy, ref_logprobs, beta, lr, False)


WRONG_VERSIONS = [
    ("pg_step", _pg_without_the_kl, "beta (log pi - log pi_ref)"),
    ("pg_step", _pg_kl_as_a_bonus, "beta (log pi - log pi_ref)"),
    ("pg_step", _pg_without_the_baseline, "A = r' - E_pi[r']"),
    ("pg_step", _pg_natural_as_plain, "the natural gradient"),
    ("gao_bon", _bon_without_the_square, "minus beta times d squared"),
    ("gao_rl", _rl_plain, "0 * -inf is NaN"),
    ("gao_rl", _rl_single_where, "the gradient must not be NaN at d = 0"),
    ("gao_peak", _peak_rl_without_minus_one, "exp(alpha / beta - 1)"),
    ("gao_peak", _peak_bon_at_alpha_over_beta, "alpha / (2 beta)"),
    ("fit_gao", _fit_keeping_d_0, "d = 0 gives 0 / 0"),
    ("fit_gao", _fit_with_the_other_g, "least squares of R / d"),
    ("best_of_n_from_samples", _bon_with_replacement, "C(i - 1, n - 1) / C(m, n)"),
    ("best_of_n_from_samples", _bon_later_tied_wins, "earlier of the two tied"),
    ("best_of_n_from_samples", _bon_over_the_first_axis, "the last axis holds the samples"),
]


@pytest.mark.parametrize("check, wrong, hint", WRONG_VERSIONS,
                         ids=[wrong.__name__.strip("_") for _, wrong, _ in WRONG_VERSIONS])
def test_the_chapter_14_checks_catch_wrong_versions_with_their_hint(check, wrong, hint):
    with pytest.raises(Mismatch) as caught:
        getattr(checks, check)(wrong)
    assert hint in str(caught.value), str(caught.value)


def test_best_of_n_from_samples_agrees_with_chapter_9s_float64_estimator():
    from rlhf_book.ch09_rejection_sampling.experiments import pool_best_of_n
    rng = np.random.default_rng(6)
    proxy, gold = rng.normal(size=(5, 64)), rng.normal(size=(5, 64))
    for n in (1, 2, 8, 33, 64):
        want = pool_best_of_n(gold, n, by=proxy)
        got = np.asarray(ch14.best_of_n_from_samples(proxy.astype(np.float32),
                                                     gold.astype(np.float32), n))
        np.testing.assert_allclose(got, want, atol=2e-5)
    assert float(jnp.sum(ch14.best_of_n_weights(20_000, 64))) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("call, name", [
    (lambda: ch14.best_of_n_weights(4, 0), "n"),
    (lambda: ch14.best_of_n_weights(0, 1), "m"),
    (lambda: ch14.best_of_n_from_samples(np.zeros(4), np.zeros(4), "2"), "n"),
    (lambda: ch14.best_of_n_from_samples(np.zeros(4), np.zeros(4), 5), "n"),
    (lambda: ch14.best_of_n_from_samples(np.zeros(4), np.zeros(3), 2), "proxy and gold"),
    (lambda: ch14.gao_peak(float("nan"), 1.0), "alpha"),
    (lambda: ch14.gao_peak(-1.0, 1.0), "alpha"),
    (lambda: ch14.length_pool(length_penalty=-1.0), "length_penalty"),
    (lambda: ch14.bon_curve(ch14.noisy_pool(size=10), ["a"]), "ns"),
])
def test_more_bad_inputs_name_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


# ----------------------------------------------------------------------------------------------
# Learned proxies (proxies.py)


def _bt_loss_float64(w, x, y, l2):
    z = x @ w
    return float(np.sum(np.logaddexp(0.0, -z) * y + np.logaddexp(0.0, z) * (1 - y)) + l2 / 2 * w @ w)


def test_fit_linear_rm_minimises_the_bradley_terry_loss_as_scipy_does():
    from scipy.optimize import minimize
    fp = ch14.feature_pool(3, size=2_000)
    x, y = ch14.gold_pairs(fp, 400, seed=1)
    w = np.asarray(ch14.fit_linear_rm(x, y, l2=0.1), np.float64)
    ref = minimize(_bt_loss_float64, np.zeros(x.shape[1]), args=(x, y, 0.1), method="BFGS",
                   options={"gtol": 1e-9})
    np.testing.assert_allclose(w, ref.x, atol=2e-4)
    assert _bt_loss_float64(w, x, y, 0.1) <= ref.fun + 1e-4


def test_many_gold_pairs_recover_gold_within_the_fits_standard_error():
    # gold = q - 0.05 (L - 4)^2 is w = (1, 0, -0.05, 0, ...) in the features; the covariance of
    # the maximum-likelihood fit is the inverse Hessian of the loss (Fisher information)
    fp = ch14.feature_pool(0)
    x, y = ch14.gold_pairs(fp, 20_000, seed=0)
    w = np.asarray(ch14.fit_linear_rm(x, y, l2=1e-6), np.float64)
    p = 1 / (1 + np.exp(-x @ w))
    se = np.sqrt(np.diag(np.linalg.inv((x.T * (p * (1 - p))) @ x)))
    truth = np.zeros(x.shape[1])
    truth[0], truth[2] = 1.0, -0.05
    assert np.all(np.abs(w - truth) < 4 * se), (w, se)


def test_gold_pairs_are_labelled_by_bradley_terry_on_gold():
    fp = ch14.feature_pool(0, size=500, n_noise=0)
    x, y = ch14.gold_pairs(fp, 40_000, seed=2)
    gap = x[:, 0] - 0.05 * x[:, 2]  # gold_i - gold_j from the features
    p = 1 / (1 + np.exp(-gap))
    # within each bin of the gold gap, the share of first-preferred labels against the
    # Bradley-Terry probability, within 4 standard errors: labels that ignored gold, or
    # followed it without noise, would miss the bins far from 0
    edges = np.quantile(gap, np.linspace(0, 1, 9))
    for lo, hi in zip(edges[:-1], edges[1:]):
        b = (gap >= lo) & (gap <= hi)
        assert abs(y[b].mean() - p[b].mean()) < 4 * np.sqrt(np.sum(p[b] * (1 - p[b]))) / b.sum()
    assert y[gap > 1].mean() > 0.7 and y[gap < -1].mean() < 0.3
    assert not np.any(np.all(x == 0, axis=1))  # never a response against itself


def test_tilt_scores_agree_with_tilt_curve_and_batch_as_one_call():
    p = ch14.length_pool(0, size=3_000)
    betas = (2.0, 0.5, 0.2)
    want = ch14.tilt_curve(p, betas)
    got = ch14.tilt_scores(p.proxy, betas, {"gold": p.gold, "length": p.length})
    for k in ("sqrt_kl", "gold", "length"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5)
    both = ch14.tilt_scores(np.stack([p.proxy, p.gold]), betas, {"gold": p.gold})
    np.testing.assert_allclose(both["gold"][0], want["gold"], rtol=1e-5, atol=1e-5)
    alone = ch14.tilt_scores(p.gold, betas, {"gold": p.gold})
    np.testing.assert_allclose(both["gold"][1], alone["gold"], rtol=1e-5, atol=1e-5)


def test_ensemble_reward_against_numpy():
    r = np.random.default_rng(0).normal(size=(5, 7))
    for agg, want in (("mean", r.mean(0)), ("min", r.min(0)),
                      ("mean_minus_std", r.mean(0) - 2.0 * r.std(0, ddof=1))):
        np.testing.assert_allclose(np.asarray(ch14.ensemble_reward(r, agg, k=2.0)), want, atol=1e-5)


def _objective64(logits, proxy, ref_logprobs, beta):
    logp = logits - np.logaddexp.reduce(logits)
    pi = np.exp(logp)
    return pi @ proxy - beta * pi @ (logp - ref_logprobs)


@pytest.mark.parametrize("beta", [0.0, 0.3])
def test_pg_step_follows_the_gradient_of_chapter_8s_objective(beta):
    from rlhf_book.ch08_direct_alignment.losses import regularized_objective
    rng = np.random.default_rng(1)
    logits, proxy = rng.normal(size=8), rng.normal(size=8)
    ref = jax.nn.log_softmax(jnp.asarray(rng.normal(size=8), jnp.float32))
    grad = jax.grad(lambda z: regularized_objective(jax.nn.softmax(z), jnp.exp(ref),
                                                    jnp.asarray(proxy, jnp.float32), beta))(
        jnp.asarray(logits, jnp.float32))
    new = ch14.pg_step(logits, proxy, ref, beta, 0.01, natural=False)
    np.testing.assert_allclose(np.asarray(new) - logits, 0.01 * 8 * np.asarray(grad), atol=1e-6)
    # a small step raises J, to first order by lr K |grad|^2
    before = _objective64(logits, proxy, np.asarray(ref, np.float64), beta)
    after = _objective64(np.asarray(new, np.float64), proxy, np.asarray(ref, np.float64), beta)
    assert after - before == pytest.approx(0.01 * 8 * float(grad @ grad), rel=0.05)


def test_natural_policy_gradient_stays_on_the_tilts_so_the_penalty_is_early_stopping():
    # theta_t = r (1 - (1 - lr beta)^t) / beta: the tilt at beta_t = beta / (1 - (1 - lr beta)^t)
    # (beta_t = 1 / (lr t) without the penalty), so every run walks the same curve.
    p = ch14.length_pool(0, size=2_000)
    lr, steps = 0.05, 60
    runs = ch14.pg_curves(p, [0.0, 0.5], steps, lr, natural=True, every=10)
    t = runs["step"][1:]
    for i, beta in enumerate((0.0, 0.5)):
        tilt_betas = 1 / (lr * t) if beta == 0 else beta / (1 - (1 - lr * beta) ** t)
        want = ch14.tilt_curve(p, tilt_betas)
        for k in ("sqrt_kl", "gold", "proxy"):
            np.testing.assert_allclose(runs[k][i, 1:], want[k], rtol=2e-3, atol=2e-3)
    assert runs["sqrt_kl"][0, 0] == pytest.approx(0.0, abs=1e-3)


def _falls_in_most_seeds(curves, key="gold"):
    """A sign test, robust to the heavy-tailed seeds that dominate a mean: the share of seeds
    whose value at the mean curve's peak exceeds their value at the strongest optimisation,
    more than 3 binomial standard errors above 1/2."""
    i = int(np.argmax(curves[key].mean(axis=0)))
    share = np.mean(curves[key][:, i] > curves[key][:, -1])
    return 0 < i < curves[key].shape[1] - 1 and share > 0.5 + 3 * 0.5 / np.sqrt(len(curves[key]))


def test_learned_proxies_show_the_data_size_train_test_and_ensemble_effects():
    from rlhf_book.ch14_overoptimization import experiments as ex
    scaling = ex.data_scaling(ns=(100, 1000))
    small, large = ex.peak(scaling[100]), ex.peak(scaling[1000])
    # few pairs: gold peaks inside the range and falls after; many pairs: a later, higher peak
    assert _falls_in_most_seeds(scaling[100])
    assert large["d"] > small["d"]
    assert large["value"] - small["value"] > 3 * np.hypot(large["se"], small["se"])
    # Figure 39: the train model keeps rising, the test model does not follow, gold falls
    tt = ex.train_test()
    assert np.all(np.diff(tt["train"].mean(axis=0)) > 0)
    gap = tt["train"][:, -1] - tt["test"][:, -1]
    assert gap.mean() > 3 * gap.std(ddof=1) / np.sqrt(len(gap))
    assert ex.peak(tt, "test")["index"] < len(ex.PROXY_BETAS) - 1
    assert _falls_in_most_seeds(tt)
    # a pessimistic ensemble does not fall where the single model does (paired over seeds)
    ens = ex.ensembles()
    for aggregate in ("min", "mean_minus_std"):
        gain = ens[aggregate]["gold"][:, -1] - ens["single"]["gold"][:, -1]
        assert gain.mean() > 3 * gain.std(ddof=1) / np.sqrt(len(gain))


@pytest.mark.parametrize("call, name", [
    (lambda: ch14.feature_pool(n_noise=-1), "n_noise"),
    (lambda: ch14.gold_pairs(ch14.feature_pool(size=10), 0), "n"),
    (lambda: ch14.fit_linear_rm(np.zeros((3, 2)), np.zeros(2)), "labels"),
    (lambda: ch14.fit_linear_rm(np.zeros((3, 2)), np.zeros(3), l2=0.0), "l2"),
    (lambda: ch14.ensemble_reward(np.zeros((1, 4))), "member_rewards"),
    (lambda: ch14.ensemble_reward(np.zeros((2, 4)), "max"), "aggregate"),
    (lambda: ch14.tilt_scores(np.zeros((2, 2, 3)), [1.0], {}), "proxy"),
    (lambda: ch14.pg_curves(ch14.noisy_pool(size=10), [0.0], 10, 0.1, every=3), "every"),
    (lambda: ch14.pg_curves(ch14.noisy_pool(size=10), [-1.0], 10, 0.1), "betas"),
])
def test_proxies_bad_inputs_name_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


def test_length_controlled_removes_the_least_squares_slope():
    rng = np.random.default_rng(5)
    lengths = rng.gamma(4.0, 8.0, size=(16, 12))
    scores = 0.03 * lengths + rng.normal(size=(16, 12))
    out = np.asarray(ch14.length_controlled(scores, lengths), np.float64)
    slope, _ = np.polyfit(lengths.ravel(), scores.ravel(), 1)  # numpy's least squares
    np.testing.assert_allclose(out, scores - slope * (lengths - lengths.mean()), atol=1e-4)
    assert abs(np.corrcoef(out.ravel(), lengths.ravel())[0, 1]) < 1e-4
    assert out.mean() == pytest.approx(scores.mean(), abs=1e-4)
    # on the length pool, regressing length out of the proxy leaves (nearly) the quality q
    p = ch14.length_pool(0)
    fixed = np.asarray(ch14.length_controlled(p.proxy, p.length), np.float64)
    q = p.gold + 0.05 * (p.length - 4) ** 2
    assert np.corrcoef(fixed, q)[0, 1] > 0.99
    with pytest.raises(ValueError, match="scores and lengths"):
        ch14.length_controlled(np.zeros(3), np.zeros(4))


def test_frontier_runs_needs_a_text_score_for_a_text_reward():
    from rlhf_book.ch14_overoptimization import experiments as ex
    from rlhf_book.lm import rollout
    reward = rollout.text_reward(lambda q, t: 0.0, ex.frontier_questions()[:2])
    with pytest.raises(ValueError, match="text_score"):
        ex.frontier_runs(None, reward)
