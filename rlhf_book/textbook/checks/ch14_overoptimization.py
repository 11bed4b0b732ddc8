"""Grading checks for chapter 14 (over-optimisation).

Oracles: calculus (the peaks of Gao et al.'s forms where their derivatives vanish, a dense grid
search in float64, ``R(0) = 0`` as the limit ``d log d -> 0``), least squares recovering
parameters chosen here from exact and from noisy curves (the noise's effect bounded by the
ordinary-least-squares standard error), and, for best-of-N from samples, the average over every
``N``-subset of the samples enumerated in plain Python and a Monte Carlo simulation. None of
the oracles takes the graded function.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from rlhf_book.ch14_overoptimization.pool import Pool
from rlhf_book.textbook.checks import (expect, expect_close, expect_finite,
                                       expect_shape, grad_of_sum, jit, require)

FORM_BON = "d (alpha - beta d): alpha times d, minus beta times d squared"
FORM_RL = "d (alpha - beta log d), and 0 at d = 0 (the limit of d log d)"


# ----------------------------------------------------------------------------------------------
# 14.1 and 14.2 Gao et al.'s forms (book §14.2; Gao, Schulman and Hilton 2023)


def gao_bon(fn):
    d = np.array([0.0, 0.5, 1.0, 1.81, 3.0], np.float32)
    for alpha, beta in ((1.31, 0.363), (0.5, 0.1), (2.0, 1.5)):
        what = f"gao_bon(d [5], {alpha}, {beta})"
        out = expect_shape(fn(d, alpha, beta), (5,), what)
        expect_close(out, d.astype(np.float64) * (alpha - beta * d.astype(np.float64)),
                     what + f" ({FORM_BON})", atol=1e-5)
    grid = np.array([[0.2, 0.4], [0.8, 1.6]], np.float32)
    expect_close(expect_shape(fn(grid, 1.0, 0.5), (2, 2), "gao_bon(d [2, 2], 1.0, 0.5)"),
                 grid * (1.0 - 0.5 * grid), "gao_bon(d [2, 2], 1.0, 0.5) (elementwise)",
                 atol=1e-6)
    expect_close(jit(fn)(d, 1.31, 0.363), d * (1.31 - 0.363 * d), "jax.jit(gao_bon)(d, ...)",
                 atol=1e-5)


def gao_rl(fn):
    d = np.array([0.25, 0.5, 1.0, 2.0, np.e], np.float32)
    for alpha, beta in ((1.0, 0.5), (0.6, 0.4), (2.0, 1.0)):
        what = f"gao_rl(d [5], {alpha}, {beta})"
        out = expect_shape(fn(d, alpha, beta), (5,), what)
        expected = d.astype(np.float64) * (alpha - beta * np.log(d.astype(np.float64)))
        expect_close(out, expected, what + f" ({FORM_RL})", atol=1e-5)
    at_zero = (f"gao_rl([0.0, 1.0], 1.0, 0.5) ({FORM_RL}: log 0 is -inf, and 0 * -inf is NaN, "
               "so d = 0 needs its own branch)")
    zero = expect_finite(fn(np.array([0.0, 1.0], np.float32), 1.0, 0.5), at_zero)
    expect_close(zero, [0.0, 1.0], at_zero, atol=1e-6)
    grad = expect_finite(grad_of_sum(fn)(np.array([0.0, 0.5], np.float32), 1.0, 0.5),
                         "jax.grad(sum of gao_rl)([0.0, 0.5], 1.0, 0.5) (the gradient must "
                         "not be NaN at d = 0: keep log away from 0 on the branch not taken, "
                         "as jnp.where evaluates both)")
    expect_close(grad[1], 1.0 - 0.5 * (math.log(0.5) + 1.0),
                 "jax.grad(sum of gao_rl) at d = 0.5 (alpha - beta (log d + 1))", atol=1e-5)
    expect_close(jit(fn)(d, 1.0, 0.5), d * (1.0 - 0.5 * np.log(d)), "jax.jit(gao_rl)(d, ...)",
                 atol=1e-5)


# ----------------------------------------------------------------------------------------------
# 14.3 The peaks


def gao_peak(fn):
    for alpha, beta in ((1.31, 0.363), (0.5, 0.1), (2.0, 1.5)):
        d = np.linspace(0.0, 3 * alpha / beta, 300_001)
        r = d * (alpha - beta * d)
        out = fn(alpha, beta, "bon")
        require(isinstance(out, tuple) and len(out) == 2,
                f"gao_peak({alpha}, {beta}, 'bon') returned {out!r}: expected a tuple (d*, R*)")
        expect_close(out, (d[np.argmax(r)], r.max()), f"gao_peak({alpha}, {beta}, 'bon') (the "
                     "top of d (alpha - beta d): d* = alpha / (2 beta), R* = alpha^2 / (4 beta))",
                     atol=2e-4 * d[-1])
    for alpha, beta in ((1.0, 0.5), (0.6, 0.4), (2.0, 1.0)):
        d_star = math.exp(alpha / beta - 1)
        d = np.linspace(1e-9, 4 * d_star, 400_001)
        r = d * (alpha - beta * np.log(d))
        out = fn(alpha, beta, "rl")
        require(isinstance(out, tuple) and len(out) == 2,
                f"gao_peak({alpha}, {beta}, 'rl') returned {out!r}: expected a tuple (d*, R*)")
        expect_close(out, (d[np.argmax(r)], r.max()), f"gao_peak({alpha}, {beta}, 'rl') (the "
                     "top of d (alpha - beta log d): its derivative alpha - beta log d - beta is "
                     "0 at d* = exp(alpha / beta - 1), where R* = beta d*)", rtol=1e-3, atol=0)


# ----------------------------------------------------------------------------------------------
# 14.4 Fitting the forms


def _ols_se(g, d, sigma):
    """The standard errors of (alpha, beta) fitted to R / d = alpha - beta g with noise sigma
    on R (so sigma / d on R / d), by the ordinary-least-squares sandwich."""
    x = np.stack([np.ones_like(d), -g], axis=1)
    bread = np.linalg.inv(x.T @ x)
    return np.sqrt(np.diag(bread @ x.T @ np.diag((sigma / d) ** 2) @ x @ bread))


def fit_gao(fn):
    for form, alpha, beta in (("bon", 1.31, 0.363), ("bon", 0.4, 0.05), ("rl", 0.8, 0.25),
                              ("rl", 1.5, 0.9)):
        d = np.linspace(0.0, 3.0, 25)
        g = d if form == "bon" else np.log(np.where(d > 0, d, 1.0))
        out = fn(d, d * (alpha - beta * g), form)
        require(isinstance(out, tuple) and len(out) == 2,
                f"fit_gao(d, R, {form!r}) returned {out!r}: expected a tuple (alpha, beta)")
        expect_close(out, (alpha, beta), f"fit_gao(d [25], R, {form!r}) on an exact curve with "
                     f"alpha = {alpha}, beta = {beta} (least squares of R / d = alpha - beta "
                     f"{'d' if form == 'bon' else 'log d'} over the points with d > 0; d = 0 "
                     "gives 0 / 0)", atol=1e-6)
    rng = np.random.default_rng(4)
    d = np.linspace(0.2, 3.0, 40)
    sigma = 0.02
    for form in ("bon", "rl"):
        g = d if form == "bon" else np.log(d)
        se = _ols_se(g, d, sigma)
        r = d * (1.0 - 0.3 * g) + sigma * rng.standard_normal(d.size)
        out = np.asarray(fn(d, r, form), np.float64)
        expect(np.all(np.abs(out - (1.0, 0.3)) < 5 * se),
               f"fit_gao(d [40], a noisy curve, {form!r}) = {tuple(out.round(4))}, but alpha = "
               f"1.0, beta = 0.3 with standard errors {tuple(se.round(4))}: more than 5 away "
               "(least squares of R / d on the columns 1 and -g(d))")


# ----------------------------------------------------------------------------------------------
# 14.5 Best-of-N from samples


def best_of_n_subsets(proxy, gold, n: int) -> float:
    """The mean, over every ``n``-subset of the samples, of the gold reward of the subset's
    highest proxy (the earliest sample among equal proxies, as ``argmax``): plain Python."""
    values = [gold[max(subset, key=lambda i: (proxy[i], -i))]
              for subset in itertools.combinations(range(len(proxy)), n)]
    return float(np.mean(values))


def best_of_n_from_samples(fn):
    rng = np.random.default_rng(5)
    for m in (1, 4, 7):
        proxy = rng.normal(size=m).astype(np.float32)
        gold = rng.normal(size=m).astype(np.float32)
        for n in range(1, m + 1):
            what = f"best_of_n_from_samples(proxy [{m}], gold [{m}], {n})"
            out = expect_shape(fn(proxy, gold, n), (), what)
            expect_close(out, best_of_n_subsets(proxy, gold, n), what + " (the mean over every "
                         f"{n}-subset of the {m} samples of the gold of its best proxy: the "
                         "i-th lowest proxy is the pick with probability C(i - 1, n - 1) / C(m, n))",
                         atol=1e-5)
    # ties: the earlier of two equal proxies wins, as argmax picks
    proxy = np.array([1.0, 2.0, 2.0, 0.0], np.float32)
    gold = np.array([0.0, 10.0, 20.0, 0.0], np.float32)
    expect_close(fn(proxy, gold, 4), 10.0, "best_of_n_from_samples([1, 2, 2, 0], [0, 10, 20, 0], "
                 "4) (with all four drawn, the earlier of the two tied best samples wins, as "
                 "argmax picks)", atol=1e-5)
    expect_close(fn(proxy, gold, 3), best_of_n_subsets(proxy, gold, 3),
                 "best_of_n_from_samples([1, 2, 2, 0], [0, 10, 20, 0], 3) (the earlier of two "
                 "tied samples wins in every subset that holds both)", atol=1e-5)
    # rows are prompts
    proxy = rng.normal(size=(3, 6)).astype(np.float32)
    gold = rng.normal(size=(3, 6)).astype(np.float32)
    out = expect_shape(fn(proxy, gold, 3), (3,), "best_of_n_from_samples(proxy [3, 6], gold "
                       "[3, 6], 3) (one estimate per row: the last axis holds the samples)")
    expect_close(out, [best_of_n_subsets(p, g, 3) for p, g in zip(proxy, gold)],
                 "best_of_n_from_samples(proxy [3, 6], gold [3, 6], 3)", atol=1e-5)
    # sixteen samples: 1,820 subsets of four
    population = rng.normal(size=(2, 16)).astype(np.float32)
    expect_close(fn(population[0], population[1], 4),
                 best_of_n_subsets(population[0], population[1], 4),
                 "best_of_n_from_samples(proxy [16], gold [16], 4) against all 1,820 subsets",
                 atol=1e-4)
    expect_close(jit(fn, static_argnums=2)(proxy, gold, 3),
                 [best_of_n_subsets(p, g, 3) for p, g in zip(proxy, gold)],
                 "jax.jit(best_of_n_from_samples, static_argnums=2)(proxy, gold, 3)", atol=1e-5)


# ----------------------------------------------------------------------------------------------
# 14.6 One exact policy-gradient step with a KL penalty (book eq. 82; §15.1, eq. 127)


def _objective(logits, proxy, ref_logprobs, beta) -> float:
    """``J = E_pi[proxy] - beta KL(pi || pi_ref)`` of a softmax policy, in float64."""
    z = logits - logits.max()
    logp = z - np.log(np.exp(z).sum())
    pi = np.exp(logp)
    return float(pi @ proxy - beta * pi @ (logp - ref_logprobs))


def _softmax(logits) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max())
    return z / z.sum()


def pg_step(fn):
    rng = np.random.default_rng(14)
    K, lr = 6, 0.1
    logits = rng.normal(size=K)
    proxy = rng.normal(size=K)
    ref = rng.normal(size=K)
    ref_logprobs = ref - np.log(np.exp(ref).sum())
    f32 = [a.astype(np.float32) for a in (logits, proxy, ref_logprobs)]
    for beta in (0.0, 0.5):
        # the gradient by central finite differences of J in float64: no autodiff, no formula
        eps = 1e-6
        grad = np.array([(_objective(logits + eps * e, proxy, ref_logprobs, beta)
                          - _objective(logits - eps * e, proxy, ref_logprobs, beta)) / (2 * eps)
                         for e in np.eye(K)])
        pi = _softmax(logits)
        fisher = np.diag(pi) - np.outer(pi, pi)  # a softmax's Fisher information in its logits
        natural = np.linalg.lstsq(fisher, grad, rcond=None)[0]
        for nat, step, how in ((False, lr * K * grad, "lr * K * dJ/dlogits, dJ/dlogits = pi * A"),
                               (True, lr * natural, "lr * A, the natural gradient")):
            what = (f"pg_step(logits [6], proxy [6], ref_logprobs [6], beta={beta}, lr={lr}, "
                    f"natural={nat})")
            out = expect_shape(fn(*f32, beta, lr, nat), (K,), what)
            # logits are defined up to a constant: compare the policies they give
            expect_close(_softmax(out), _softmax(logits + step),
                         what + f" (the softmax of logits + {how}, with A = r' - E_pi[r'] and "
                         "r' = proxy - beta (log pi - log pi_ref): the KL-shaped reward)",
                         atol=2e-5)
    # natural steps from the uniform policy trace the tilts exp(proxy / beta_t)
    start = np.zeros(K, np.float32)
    logits_t = start
    for _ in range(5):
        logits_t = fn(logits_t, f32[1], np.full(K, -np.log(K), np.float32), 0.0, lr, True)
    expect_close(_softmax(logits_t), _softmax(proxy * lr * 5),
                 "five natural steps of pg_step with beta = 0 from uniform logits (the tilt "
                 "pi ∝ exp(proxy / beta) with beta = 1 / (lr * 5))", atol=2e-5)
    expect_close(_softmax(jit(fn, static_argnums=5)(*f32, 0.5, lr, False)),
                 _softmax(np.asarray(fn(*f32, 0.5, lr, False), np.float64)),
                 "jax.jit(pg_step, static_argnums=5)(..., natural=False)", atol=1e-5)


# ----------------------------------------------------------------------------------------------
# 14.7 The KL-regularised optimum on a pool (book eq. 95; §14.1, §14.2)


def _tilt_oracle(proxy, gold, length, betas) -> dict[str, np.ndarray]:
    """float64 NumPy, one beta at a time: softmax(proxy / beta), its KL to uniform, the means."""
    out = {"sqrt_kl": [], "proxy": [], "gold": [], "length": []}
    k = len(proxy)
    for beta in betas:
        z = proxy / beta
        p = np.exp(z - z.max())
        p /= p.sum()
        nz = p > 0
        out["sqrt_kl"].append(math.sqrt(max(float(np.sum(p[nz] * np.log(p[nz] * k))), 0.0)))
        out["proxy"].append(float(p @ proxy))
        out["gold"].append(float(p @ gold))
        out["length"].append(float(p @ length))
    return {name: np.asarray(v) for name, v in out.items()}


def _pool(kind: str, seed: int, size: int):
    """A pool built here from the same recipe as the library's (so the check never calls the
    graded module): ``length`` -- q ~ N(0, 1), L ~ Gamma(4, 1), gold = q - 0.05 (L - 4)^2,
    proxy = q + 0.25 (L - 4); ``noisy`` -- gold ~ N(0, 1), proxy = gold + N(0, 1)."""
    rng = np.random.default_rng(seed)
    if kind == "length":
        q, length = rng.standard_normal(size), rng.gamma(4.0, 1.0, size)
        return Pool(q - 0.05 * (length - 4) ** 2, q + 0.25 * (length - 4), length)
    gold = rng.standard_normal(size)
    return Pool(gold, gold + rng.standard_normal(size), np.full(size, 4.0))


def tilt_curve(fn):
    keys = ("sqrt_kl", "proxy", "gold", "length")
    for kind, seed in (("length", 1), ("noisy", 2)):
        pool = _pool(kind, seed, 50)
        betas = np.array([5.0, 1.0, 0.3, 0.05], np.float32)
        what = f"tilt_curve({kind} pool of 50, betas [5, 1, 0.3, 0.05])"
        out = fn(pool, betas)
        require(isinstance(out, dict) and all(k in out for k in keys),
                what + f" must return a dict with {keys}")
        expected = _tilt_oracle(pool.proxy, pool.gold, pool.length, betas.astype(np.float64))
        for name in keys:
            got = expect_finite(expect_shape(out[name], (4,), f"{what}['{name}']"),
                                f"{what}['{name}']")
            expect_close(got, expected[name], f"{what}['{name}'] (softmax(proxy / beta), "
                         "the exact KL to the uniform reference, and means under it)",
                         atol=2e-3 if name == "sqrt_kl" else 1e-4, rtol=1e-4)
    tiny = _pool("length", 3, 200)
    what = ("tilt_curve(pool of 200, betas [1e-3]) (exp(proxy / 1e-3) overflows float32: "
            "subtract the maximum)")
    out = expect_finite(fn(tiny, np.array([1e-3], np.float32))["gold"], what)
    expect_close(out, [tiny.gold[np.argmax(tiny.proxy)]],
                 what + ": all mass on the best-proxy response", atol=1e-4)
    # The curves' shape (book §14.1; Manheim and Garrabrant 2018), averaged over 60 pools
    # (a single pool's strongest tilts rest on a few responses), paired, beyond 3 SE.
    betas = np.array([10, 1, 0.6, 0.3, 0.2], np.float32)
    noisy = np.array([fn(_pool("noisy", s, 20_000), betas)["gold"] for s in range(60)])
    length = np.array([fn(_pool("length", s, 20_000), betas)["gold"] for s in range(60)])

    def rises(x, i, j):
        diff = x[:, j] - x[:, i]
        return diff.mean() > 3 * diff.std(ddof=1) / math.sqrt(len(diff))
    expect(all(rises(noisy, i, i + 1) for i in range(4)),
           "tilt_curve on pools whose proxy is gold plus independent noise: gold must keep "
           "rising as beta falls (regressional Goodhart), averaged over 60 pools")
    expect(rises(length, 0, 2) and rises(length, 3, 2) and rises(length, 4, 2),
           "tilt_curve on length pools: gold must rise to beta = 0.6 and fall after it "
           "(extremal Goodhart), averaged over 60 pools")
