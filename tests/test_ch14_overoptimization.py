"""Tests of chapter 14's closed-form floor (rlhf_book.ch14_overoptimization).

Expected values come from outside the implementation: the peaks of Gao et al.'s forms by
calculus and by a grid search, least squares recovering known parameters, the reference run of
the closed-form pool (seed 0, K = 20,000) computed in float64 NumPy by an independent script
and recorded with the project's reference notes, plain float64 loops over small pools, and Monte
Carlo simulation of best-of-N within 4 standard errors.
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

# The reference run (seed 0, K = 20,000, numpy float64): the KL-regularised optimum and exact
# best-of-N against the length-biased proxy.
REFERENCE_BETAS = (10, 3, 2, 1.5, 1, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
REFERENCE_TILT = {
    "sqrt_kl": (0.079, 0.266, 0.402, 0.539, 0.819, 1.033, 1.390, 1.664, 2.023, 2.441, 2.834, 3.102),
    "proxy": (0.130, 0.428, 0.645, 0.866, 1.322, 1.674, 2.268, 2.724, 3.315, 3.964, 4.483, 4.731),
    "gold": (-0.106, 0.092, 0.225, 0.348, 0.563, 0.688, 0.815, 0.845, 0.802, 0.652, 0.338, -0.343),
    "length": (4.10, 4.37, 4.58, 4.81, 5.33, 5.78, 6.63, 7.34, 8.34, 9.49, 10.60, 11.79),
}
REFERENCE_NS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
REFERENCE_BON = {
    "sqrt_kl_formula": (0, 0.439, 0.798, 1.097, 1.355, 1.580, 1.782, 1.965, 2.133, 2.289, 2.436),
    "proxy": (0.004, 0.635, 1.163, 1.616, 2.016, 2.375, 2.705, 3.015, 3.310, 3.586, 3.836),
    "gold": (-0.195, 0.264, 0.594, 0.821, 0.964, 1.044, 1.072, 1.042, 0.935, 0.764, 0.610),
}


@pytest.fixture(scope="module")
def pool():
    return ch14.length_pool()


def test_the_tilts_reproduce_the_reference_run(pool):
    got = ch14.tilt_curve(pool, REFERENCE_BETAS)
    for key, expected in REFERENCE_TILT.items():
        atol = 6e-3 if key == "length" else 1.5e-3  # the reference rounds length to 2 decimals
        np.testing.assert_allclose(got[key], expected, atol=atol, err_msg=key)
    # the proxy rises with optimisation; gold rises, peaks in the middle, falls; length drifts up
    assert np.all(np.diff(got["proxy"]) > 0) and np.all(np.diff(got["length"]) > 0)
    peak = int(np.argmax(got["gold"]))
    assert 0 < peak < len(REFERENCE_BETAS) - 1 and REFERENCE_BETAS[peak] == 0.5


def test_exact_best_of_n_reproduces_the_reference_run(pool):
    got = ch14.bon_curve(pool, REFERENCE_NS)
    for key, expected in REFERENCE_BON.items():
        np.testing.assert_allclose(got[key], expected, atol=1.5e-3, err_msg=key)
    # with 20,000 distinct proxy values the exact KL is the continuous formula's, almost
    np.testing.assert_allclose(got["sqrt_kl"], got["sqrt_kl_formula"], atol=2e-3)
    assert REFERENCE_NS[int(np.argmax(got["gold"]))] == 64


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


def _bon_last_tied_ranks_lowest(proxy, gold, n):
    proxy, gold = jnp.asarray(proxy), jnp.asarray(gold)
    flipped = ch14.best_of_n_from_samples(proxy[..., ::-1], gold[..., ::-1], n)
    return flipped


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
    ("best_of_n_from_samples", _bon_last_tied_ranks_lowest, "later of the two tied"),
    ("best_of_n_from_samples", _bon_over_the_first_axis, "the last axis holds the samples"),
]


@pytest.mark.parametrize("check, wrong, hint", WRONG_VERSIONS,
                         ids=[wrong.__name__.strip("_") for _, wrong, _ in WRONG_VERSIONS])
def test_the_chapter_14_checks_catch_wrong_versions_with_their_hint(check, wrong, hint):
    with pytest.raises(Mismatch) as caught:
        getattr(checks, check)(wrong)
    assert hint in str(caught.value), str(caught.value)
