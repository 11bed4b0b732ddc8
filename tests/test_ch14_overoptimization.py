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
                                  "best_of_n_from_samples"])
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


WRONG_VERSIONS = [
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
