"""Grading checks for chapter 8 (direct alignment).

Oracles: a worked pair computed by hand (``pc = -10, pr = -12, rc = rr = -11`` at ``beta =
0.1``, so ``h = 2``, loss ``-log sigmoid(0.2) = 0.598139``, weight 0.450166, cDPO 0.618139, IPO
9.0) and the table of the Gibbs-tilted optimum over ``beta`` on three responses (``pi_ref =
[0.5, 0.3, 0.2]``, ``r = [1, 0, 2]``); plain float64 Python loops written from the equations
(eqs. 79, 87, 95, 96, 105, 108; the papers' IPO, SimPO and ORPO losses), public here so that
the tests use the same ones (:func:`dpo_loss_oracle`, :func:`ipo_loss_oracle`,
:func:`simpo_loss_oracle`, :func:`orpo_loss_oracle`, :func:`tilt_oracle`,
:func:`population_dpo_oracle`), and central finite differences of those loops; and math: the loss at ``pi = pi_ref`` is ``log 2`` with weight 1/2, ``loss(h) -
loss(-h) = -beta h``, shifts that ``log Z`` absorbs change nothing, ``J(pi) = beta log Z - beta
KL(pi || pi*)`` for every ``pi``, the population DPO loss is ``log(2) / 2`` at the reference and
stationary at ``pi*``, IPO's minimum sits at ``h = 1 / (2 beta)``, no gradient reaches the
frozen reference, and ``jit``/``vmap`` agree with the eager result. The DPO step (8.8) runs on
a tiny GPT: sequence log-probs against a per-token float64 loop over ``gpt.forward``'s logits,
the gradient against ``jax.grad`` of a loss written in the check, and eq. 81 at ``pi = pi_ref``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_book.ch08_direct_alignment.loop import PreferenceBatch, RefLogProbs
from rlhf_book.lm import gpt, tokenizer
from rlhf_book.textbook.checks import (as_array, call, expect, expect_close, expect_finite,
                                       expect_shape, grad_of, grad_of_mean, grad_of_sum, jit,
                                       probe, require, vmap)


def _f32(x) -> jax.Array:
    return jnp.asarray(np.asarray(x, np.float32))


def _call(fn, what, shape, *args, **kwargs) -> np.ndarray:
    """``fn(*args, **kwargs)`` checked to be a finite array of ``shape``."""
    out = expect_shape(fn(*args, **kwargs), shape, what)
    return expect_finite(out, what)


def _log_sigmoid(z: float) -> float:
    """``log sigmoid(z)`` in float64, stable for any ``z``."""
    return -(max(0.0, -z) + math.log1p(math.exp(-abs(z))))


def _sigmoid(z: float) -> float:
    return math.exp(_log_sigmoid(z))


def _finite_difference(loss, arrays, which: int, step: float = 1e-4) -> np.ndarray:
    """Central differences of the float64 function ``loss(*arrays)`` with respect to
    ``arrays[which]``, element by element."""
    arrays = [np.asarray(a, np.float64).copy() for a in arrays]
    grad = np.zeros(arrays[which].shape)
    for i in np.ndindex(grad.shape):
        up = [a.copy() for a in arrays]
        down = [a.copy() for a in arrays]
        up[which][i] += step
        down[which][i] -= step
        grad[i] = (loss(*up) - loss(*down)) / (2 * step)
    return grad


def _random_pairs(rng, n: int, scale: float = 4.0):
    """Sequence log-probs ``pc, pr, rc, rr`` of ``n`` pairs, around -20."""
    return [rng.normal(-20.0, scale, n) for _ in range(4)]


# A worked pair: h = (pc - pr) - (rc - rr) = 2.
PAIR = dict(pc=-10.0, pr=-12.0, rc=-11.0, rr=-11.0)
PAIR_ARGS = tuple(_f32([PAIR[k]]) for k in ("pc", "pr", "rc", "rr"))
PAIR_TEXT = "(pc, pr, rc, rr) = (-10, -12, -11, -11), so h = 2"


# ----------------------------------------------------------------------------------------------
# 8.1 The DPO loss, with cDPO's label smoothing (eq. 79)


def dpo_loss_oracle(pc, pr, rc, rr, beta, eps=0.0) -> np.ndarray:
    """Per pair, ``-(1 - eps) log sigmoid(beta h_i) - eps log sigmoid(-beta h_i)`` with
    ``h_i = (pc_i - pr_i) - (rc_i - rr_i)`` (eq. 79; cDPO when ``eps > 0``), ``[N]`` float64."""
    out = []
    for i in range(len(pc)):
        h = (pc[i] - pr[i]) - (rc[i] - rr[i])
        out.append(-(1 - eps) * _log_sigmoid(beta * h) - eps * _log_sigmoid(-beta * h))
    return np.array(out)


def _dpo_loop(pc, pr, rc, rr, beta, eps=0.0) -> float:
    """The mean of :func:`dpo_loss_oracle`: the loss of a batch."""
    return float(np.mean(dpo_loss_oracle(pc, pr, rc, rr, beta, eps)))


def dpo_loss(fn):
    what = f"dpo_loss({PAIR_TEXT}, beta=0.1)"
    expect_close(_call(fn, what, (1,), *PAIR_ARGS, 0.1), [0.598139],
                 what + " (-log sigmoid(0.1 * 2) = 0.598139; the loss is PER PAIR, shape [N]: "
                 "the caller takes the mean)", atol=1e-6)
    what = f"dpo_loss({PAIR_TEXT}, beta=0.1, label_smoothing=0.1)"
    expect_close(_call(fn, what, (1,), *PAIR_ARGS, 0.1, label_smoothing=0.1), [0.618139],
                 what + " (cDPO: -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h) = "
                 "0.9 * 0.598139 + 0.1 * 0.798139)", atol=1e-6)
    grads = grad_of_sum(fn, argnums=(0, 1, 2, 3))(*PAIR_ARGS, 0.1)
    expect_close(np.concatenate([as_array(g, "gradient") for g in grads]),
                 [-0.0450166, 0.0450166, 0.0, 0.0],
                 f"d dpo_loss / d (pc, pr, rc, rr) at {PAIR_TEXT} (eq. 108: -/+ beta "
                 "sigmoid(-beta h) = -/+ 0.1 * 0.450166 for the policy; 0 for the reference, "
                 "which is frozen: stop_gradient on rc - rr)", atol=1e-7)

    rng = np.random.default_rng(0)
    N = 12
    pc, pr, rc, rr = _random_pairs(rng, N)
    args = [_f32(x) for x in (pc, pr, rc, rr)]
    what = f"dpo_loss(pc, pr, pc, pr) on {N} random pairs (policy = reference)"
    expect_close(_call(fn, what, (N,), args[0], args[1], args[0], args[1], 0.1),
                 np.full(N, math.log(2)), what + ": every h is 0, so every loss is log 2",
                 atol=1e-6)
    for beta, eps in ((0.1, 0.0), (0.5, 0.0), (0.05, 0.0), (0.1, 0.2), (0.3, 0.05)):
        what = f"dpo_loss({N} random pairs, beta={beta}, label_smoothing={eps})"
        expected = dpo_loss_oracle(pc, pr, rc, rr, beta, eps)
        expect_close(_call(fn, what, (N,), *args, beta, label_smoothing=eps), expected,
                     what + " (eq. 79, cDPO when label_smoothing > 0)", atol=1e-5, rtol=1e-5)
        g_pc, g_pr = grad_of_mean(fn, argnums=(0, 1))(*args, beta, label_smoothing=eps)
        loop = lambda *x, be=beta, e=eps: _dpo_loop(*x, be, e)  # noqa: E731
        expect_close(g_pc, _finite_difference(loop, (pc, pr, rc, rr), 0),
                     f"d mean {what} / d pc vs finite differences", atol=1e-6, rtol=1e-3)
        expect_close(g_pr, _finite_difference(loop, (pc, pr, rc, rr), 1),
                     f"d mean {what} / d pr vs finite differences", atol=1e-6, rtol=1e-3)
    what = f"dpo_loss({N} random pairs, beta=0.1, label_smoothing=0.0)"
    expect_close(fn(*args, 0.1, label_smoothing=0.0), fn(*args, 0.1),
                 what + " vs the default (label smoothing 0 is plain DPO)", atol=1e-7)

    # swapping chosen and rejected sends h to -h: loss(h) - loss(-h) = -beta h
    for h in (-3.0, 0.5, 7.0):
        one = (_f32([h]), _f32([0.0]), _f32([0.0]), _f32([0.0]))
        swapped = (_f32([0.0]), _f32([h]), _f32([0.0]), _f32([0.0]))
        diff = float(as_array(fn(*one, 0.2), "dpo_loss")[0]) - float(
            as_array(fn(*swapped, 0.2), "dpo_loss")[0])
        expect_close(diff, -0.2 * h, f"dpo_loss(h={h}) - dpo_loss(h={-h}) at beta=0.2 (log "
                     "sigmoid(z) - log sigmoid(-z) = z, so the difference is -beta h)", atol=1e-5)
    what = f"dpo_loss({N} random pairs with 7.5 added to pc and pr)"
    expect_close(fn(_f32(pc + 7.5), _f32(pr + 7.5), *args[2:], 0.1),
                 dpo_loss_oracle(pc, pr, rc, rr, 0.1), what + " (a shift shared by both completions "
                 "of a prompt, such as log Z, cancels in h)", atol=1e-5)
    what = f"dpo_loss({N} random pairs, beta=1e-6)"
    expect_close(fn(*args, 1e-6), np.full(N, math.log(2)),
                 what + " (as beta -> 0 every loss -> log 2)", atol=1e-5)
    what = "dpo_loss(pc=[0, -1e4], pr=[-1e4, 0], rc=rr=0, beta=1)"
    out = _call(fn, what, (2,), _f32([0.0, -1e4]), _f32([-1e4, 0.0]), _f32([0.0, 0.0]),
                _f32([0.0, 0.0]), 1.0)
    expect_close(out, [0.0, 1e4], what + " (h = +-1e4: the losses are 0 and 1e4; use "
                 "jax.nn.log_sigmoid, since log(sigmoid(-1e4)) is -inf)", atol=1e-3, rtol=1e-4)
    expect_close(jit(fn)(*args, 0.1), dpo_loss_oracle(pc, pr, rc, rr, 0.1),
                 "jax.jit(dpo_loss)(random pairs, beta)", atol=1e-5)


# ----------------------------------------------------------------------------------------------
# 8.2 DPO's gradient weight (eqs. 81, 106, 107, 108)


def dpo_gradient_weight(fn):
    what = f"dpo_gradient_weight({PAIR_TEXT}, beta=0.1)"
    expect_close(_call(fn, what, (1,), *PAIR_ARGS, 0.1), [0.450166],
                 what + " (sigmoid(-0.1 * 2) = 0.450166; the weight is "
                 "sigmoid(-beta h), one per pair)", atol=1e-6)

    rng = np.random.default_rng(1)
    N = 10
    pc, pr, rc, rr = _random_pairs(rng, N)
    args = [_f32(x) for x in (pc, pr, rc, rr)]
    what = f"dpo_gradient_weight(pc, pr, pc, pr) on {N} random pairs (policy = reference)"
    expect_close(_call(fn, what, (N,), args[0], args[1], args[0], args[1], 0.1),
                 np.full(N, 0.5), what + ": h = 0, so every weight is 1/2", atol=1e-7)
    for beta in (0.1, 0.5, 2.0):
        what = f"dpo_gradient_weight({N} random pairs, beta={beta})"
        out = _call(fn, what, (N,), *args, beta)
        h = (pc - pr) - (rc - rr)
        expect_close(out, [_sigmoid(-beta * x) for x in h], what + " (eq. 81: w = "
                     "sigmoid(r_hat(y_r) - r_hat(y_c)) = sigmoid(-beta h), with the implicit "
                     "rewards r_hat = beta log pi / pi_ref)", atol=1e-6)
        # eq. 108: d loss / d pc_i = -beta w_i / N (the loss is the mean over pairs)
        loop = lambda *x, be=beta: _dpo_loop(*x, be)  # noqa: E731
        expect_close(-beta * out / N, _finite_difference(loop, (pc, pr, rc, rr), 0),
                     f"-beta * {what} / N vs finite differences of the mean DPO loss in pc "
                     "(eq. 108: the gradient is -beta w (grad log pi(y_c) - grad log pi(y_r)))",
                     atol=1e-6, rtol=1e-3)
    h = np.array([-40.0, -5.0, -1.0, 0.0, 1.0, 5.0, 40.0])
    zeros = _f32(np.zeros_like(h))
    what = f"dpo_gradient_weight(h = {h.tolist()}, beta=0.25)"
    out = _call(fn, what, (len(h),), _f32(h), zeros, zeros, zeros, 0.25)
    expect(bool(np.all(np.diff(out) < 0)), f"{what} must fall as h grows (a pair the implicit "
           f"reward already ranks right by a wide margin weighs little), got {out.tolist()}")
    expect(bool(np.all(out[h < 0] > 0.5)) and bool(np.all(out[h > 0] < 0.5)),
           f"{what}: a pair ranked the wrong way round (h < 0) must weigh more than 1/2, one "
           f"ranked right less, got {out.tolist()}")
    what = "dpo_gradient_weight(h = [1e4, -1e4], beta=1)"
    expect_close(_call(fn, what, (2,), _f32([1e4, -1e4]), _f32([0.0, 0.0]), _f32([0.0, 0.0]),
                       _f32([0.0, 0.0]), 1.0), [0.0, 1.0], what, atol=1e-7)
    expect_close(jit(fn)(*args, 0.5), [_sigmoid(-0.5 * x) for x in (pc - pr) - (rc - rr)],
                 "jax.jit(dpo_gradient_weight)(random pairs, beta)", atol=1e-6)


# ----------------------------------------------------------------------------------------------
# 8.3 The optimal policy of the KL-regularised objective (eqs. 82, 87, 94, 95)

TOY_REF = (0.5, 0.3, 0.2)
TOY_REWARDS = (1.0, 0.0, 2.0)
# the table of the optimum on three responses: beta -> (pi*, Z, J = beta log Z)
TOY_TABLE = {0.25: ((0.0438, 0.0005, 0.9558), 623.79, 1.6090),
             0.5: ((0.2477, 0.0201, 0.7322), 14.914, 1.3512),
             1.0: ((0.4333, 0.0956, 0.4711), 3.1370, 1.1433),
             2.0: ((0.4942, 0.1799, 0.3259), 1.6680, 1.0233),
             10.0: ((0.5038, 0.2735, 0.2227), 1.0969, 0.9246)}


def tilt_oracle(ref, rewards, beta) -> np.ndarray:
    """``pi*(y) = pi_ref(y) exp(r(y) / beta) / Z`` (eqs. 87, 95), in float64, shifted by the
    largest ``r / beta`` so that nothing overflows."""
    top = max(r / beta for r in rewards)
    weights = [p * math.exp(r / beta - top) for p, r in zip(ref, rewards)]
    z = sum(weights)
    return np.array([w / z for w in weights])


def _objective(pi, ref, rewards, beta) -> float:
    """``J(pi) = E_pi[r] - beta KL(pi || pi_ref)`` (eq. 82), with ``0 log 0 = 0``."""
    return sum(p * r - beta * (p * math.log(p / q) if p > 0 else 0.0)
               for p, q, r in zip(pi, ref, rewards))


def optimal_policy(fn):
    ref, rewards = _f32(TOY_REF), _f32(TOY_REWARDS)
    for beta, (pi_book, z_book, j_book) in TOY_TABLE.items():
        what = f"optimal_policy(pi_ref={list(TOY_REF)}, r={list(TOY_REWARDS)}, beta={beta})"
        out = _call(fn, what, (3,), ref, rewards, beta)
        expect_close(out, pi_book, what + " (the table: pi* = pi_ref "
                     f"exp(r / beta) / Z with Z = {z_book})", atol=6e-5)
        j = _objective(np.asarray(out, np.float64), TOY_REF, TOY_REWARDS, beta)
        expect_close(j, j_book, f"J(pi*) = E[r] - beta KL(pi* || pi_ref) at {what} (the table's "
                     "last column: the optimum equals beta log Z)", atol=2e-4)
    # the optimum beats every other policy, by exactly beta KL(pi || pi*) (eq. 94)
    rng = np.random.default_rng(2)
    K = 6
    ref6 = rng.dirichlet(np.ones(K))
    rewards6 = rng.normal(0.0, 1.0, K)
    beta = 0.7
    what = f"optimal_policy(random pi_ref [{K}], r [{K}], beta={beta})"
    out = np.asarray(_call(fn, what, (K,), _f32(ref6), _f32(rewards6), beta), np.float64)
    expect_close(out, tilt_oracle(ref6, rewards6, beta), what + " (eq. 95)", atol=1e-6)
    expect_close(out.sum(), 1.0, what + " must sum to 1 (divide by Z, eq. 87)", atol=1e-6)
    log_z = math.log(sum(p * math.exp(r / beta) for p, r in zip(ref6, rewards6)))
    for _ in range(3):
        pi = rng.dirichlet(np.ones(K))
        kl = float(np.sum(pi * np.log(pi / out)))
        expect_close(_objective(pi, ref6, rewards6, beta), beta * log_z - beta * kl,
                     f"J(pi) vs beta log Z - beta KL(pi || your pi*) for a random pi at {what} "
                     "(eq. 94: this identity holds only when pi* is the optimum)", atol=1e-5)
    what = f"optimal_policy(random pi_ref [{K}], r + 100, beta={beta})"
    expect_close(fn(_f32(ref6), _f32(rewards6 + 100.0), beta), tilt_oracle(ref6, rewards6, beta),
                 what + " (a reward shift is absorbed by Z: pi* does not change)", atol=1e-5)
    # extreme beta: log space, not exp(r / beta) / sum
    what = f"optimal_policy(pi_ref={list(TOY_REF)}, r={list(TOY_REWARDS)}, beta=0.005)"
    expect_close(_call(fn, what, (3,), ref, rewards, 0.005), tilt_oracle(TOY_REF, TOY_REWARDS,
                 0.005), what + " (beta -> 0: all mass on the best response; exp(2 / 0.005) "
                 "overflows, so work in log space: log pi_ref + r / beta - logsumexp(...))",
                 atol=1e-6)
    what = f"optimal_policy(pi_ref={list(TOY_REF)}, r={list(TOY_REWARDS)}, beta=1e4)"
    expect_close(_call(fn, what, (3,), ref, rewards, 1e4), TOY_REF,
                 what + " (beta -> infinity: pi* -> pi_ref)", atol=1e-3)
    betas = np.array(sorted(TOY_TABLE), np.float32)
    batched = vmap(fn, in_axes=(None, None, 0))(ref, rewards, jnp.asarray(betas))
    expect_close(batched, [tilt_oracle(TOY_REF, TOY_REWARDS, float(b)) for b in betas],
                 "jax.vmap(optimal_policy, in_axes=(None, None, 0))(pi_ref, r, the table's five "
                 "betas)", atol=1e-5)
    expect_close(jit(fn)(_f32(ref6), _f32(rewards6), beta), tilt_oracle(ref6, rewards6, beta),
                 "jax.jit(optimal_policy)(pi_ref, r, beta)", atol=1e-6)


# ----------------------------------------------------------------------------------------------
# 8.4 The population DPO loss on exact Bradley-Terry preferences (eqs. 96, 100, 104, 105)


def population_dpo_oracle(logits, ref, rewards, beta) -> float:
    """``1 / (K (K - 1)) sum_{i != j} p(i > j) * -log sigmoid(beta h_ij)`` with ``p(i > j) =
    sigmoid(r_i - r_j)`` (eq. 96), ``pi = softmax(logits)`` and ``beta h_ij = beta log
    pi_i / pi_ref_i - beta log pi_j / pi_ref_j``."""
    top = max(logits)
    log_norm = top + math.log(sum(math.exp(l - top) for l in logits))
    implicit = [beta * (l - log_norm - math.log(q)) for l, q in zip(logits, ref)]
    K = len(logits)
    total = 0.0
    for i in range(K):
        for j in range(K):
            if i != j:
                p = _sigmoid(rewards[i] - rewards[j])
                total += -p * _log_sigmoid(implicit[i] - implicit[j])
    return total / (K * (K - 1))


def population_dpo_loss(fn):
    ref, rewards = np.array(TOY_REF), np.array(TOY_REWARDS)
    what = f"population_dpo_loss(log pi_ref, pi_ref={list(TOY_REF)}, r={list(TOY_REWARDS)}, beta=0.5)"
    expect_close(_call(fn, what, (), _f32(np.log(ref)), _f32(ref), _f32(rewards), 0.5),
                 math.log(2) / 2, what + ": at pi = pi_ref every pair costs p log 2 and p(i > j) "
                 "+ p(j > i) = 1, so the average over ordered pairs is log(2) / 2", atol=1e-6)
    rng = np.random.default_rng(3)
    K = 5
    ref5 = rng.dirichlet(np.ones(K))
    rewards5 = rng.normal(0.0, 1.0, K)
    for beta in (0.1, 0.5, 2.0):
        logits = rng.normal(0.0, 1.5, K)
        what = f"population_dpo_loss(random logits [{K}], pi_ref, r, beta={beta})"
        expected = population_dpo_oracle(logits, ref5, rewards5, beta)
        expect_close(_call(fn, what, (), _f32(logits), _f32(ref5), _f32(rewards5), beta),
                     expected, what + " (every ordered pair i != j, labelled i > j with "
                     "probability sigmoid(r_i - r_j), averaged over the K (K - 1) pairs)",
                     atol=1e-5)
        grad = grad_of(fn)(_f32(logits), _f32(ref5), _f32(rewards5), beta)
        loop = lambda l, be=beta: population_dpo_oracle(l, ref5, rewards5, be)  # noqa: E731
        expect_close(grad, _finite_difference(loop, (logits,), 0), f"d {what} / d logits vs "
                     "finite differences", atol=1e-5, rtol=1e-3)
        expect_close(fn(_f32(logits + 3.0), _f32(ref5), _f32(rewards5), beta), expected,
                     what + " with 3 added to every logit (pi = softmax(logits) is unchanged)",
                     atol=1e-5)
        expect_close(fn(_f32(logits), _f32(ref5), _f32(rewards5 - 2.0), beta), expected,
                     what + " with 2 taken off every reward (Bradley-Terry sees differences)",
                     atol=1e-5)
        # eqs. 100, 104, 105: the minimiser is pi* = pi_ref exp(r / beta) / Z
        star = np.log(tilt_oracle(ref5, rewards5, beta))
        grad = grad_of(fn)(_f32(star), _f32(ref5), _f32(rewards5), beta)
        expect_close(grad, np.zeros(K), f"d population_dpo_loss / d logits at logits = log pi* "
                     f"(beta={beta}; eqs. 100, 104, 105: beta log pi* / pi_ref = r - beta log Z makes "
                     "every pair's sigmoid exactly the Bradley-Terry probability, so pi* is the "
                     "minimiser)", atol=2e-6)
        at_star = float(as_array(fn(_f32(star), _f32(ref5), _f32(rewards5), beta), "loss"))
        for _ in range(3):
            moved = star + rng.normal(0.0, 0.3, K)
            expect(float(as_array(fn(_f32(moved), _f32(ref5), _f32(rewards5), beta), "loss"))
                   > at_star, f"population_dpo_loss at a perturbed log pi* (beta={beta}) must "
                   f"exceed its value at log pi*, {at_star:.6f}")
    what = f"jax.jit(population_dpo_loss)(random logits [{K}], pi_ref, r, beta=0.5)"
    logits = rng.normal(0.0, 1.0, K)
    expect_close(jit(fn)(_f32(logits), _f32(ref5), _f32(rewards5), 0.5),
                 population_dpo_oracle(logits, ref5, rewards5, 0.5), what, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# 8.5 IPO (Azar et al. 2023)


def ipo_loss_oracle(pc, pr, rc, rr, beta) -> np.ndarray:
    """Per pair, ``(h_i - 1 / (2 beta))^2`` (Azar et al. 2023), ``[N]`` float64."""
    return np.array([((pc[i] - pr[i]) - (rc[i] - rr[i]) - 1 / (2 * beta)) ** 2
                     for i in range(len(pc))])


def _ipo_loop(pc, pr, rc, rr, beta) -> float:
    return float(np.mean(ipo_loss_oracle(pc, pr, rc, rr, beta)))


def ipo_loss(fn):
    what = f"ipo_loss({PAIR_TEXT}, beta=0.1)"
    expect_close(_call(fn, what, (1,), *PAIR_ARGS, 0.1), [9.0], what + " ((h - 1 / (2 beta))^2 "
                 "= (2 - 5)^2 = 9, one loss per pair)", atol=1e-5)
    rng = np.random.default_rng(4)
    N = 12
    pc, pr, rc, rr = _random_pairs(rng, N, scale=2.0)
    args = [_f32(x) for x in (pc, pr, rc, rr)]
    for beta in (0.1, 0.5, 2.0):
        what = f"ipo_loss({N} random pairs, beta={beta})"
        expect_close(_call(fn, what, (N,), *args, beta), ipo_loss_oracle(pc, pr, rc, rr, beta),
                     what + " ((h - 1 / (2 beta))^2 per pair; the log-probs as given, sums)",
                     atol=1e-4, rtol=1e-5)
        grads = grad_of_mean(fn, argnums=(0, 1, 2, 3))(*args, beta)
        loop = lambda *x, be=beta: _ipo_loop(*x, be)  # noqa: E731
        expect_close(grads[0], _finite_difference(loop, (pc, pr, rc, rr), 0),
                     f"d mean {what} / d pc vs finite differences (2 (h - 1 / (2 beta)) / N)",
                     atol=1e-4, rtol=1e-3)
        expect_close(np.concatenate([as_array(grads[2], "gradient"),
                                     as_array(grads[3], "gradient")]), np.zeros(2 * N),
                     f"d {what} / d (rc, rr) (the reference is frozen: stop_gradient)", atol=0)
    # the minimum is at h = 1 / (2 beta): finite, unlike DPO's h -> infinity
    beta = 0.25
    target = 1 / (2 * beta)
    what = f"ipo_loss(h = 1 / (2 beta) = {target}, beta={beta})"
    one = (_f32([target]), _f32([0.0]), _f32([0.0]), _f32([0.0]))
    expect_close(_call(fn, what, (1,), *one, beta), [0.0], what + " (the target margin)",
                 atol=1e-6)
    grad = grad_of_sum(fn)(*one, beta)
    expect_close(grad, [0.0], f"d {what} / d pc (zero at the target)", atol=1e-6)
    beyond = (_f32([target + 3.0]), _f32([0.0]), _f32([0.0]), _f32([0.0]))
    grad = grad_of_sum(fn)(*beyond, beta)
    expect_close(grad, [6.0], f"d ipo_loss / d pc at h = {target + 3.0} (past the target IPO "
                 "pulls h back down, where DPO would keep pushing it up)", atol=1e-5)
    expect_close(jit(fn)(*args, 0.5), ipo_loss_oracle(pc, pr, rc, rr, 0.5),
                 "jax.jit(ipo_loss)(random pairs, beta)", atol=1e-4)


# ----------------------------------------------------------------------------------------------
# 8.6 SimPO (Meng et al. 2024)


def simpo_loss_oracle(ac, ar, beta, gamma) -> np.ndarray:
    """Per pair, ``-log sigmoid(beta (ac_i - ar_i) - gamma)`` (Meng et al. 2024), ``[N]``."""
    return np.array([-_log_sigmoid(beta * (ac[i] - ar[i]) - gamma) for i in range(len(ac))])


def _simpo_loop(ac, ar, beta, gamma) -> float:
    return float(np.mean(simpo_loss_oracle(ac, ar, beta, gamma)))


def simpo_loss(fn):
    what = "simpo_loss(avg_chosen=[-1.0], avg_rejected=[-1.5], beta=2, gamma=1)"
    expect_close(_call(fn, what, (1,), _f32([-1.0]), _f32([-1.5]), 2.0, 1.0), [math.log(2)],
                 what + " (beta (ac - ar) = 1 equals the target margin gamma, so the loss is "
                 "-log sigmoid(0) = log 2)", atol=1e-6)
    what = "simpo_loss(avg_chosen=[-0.8], avg_rejected=[-0.8], beta=2, gamma=0.5)"
    expect_close(_call(fn, what, (1,), _f32([-0.8]), _f32([-0.8]), 2.0, 0.5),
                 [-_log_sigmoid(-0.5)], what + " (equal averages: -log sigmoid(-gamma) = 0.974077; "
                 "the margin gamma sits inside the sigmoid, subtracted)", atol=1e-6)
    rng = np.random.default_rng(5)
    N = 12
    ac, ar = rng.uniform(-3.0, -0.1, N), rng.uniform(-3.0, -0.1, N)
    for beta, gamma in ((2.0, 1.0), (2.5, 0.5), (0.5, 0.0)):
        what = f"simpo_loss({N} random average log-probs, beta={beta}, gamma={gamma})"
        expect_close(_call(fn, what, (N,), _f32(ac), _f32(ar), beta, gamma),
                     simpo_loss_oracle(ac, ar, beta, gamma), what + " (-log sigmoid(beta (ac - "
                     "ar) - gamma) per pair; no reference model)", atol=1e-5)
        grads = grad_of_mean(fn, argnums=(0, 1))(_f32(ac), _f32(ar), beta, gamma)
        loop = lambda a, b, be=beta, g=gamma: _simpo_loop(a, b, be, g)  # noqa: E731
        for k, name in ((0, "avg_chosen"), (1, "avg_rejected")):
            expect_close(grads[k], _finite_difference(loop, (ac, ar), k),
                         f"d mean {what} / d {name} vs finite differences", atol=1e-6,
                         rtol=1e-3)
    what = f"simpo_loss({N} random average log-probs + 0.05, beta=2, gamma=1)"
    expect_close(fn(_f32(ac + 0.05), _f32(ar + 0.05), 2.0, 1.0),
                 simpo_loss_oracle(ac, ar, 2.0, 1.0),
                 what + " (only the difference of the averages counts)", atol=1e-5)
    what = "simpo_loss(avg_chosen=[0, -1e4], avg_rejected=[-1e4, 0], beta=1, gamma=0)"
    expect_close(_call(fn, what, (2,), _f32([0.0, -1e4]), _f32([-1e4, 0.0]), 1.0, 0.0),
                 [0.0, 1e4], what + " (use jax.nn.log_sigmoid: finite for any margin)",
                 atol=1e-3, rtol=1e-4)
    expect_close(jit(fn)(_f32(ac), _f32(ar), 2.0, 1.0), simpo_loss_oracle(ac, ar, 2.0, 1.0),
                 "jax.jit(simpo_loss)(ac, ar, beta, gamma)", atol=1e-5)


# ----------------------------------------------------------------------------------------------
# 8.7 ORPO's odds-ratio term (Hong et al. 2024)


def _log_odds(a: float) -> float:
    """``log(P / (1 - P))`` with ``P = exp(a)``, ``a < 0``, in float64."""
    return a - math.log(-math.expm1(a))


def orpo_loss_oracle(ac, ar) -> np.ndarray:
    """Per pair, ``-log sigmoid(log odds(y_c) - log odds(y_r))`` with ``odds = P / (1 - P)``,
    ``P = exp(average log-prob)`` (Hong et al. 2024), ``[N]`` float64."""
    return np.array([-_log_sigmoid(_log_odds(ac[i]) - _log_odds(ar[i])) for i in range(len(ac))])


def _orpo_loop(ac, ar) -> float:
    return float(np.mean(orpo_loss_oracle(ac, ar)))


def orpo_odds_ratio_loss(fn):
    what = "orpo_odds_ratio_loss(avg_chosen=[log 0.5], avg_rejected=[log 0.2])"
    expect_close(_call(fn, what, (1,), _f32([math.log(0.5)]), _f32([math.log(0.2)])),
                 [math.log(1.25)], what + " (odds 1 and 0.25, odds ratio 4: -log sigmoid(log 4) = "
                 "-log(4 / 5) = 0.223144)", atol=1e-6)
    what = "orpo_odds_ratio_loss(avg_chosen=[-0.7], avg_rejected=[-0.7])"
    expect_close(_call(fn, what, (1,), _f32([-0.7]), _f32([-0.7])), [math.log(2)],
                 what + " (equal odds: log 2)", atol=1e-6)
    rng = np.random.default_rng(6)
    N = 12
    ac, ar = rng.uniform(-4.0, -0.01, N), rng.uniform(-4.0, -0.01, N)
    what = f"orpo_odds_ratio_loss({N} random average log-probs)"
    expect_close(_call(fn, what, (N,), _f32(ac), _f32(ar)), orpo_loss_oracle(ac, ar),
                 what + " (-log sigmoid(log odds(y_c) - log odds(y_r)) per pair, odds = P / (1 - "
                 "P) with P = exp(average log-prob): the log-ODDS, not the log-probs)", atol=1e-5)
    grads = grad_of_mean(fn, argnums=(0, 1))(_f32(ac), _f32(ar))
    for k, name in ((0, "avg_chosen"), (1, "avg_rejected")):
        expect_close(grads[k], _finite_difference(_orpo_loop, (ac, ar), k, step=1e-5),
                     f"d mean {what} / d {name} vs finite differences", atol=1e-5, rtol=1e-3)
    # P near 1: log(1 - P) must not round to log(0) or lose its digits
    what = "orpo_odds_ratio_loss(avg_chosen=[-1e-6], avg_rejected=[-3e-6])"
    expect_close(_call(fn, what, (1,), _f32([-1e-6]), _f32([-3e-6])),
                 orpo_loss_oracle([-1e-6], [-3e-6]),
                 what + " (P within 1e-6 of 1: odds ratio ~3, loss log(4/3) = 0.287682; in "
                 "float32, 1 - exp(a) keeps one digit, so compute log(1 - P) as log(-expm1(a)))",
                 atol=1e-4)
    grads = grad_of_sum(fn, argnums=(0, 1))(_f32([-1e-6]), _f32([-3e-6]))
    expect_finite(np.concatenate([as_array(g, "gradient") for g in grads]),
                  "d orpo_odds_ratio_loss / d (avg_chosen, avg_rejected) at P near 1")
    expect_close(jit(fn)(_f32(ac), _f32(ar)), orpo_loss_oracle(ac, ar),
                 "jax.jit(orpo_odds_ratio_loss)(ac, ar)", atol=1e-5)


# ----------------------------------------------------------------------------------------------
# 8.8 the DPO step (eq. 79, §8.3): sequence log-probs, loss and gradient on a tiny GPT
#
# Oracles: sequence log-probs summed token by token in float64 from gpt.forward's logits
# (position t - 1 scores token t; only completion tokens count), the per-pair losses of
# dpo_loss_oracle, the gradient by jax.grad of a loss written here without the library's
# functions, and eq. 81 at pi = pi_ref: loss log 2, gradient -beta/2 times that of the mean of
# log pi(y_c|x) - log pi(y_r|x).


@functools.lru_cache(maxsize=1)
def _tiny_gpt():
    """``(config, params)`` of the tiny GPT the step is graded on."""
    config = gpt.get_config("tiny")
    return config, gpt.init_params(jax.random.PRNGKey(0), config)


def _dpo_pairs(seed: int = 8, n: int = 3, T: int = 14):
    """Pairs as arrays: ``chosen``, ``chosen_mask``, ``rejected``, ``rejected_mask`` ``[n, T]``.
    Both halves of a pair share a prompt of 3-5 tokens; completions of 1-8 tokens; padding
    after them."""
    rng = np.random.default_rng(seed)
    halves = {name: np.full((n, T), tokenizer.PAD) for name in ("chosen", "rejected")}
    masks = {name: np.zeros((n, T), np.float32) for name in halves}
    for i in range(n):
        p = int(rng.integers(3, 6))
        prompt = rng.integers(0, 256, p)
        for name in halves:
            c = int(rng.integers(1, min(8, T - p) + 1))
            halves[name][i, :p] = prompt
            halves[name][i, p:p + c] = rng.integers(0, 256, c)
            masks[name][i, p:p + c] = 1.0
    return (jnp.asarray(halves["chosen"], jnp.int32), masks["chosen"],
            jnp.asarray(halves["rejected"], jnp.int32), masks["rejected"])


def sequence_logp_loop(logits, tokens, mask) -> np.ndarray:
    """``sum_t log softmax(logits[n, t - 1])[tokens[n, t]]`` over the ``t`` where ``mask`` is
    1, per row, in float64."""
    logits = np.asarray(logits, np.float64)
    tokens, mask = np.asarray(tokens), np.asarray(mask)
    out = np.zeros(tokens.shape[0])
    for n in range(tokens.shape[0]):
        for t in range(1, tokens.shape[1]):
            if mask[n, t] > 0:
                row = logits[n, t - 1]
                top = row.max()
                out[n] += row[tokens[n, t]] - top - math.log(np.exp(row - top).sum())
    return out


def _token_logp(params, tokens, mask):
    config = gpt.get_config("tiny")
    logits = gpt.forward(params, tokens, config)[:, :-1]
    picked = jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1)[..., 0]
    return picked * mask[:, 1:]


@jax.jit
def _dpo_oracle_grad(params, chosen, chosen_mask, rejected, rejected_mask, ref_c, ref_r, beta):
    """d/d params of the mean over pairs of -log sigmoid(beta h) (eq. 79)."""

    def loss(params):
        pc = jnp.sum(_token_logp(params, chosen, chosen_mask), axis=1)
        pr = jnp.sum(_token_logp(params, rejected, rejected_mask), axis=1)
        return -jnp.mean(jax.nn.log_sigmoid(beta * ((pc - ref_c) - (pr - ref_r))))

    return jax.grad(loss)(params)


@jax.jit
def _margin_grad(params, chosen, chosen_mask, rejected, rejected_mask):
    """d/d params of the mean over pairs of log pi(y_c|x) - log pi(y_r|x)."""

    def margin(params):
        return jnp.mean(jnp.sum(_token_logp(params, chosen, chosen_mask), axis=1)
                        - jnp.sum(_token_logp(params, rejected, rejected_mask), axis=1))

    return jax.grad(margin)(params)


@probe
def _jit_dpo_step(fn, params, chosen, chosen_mask, rejected, rejected_mask, weight, ref_chosen,
                  ref_rejected, model_config, beta, label_smoothing, nll_coef):
    """``jax.jit(fn)`` on a :class:`PreferenceBatch` and :class:`RefLogProbs` built here, where
    the function runs (8.8)."""
    batch = PreferenceBatch(chosen, chosen_mask, rejected, rejected_mask, weight)
    step = jax.jit(fn, static_argnames="model_config")
    return step(params, batch, RefLogProbs(ref_chosen, ref_rejected), model_config=model_config,
                beta=beta, label_smoothing=label_smoothing, nll_coef=nll_coef)


def _expect_grads(grads, expected, what, scale=None):
    require(isinstance(grads, dict) and jax.tree.structure(grads) == jax.tree.structure(expected),
            f"{what}: grads must be a pytree shaped like params (a dict of the same keys), got "
            f"{type(grads).__name__}")
    got = np.concatenate([as_array(g, what).reshape(-1) for g in jax.tree.leaves(grads)])
    want = np.concatenate([np.asarray(g, np.float64).reshape(-1) for g in jax.tree.leaves(expected)])
    scale = float(np.abs(want).max()) if scale is None else scale
    expect_close(got, want, what, atol=2e-4 * scale, rtol=2e-3)


def _unpack_dpo_step(out, what, n):
    require(isinstance(out, (tuple, list)) and len(out) == 3
            and isinstance(out[2], (tuple, list)) and len(out[2]) == 2,
            f"{what} must return (loss, grads, (chosen_logps, rejected_logps)), got "
            f"{type(out).__name__}")
    loss, grads, (pc, pr) = out
    loss = expect_finite(expect_shape(loss, (), what + " loss (a scalar)"), what + " loss")
    pc = expect_finite(expect_shape(pc, (n,), what + " chosen_logps"), what + " chosen_logps")
    pr = expect_finite(expect_shape(pr, (n,), what + " rejected_logps"), what + " rejected_logps")
    return loss, grads, pc, pr


_forward = jax.jit(gpt.forward, static_argnums=2)  # the oracle's logits, compiled once


def dpo_step(fn):
    config, params = _tiny_gpt()
    chosen, chosen_mask, rejected, rejected_mask = _dpo_pairs()
    n = chosen.shape[0]
    forward = _forward
    pc = sequence_logp_loop(forward(params, chosen, config), chosen, chosen_mask)
    pr = sequence_logp_loop(forward(params, rejected, config), rejected, rejected_mask)
    arrays = (params, chosen, _f32(chosen_mask), rejected, _f32(rejected_mask))

    def run(weight, ref_c, ref_r, beta, label_smoothing=0.0, nll_coef=0.0):
        return call(fn, _jit_dpo_step, *arrays, _f32(weight), _f32(ref_c), _f32(ref_r), config,
                    beta, label_smoothing, nll_coef)

    rng = np.random.default_rng(11)
    ref_c, ref_r = pc + rng.normal(0, 1.0, n), pr + rng.normal(0, 1.0, n)
    beta = 0.5
    what = f"dpo_step({n} pairs of a shared prompt, reference log-probs 1 nat away, beta=0.5)"
    loss, grads, got_c, got_r = _unpack_dpo_step(run(np.ones(n), ref_c, ref_r, beta), what, n)
    hint = (" (log pi(y|x) sums the completion's tokens only: mask 1, not the prompt, not the "
            "padding; each token's log-prob comes from the logits one position before it)")
    expect_close(got_c, pc, what + " chosen_logps" + hint, atol=1e-4)
    expect_close(got_r, pr, what + " rejected_logps" + hint, atol=1e-4)
    expect_close(loss, np.mean(dpo_loss_oracle(pc, pr, ref_c, ref_r, beta)),
                 what + " loss (eq. 79: -log sigmoid(beta h) per pair, then the MEAN over pairs)",
                 atol=1e-5)
    _expect_grads(grads, _dpo_oracle_grad(*arrays, _f32(ref_c), _f32(ref_r), beta),
                  what + " grads vs jax.grad of an independent eq. 79 loss (the reference "
                  "log-probs are constants)")

    what = f"dpo_step({n} pairs, policy = reference, beta=0.5)"
    loss, grads, _, _ = _unpack_dpo_step(run(np.ones(n), pc, pr, beta), what, n)
    expect_close(loss, math.log(2.0), what + " loss (every h is 0: log 2)", atol=2e-5)
    margin = _margin_grad(*arrays)
    _expect_grads(grads, jax.tree.map(lambda g: -beta / 2 * g, margin),
                  what + " grads vs -beta/2 grad mean(log pi(y_c|x) - log pi(y_r|x)) (eq. 81's "
                  "weight sigmoid(0) = 1/2)")

    weight = np.array([1.0, 0.0, 1.0])
    what = ("dpo_step(weights [1, 0, 1], label_smoothing=0.1, nll_coef=1.0: cDPO plus the "
            "chosen tokens' NLL)")
    loss, _, _, _ = _unpack_dpo_step(run(weight, ref_c, ref_r, beta, 0.1, 1.0), what, n)
    keep = weight > 0
    preference = np.mean(dpo_loss_oracle(pc, pr, ref_c, ref_r, beta, 0.1)[keep])
    nll = -pc[keep].sum() / np.asarray(chosen_mask)[keep].sum()
    expect_close(loss, preference + nll, what + " loss (the mean over the pairs of weight 1 only; "
                 "the NLL is the mean over their chosen completion tokens)", atol=1e-5)
