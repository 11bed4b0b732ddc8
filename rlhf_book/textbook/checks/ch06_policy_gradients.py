"""Grading checks for chapter 6 (policy gradients).

Oracles: the book's worked examples (loss aggregation, §6.2.2.1; PPO's case table, §6.1.5.1
and Figure 20; group advantages, §6.1.6 and Figure 22; Figure 21's value example and its lambda
sweep, and two episodes; truncated importance weights, §6.2.4; GSPO ratios, §6.1.7; CISPO's
per-token gradient weights, §6.1.8; RLOO, §6.1.4); plain float64
Python loops written from the equations (eqs. 47, 48, 49, 52, 57-58, 63, 65, 67-70, 75-77); and
math: group advantages sum to zero, RLOO's baseline leaves the sample out, ``G/(G-1)`` Dr. GRPO
= RLOO (eq. 60), the gradient of each loss, GAE's linearity ``d A_t / d r_s = (gamma
lambda)^(s-t)``, invariance to where a completion starts in its row, and ``jit``/``vmap``
agreeing with the eager, one-at-a-time result. The GRPO step (6.9) runs on a tiny GPT: its
log-probs against a per-token float64 loop over ``gpt.forward``'s logits, its loss against the
loops above, its gradient against ``jax.grad`` of a loss written in the check and, at the old
policy, against REINFORCE's.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_book.lm import gpt
from rlhf_book.textbook.checks import (as_array, call, expect_close, expect_finite, expect_shape,
                                       grad_of, grad_of_sum, jit, probe, require, vmap)


def _f32(x) -> jax.Array:
    return jnp.asarray(np.asarray(x, np.float32))


def _call(fn, what, shape, *args, **kwargs) -> np.ndarray:
    """``fn(*args, **kwargs)`` checked to be a finite array of ``shape``."""
    out = expect_shape(fn(*args, **kwargs), shape, what)
    return expect_finite(out, what)


@probe
def _grad_of_scaled(fn, r, advs, mask, mode, kwargs):
    """``d fn(r * advs, mask, mode, **kwargs) / d r``: the book's gradient demo (6.6)."""
    return jax.grad(lambda r: fn(r * advs, mask, mode, **kwargs))(r)


@probe
def _grad_of_first_advantage(fn, rewards, values, mask, gamma, lam):
    """``d A_0 / d rewards`` of GAE for the first row (6.8)."""
    return jax.grad(lambda r: fn(r, values, mask, gamma, lam)[0][0, 0])(rewards)


@probe
def _vmap_advantages(fn, rewards, values, mask):
    """GAE's advantages, vmapped over a leading batch axis at gamma=1, lam=0.95 (6.8)."""
    return jax.vmap(lambda r, v, m: fn(r, v, m, 1.0, 0.95)[0])(rewards, values, mask)


def _random_mask(rng, N, T, empty_row=True):
    """Right-padded completion masks of random lengths ``1..T``; row 1 empty if asked."""
    lengths = rng.integers(1, T + 1, N)
    mask = np.arange(T)[None] < lengths[:, None]
    if empty_row:
        mask[1] = False
    return mask.astype(np.float32)


# ----------------------------------------------------------------------------------------------
# 6.1 RLOO (eqs. 47, 48, 49)


def rloo_loop(rewards) -> np.ndarray:
    """``A_i = r_i - (1 / (G - 1)) sum_{j != i} r_j`` (eqs. 47, 48), one group per row."""
    rewards = np.asarray(rewards, np.float64)
    out = np.zeros(rewards.shape)
    for b, row in enumerate(rewards):
        G = len(row)
        for i in range(G):
            out[b, i] = row[i] - sum(row[j] for j in range(G) if j != i) / (G - 1)
    return out


def rloo_advantages(fn):
    what = "rloo_advantages([[1, 0, 0, 1]])"
    expect_close(_call(fn, what, (1, 4), _f32([[1, 0, 0, 1]])), [[2 / 3, -2 / 3, -2 / 3, 2 / 3]],
                 what + " (the book's example: a 1's baseline is the mean of the OTHER three "
                 "rewards, 1/3, so A = 2/3; eq. 49: 4/3 * (1 - 0.5) = 2/3)", atol=1e-6)
    for row, expected in (([1, 0, 0, 0], [1.0, -1 / 3, -1 / 3, -1 / 3]),
                          ([0.9, 0.1, 0.5, 0.3], [0.6, -0.4666667, 0.0666667, -0.2]),
                          ([1] + [0] * 7, [1.0] + [-1 / 7] * 7),
                          ([3.0, 1.0], [2.0, -2.0])):
        what = f"rloo_advantages([{row}])"
        expect_close(_call(fn, what, (1, len(row)), _f32([row])), [expected],
                     what + " (the leave-one-out baseline: r_i minus the mean of the other G - 1)",
                     atol=1e-6)

    rng = np.random.default_rng(0)
    B, G = 3, 5
    rewards = rng.standard_normal((B, G))
    what = f"rloo_advantages(random rewards [{B}, {G}])"
    out = _call(fn, what, (B, G), _f32(rewards))
    expect_close(out, rloo_loop(rewards), what + " (one prompt per ROW: the group is a row of "
                 "the [B, G] array, not a column)", atol=1e-5)
    expect_close(out.sum(axis=1), np.zeros(B), what + ": the advantages of a group sum to 0",
                 atol=1e-5)
    closed = G / (G - 1) * (rewards - rewards.mean(axis=1, keepdims=True))
    expect_close(out, closed, what + " vs eq. 49's closed form G/(G-1) (r_i - mean_j r_j)",
                 atol=1e-5)

    # the baseline leaves the sample out: changing r_0 leaves r_0 - A_0 (its baseline) as it was
    changed = rewards.copy()
    changed[:, 0] += 3.0
    base = rewards[:, 0] - out[:, 0]
    new = changed[:, 0] - as_array(fn(_f32(changed)), "rloo_advantages")[:, 0]
    expect_close(new, base, "the baseline r_0 - A_0 after adding 3 to r_0 (eq. 47: the baseline "
                 "of sample 0 is the mean of the other samples, so r_0 does not move it)",
                 atol=1e-5)

    what = f"rloo_advantages(random rewards [{B}, {G}] + 100)"
    expect_close(fn(_f32(rewards + 100.0)), rloo_loop(rewards),
                 what + " (adding a constant to every reward changes nothing)", atol=1e-4)
    what = "rloo_advantages([[0.7, 0.7, 0.7]])"
    expect_close(_call(fn, what, (1, 3), _f32([[0.7, 0.7, 0.7]])), np.zeros((1, 3)),
                 what + " (an all-equal group has zero advantage)", atol=1e-6)

    expect_close(jit(fn)(_f32(rewards)), rloo_loop(rewards),
                 "jax.jit(rloo_advantages)(rewards)", atol=1e-5)
    stack = rng.standard_normal((4, 2, 3))
    expect_close(vmap(fn)(_f32(stack)), np.stack([rloo_loop(s) for s in stack]),
                 "jax.vmap(rloo_advantages)(4 batches of [2, 3] rewards)", atol=1e-5)


# ----------------------------------------------------------------------------------------------
# 6.2 PPO's clipped objective (eq. 52)

# the book's case table for eps = 0.2: (A, rho, J, dJ/drho)
PPO_TABLE = ((+1, 0.5, 0.5, 1.0), (+1, 0.9, 0.9, 1.0), (+1, 1.0, 1.0, 1.0), (+1, 1.1, 1.1, 1.0),
             (+1, 1.5, 1.2, 0.0), (-1, 0.5, -0.8, 0.0), (-1, 0.9, -0.9, -1.0),
             (-1, 1.0, -1.0, -1.0), (-1, 1.1, -1.1, -1.0), (-1, 1.5, -1.5, -1.0))
PPO_NOTES = {(+1, 0.5): "A > 0, rho < 1 - eps: the unclipped branch rho A is the smaller one",
             (+1, 1.5): "A > 0, rho > 1 + eps: clipped to (1 + eps) A, flat",
             (-1, 0.5): "A < 0, rho < 1 - eps: clipped to (1 - eps) A, flat",
             (-1, 1.5): "A < 0, rho > 1 + eps: min picks the unclipped rho A = -1.5 (erratum "
                        "an erratum: this token still gets a gradient)"}


def ppo_loop(ratio, adv, low, high) -> np.ndarray:
    ratio, adv = np.asarray(ratio, np.float64), np.asarray(adv, np.float64)
    out = np.zeros(ratio.shape)
    for i in np.ndindex(ratio.shape):
        clipped = min(max(ratio[i], 1 - low), 1 + high)
        out[i] = min(ratio[i] * adv[i], clipped * adv[i])
    return out


def ppo_grad_loop(ratio, adv, low, high) -> np.ndarray:
    """dJ/drho away from the boundaries: A where the unclipped branch is chosen, else 0."""
    ratio, adv = np.asarray(ratio, np.float64), np.asarray(adv, np.float64)
    out = np.zeros(ratio.shape)
    for i in np.ndindex(ratio.shape):
        flat = (adv[i] > 0 and ratio[i] > 1 + high) or (adv[i] < 0 and ratio[i] < 1 - low)
        out[i] = 0.0 if flat else adv[i]
    return out


def ppo_objective(fn):
    rho = _f32([row[1] for row in PPO_TABLE])
    adv = _f32([row[0] for row in PPO_TABLE])
    out = _call(fn, "ppo_objective(rho, A)", (len(PPO_TABLE),), rho, adv, 0.2, 0.2)
    grad = as_array(grad_of_sum(fn)(rho, adv, 0.2, 0.2), "dJ/drho")
    for k, (a, r, j, dj) in enumerate(PPO_TABLE):
        note = PPO_NOTES.get((a, r), "inside the trust region: J = rho A")
        expect_close(out[k], j, f"ppo_objective(rho={r}, A={a:+d}, eps=0.2) (book Figure 20's "
                     f"case table {note})", atol=1e-6)
        expect_close(grad[k], dj, f"dJ/drho at rho={r}, A={a:+d}, eps=0.2 "
            f"(the book's example: {note})",
                     atol=1e-6)

    # DAPO's clip-higher: the two sides use their own epsilon
    for a, r, j in ((+1, 1.25, 1.25), (+1, 1.35, 1.28), (-1, 0.75, -0.8), (-1, 0.85, -0.85)):
        what = f"ppo_objective(rho={r}, A={a:+d}, clip_low=0.2, clip_high=0.28)"
        expect_close(_call(fn, what, (1,), _f32([r]), _f32([a]), clip_low=0.2, clip_high=0.28),
                     [j], what + " (clip(rho, 1 - clip_low, 1 + clip_high): the upper bound is "
                     "1.28, the lower 0.8)", atol=1e-6)
    what = "ppo_objective(rho=[0.5, 1.5], A=0)"
    expect_close(_call(fn, what, (2,), _f32([0.5, 1.5]), _f32([0.0, 0.0])), [0.0, 0.0],
                 what, atol=0)

    rng = np.random.default_rng(1)
    shape = (4, 7)
    ratio = rng.uniform(0.3, 2.0, shape)
    # keep away from the kinks at 1 - 0.1 and 1 + 0.3, where the gradient is ambiguous
    ratio = np.where(np.abs(ratio - 0.9) < 1e-2, 0.8, ratio)
    ratio = np.where(np.abs(ratio - 1.3) < 1e-2, 1.4, ratio)
    adv = rng.standard_normal(shape)
    what = f"ppo_objective(random rho [{shape[0]}, {shape[1]}], A, clip_low=0.1, clip_high=0.3)"
    expect_close(_call(fn, what, shape, _f32(ratio), _f32(adv), 0.1, 0.3),
                 ppo_loop(ratio, adv, 0.1, 0.3), what, atol=1e-5)
    grad = grad_of_sum(fn)(_f32(ratio), _f32(adv), 0.1, 0.3)
    expect_close(grad, ppo_grad_loop(ratio, adv, 0.1, 0.3), "dJ/drho of " + what + " (A where "
                 "the unclipped branch is the min, 0 where the clipped one is)", atol=1e-5)
    expect_close(jit(fn)(_f32(ratio), _f32(adv), 0.1, 0.3), ppo_loop(ratio, adv, 0.1, 0.3),
                 "jax.jit(ppo_objective)(rho, A, 0.1, 0.3)", atol=1e-5)


# ----------------------------------------------------------------------------------------------
# 6.3 GRPO and Dr. GRPO advantages (eqs. 57, 58)


def grpo_loop(rewards, scale=True, eps=1e-4, ddof=1) -> np.ndarray:
    """``(r_i - mean) / (std + eps)`` per row with the Bessel-corrected std (``scale=True``;
    ``ddof=0`` gives the population std), ``r_i - mean`` otherwise (eqs. 57, 58)."""
    rewards = np.asarray(rewards, np.float64)
    out = np.zeros(rewards.shape)
    for b, row in enumerate(rewards):
        G = len(row)
        mean = sum(row) / G
        std = math.sqrt(sum((x - mean) ** 2 for x in row) / (G - ddof))
        for i in range(G):
            out[b, i] = (row[i] - mean) / (std + eps) if scale else row[i] - mean
    return out


def grpo_advantages(fn):
    book = (([1, 0, 0, 0], [1.4997, -0.4999, -0.4999, -0.4999]),
            ([1, 1, 0, 0], [0.8659, 0.8659, -0.8659, -0.8659]),
            ([1] + [0] * 7, [2.4742] + [-0.3535] * 7),
            ([0.9, 0.1, 0.5, 0.3], [1.3171, -1.0244, 0.1463, -0.4390]))
    for row, expected in book:
        what = f"grpo_advantages([{row}])"
        out = _call(fn, what, (1, len(row)), _f32([row]))
        expect_close(out, [expected], what + " "
            "(the book's example: (r - mean) / (std + 1e-4) with the "
                     "Bessel-corrected std, ddof=1, as torch.std in the book's code; ddof=0 "
                     "would give 1.7317 for [1, 0, 0, 0])", atol=1.5e-4)
        expect_close(out, grpo_loop([row]), what + " ((r - mean) / (std + eps): eps is added to "
                     "the Bessel-corrected std, outside the square root)", atol=1e-5)
    for k, (a_c, a_i) in {1: (2.4742, -0.3535), 2: (1.6198, -0.5399), 4: (0.9352, -0.9352),
                          7: (0.3535, -2.4742)}.items():
        what = f"grpo_advantages(G = 8 binary rewards, {k} correct)"
        out = _call(fn, what, (1, 8), _f32([[1.0] * k + [0.0] * (8 - k)]))
        expect_close(out[0, [0, -1]], [a_c, a_i], what + " (the book's example: a correct and an "
                     "incorrect sample)", atol=1.5e-4)

    what = "grpo_advantages([[1, 0, 0, 0]], scale=False)"
    expect_close(_call(fn, what, (1, 4), _f32([[1, 0, 0, 0]]), scale=False),
                 [[0.75, -0.25, -0.25, -0.25]], what + " (Dr. GRPO, eq. 58: r - mean, no std)",
                 atol=1e-6)
    what = "grpo_advantages([[1, 0]], eps=1.0)"
    expect_close(_call(fn, what, (1, 2), _f32([[1, 0]]), eps=1.0), grpo_loop([[1, 0]], eps=1.0),
                 what + " (eps is added to the std, outside the square root: 0.5 / (0.7071 + 1))",
                 atol=1e-6)
    what = "grpo_advantages([[2, 2, 2, 2]])"
    expect_close(_call(fn, what, (1, 4), _f32([[2, 2, 2, 2]])), np.zeros((1, 4)),
                 what + " (an all-equal group: std = 0, A = 0 thanks to eps, not NaN)", atol=0)

    rng = np.random.default_rng(2)
    B, G = 4, 6
    rewards = rng.standard_normal((B, G))
    for scale in (True, False):
        what = f"grpo_advantages(random rewards [{B}, {G}], scale={scale})"
        out = _call(fn, what, (B, G), _f32(rewards), scale=scale)
        expect_close(out, grpo_loop(rewards, scale), what + " (one group per ROW)", atol=1e-5)
        expect_close(out.sum(axis=1), np.zeros(B), what + ": a group's advantages sum to 0",
                     atol=1e-5)
    out = as_array(fn(_f32(rewards), scale=False), "grpo_advantages")
    expect_close(G / (G - 1) * out, rloo_loop(rewards), "G/(G-1) * grpo_advantages(r, "
                 "scale=False) vs RLOO (eq. 60: Dr. GRPO is RLOO up to the factor G/(G-1))",
                 atol=1e-5)
    # eps -> 0 (1e-12: an eps of exactly 0 is refused, it divides by zero on a constant group)
    what = "grpo_advantages(3 * rewards + 5, eps=1e-12)"
    expect_close(fn(_f32(3 * rewards + 5), eps=1e-12), grpo_loop(rewards, eps=0.0),
                 what + " (with eps -> 0 the advantage ignores shift and scale of the rewards)",
                 atol=1e-4)

    jitted = jit(fn, static_argnames="scale")
    expect_close(jitted(_f32(rewards)), grpo_loop(rewards), "jax.jit(grpo_advantages)(rewards)",
                 atol=1e-5)
    stack = rng.standard_normal((3, 2, 4))
    expect_close(vmap(fn)(_f32(stack)), np.stack([grpo_loop(s) for s in stack]),
                 "jax.vmap(grpo_advantages)(3 batches of [2, 4] rewards)", atol=1e-5)


# ----------------------------------------------------------------------------------------------
# 6.4 GSPO's sequence ratio (eq. 63)


def gspo_ratio_loop(logp, old_logp, mask) -> np.ndarray:
    logp, old = np.asarray(logp, np.float64), np.asarray(old_logp, np.float64)
    mask = np.asarray(mask) > 0
    out = np.ones(len(logp))
    for n in range(len(logp)):
        diffs = [logp[n, t] - old[n, t] for t in range(logp.shape[1]) if mask[n, t]]
        if diffs:
            out[n] = math.exp(sum(diffs) / len(diffs))
    return out


def gspo_sequence_ratio(fn):
    old = np.full((2, 5), -2.0)
    logp = old + np.array([[0.1, -0.2, 0.3, 0, 0], [0.05] * 5])
    mask = np.array([[1, 1, 1, 0, 0], [1] * 5], np.float32)
    what = "gspo_sequence_ratio(log-ratios [0.1, -0.2, 0.3] and [0.05] * 5)"
    out = _call(fn, what, (2,), _f32(logp), _f32(old), _f32(mask))
    expect_close(out, [1.0689391, 1.0512711], what + " "
        "(the book's example: exp of the MEAN log-ratio, "
                 "the geometric mean of the token ratios; the product would be exp(0.2) = 1.2214)",
                 atol=1e-6)

    rng = np.random.default_rng(3)
    N, T = 5, 8
    mask = _random_mask(rng, N, T)
    old = -rng.uniform(0.1, 4.0, (N, T))
    logp = old + 0.3 * rng.standard_normal((N, T))
    garbage = np.where(mask > 0, logp, -1e4)  # padding holds anything at all
    what = f"gspo_sequence_ratio(random [{N}, {T}], right-padded mask, row 1 empty)"
    out = _call(fn, what, (N,), _f32(garbage), _f32(old), _f32(mask))
    expect_close(out, gspo_ratio_loop(logp, old, mask), what + " (the mean runs over the "
                 "completion's tokens only; an empty row has ratio 1)", atol=1e-5)

    # where the completion starts in its row does not matter
    shift = 3
    wide = lambda x, fill: np.concatenate([np.full((N, shift), fill), x], axis=1)  # noqa: E731
    what = "gspo_sequence_ratio(the same completions shifted right by 3 prompt positions)"
    expect_close(_call(fn, what, (N,), _f32(wide(garbage, 0.0)), _f32(wide(old, -5.0)),
                       _f32(wide(mask, 0.0))), out, what, atol=1e-6)

    # d rho_i / d logp_it = rho_i / |a_i| on the completion, 0 elsewhere
    grad = as_array(grad_of_sum(fn)(_f32(logp), _f32(old), _f32(mask)),
                    "gradient")
    lengths = np.maximum(mask.sum(axis=1, keepdims=True), 1)
    expected = np.where(mask > 0, gspo_ratio_loop(logp, old, mask)[:, None] / lengths, 0.0)
    expect_close(grad, expected, "d gspo_sequence_ratio / d logp (rho_i / |a_i| on each "
                 "completion token, 0 on padding)", atol=1e-5)

    what = "gspo_sequence_ratio(a token with log-ratio 1e4)"
    out = fn(_f32([[0.0, 0.0]]), _f32([[-1e4, 0.0]]), _f32([[1, 0]]))
    expect_finite(out, what + " (clamp the mean log-ratio to +-LOG_RATIO_CLAMP = 20 before exp, "
                  "as the module's ratios do, so that extreme log-probs give a finite ratio)")
    expect_close(jit(fn)(_f32(logp), _f32(old), _f32(mask)), gspo_ratio_loop(logp, old, mask),
                 "jax.jit(gspo_sequence_ratio)", atol=1e-5)
    stack = lambda x: np.stack([x, x[::-1]])  # noqa: E731
    expect_close(vmap(fn)(_f32(stack(logp)), _f32(stack(old)), _f32(stack(mask))),
                 np.stack([gspo_ratio_loop(logp, old, mask),
                           gspo_ratio_loop(logp[::-1], old[::-1], mask[::-1])]),
                 "jax.vmap(gspo_sequence_ratio)", atol=1e-5)


# ----------------------------------------------------------------------------------------------
# 6.5 CISPO (eqs. 65, 66, TRL's absolute cap)


def aggregate_loop(per_token, mask, mode, max_length=None) -> float:
    """Eqs. 67, 68, 69: per sequence (rows without tokens left out), per token, fixed length."""
    per_token = np.asarray(per_token, np.float64)
    mask = np.asarray(mask) > 0
    N, T = per_token.shape
    if mode == "per_sequence":
        means = [sum(per_token[n, t] for t in range(T) if mask[n, t]) / mask[n].sum()
                 for n in range(N) if mask[n].any()]
        return sum(means) / len(means) if means else 0.0
    total = sum(per_token[n, t] for n in range(N) for t in range(T) if mask[n, t])
    if mode == "per_token":
        return total / max(mask.sum(), 1)
    return total / (N * (T if max_length is None else max_length))


def aggregate_grad_loop(mask, mode, max_length=None) -> np.ndarray:
    """d loss / d per_token_loss: the weight each token gets (the book's example)."""
    mask = np.asarray(mask) > 0
    N, T = mask.shape
    if mode == "per_sequence":
        rows = max(int(mask.any(axis=1).sum()), 1)
        return np.where(mask, 1.0 / (np.maximum(mask.sum(axis=1, keepdims=True), 1) * rows), 0.0)
    if mode == "per_token":
        return np.where(mask, 1.0 / max(mask.sum(), 1), 0.0)
    return np.where(mask, 1.0 / (N * (T if max_length is None else max_length)), 0.0)


def _cispo_weight(logp, old, cap) -> np.ndarray:
    return np.minimum(np.exp(np.asarray(logp, np.float64) - np.asarray(old, np.float64)), cap)


def cispo_loss(fn):
    # d loss / d log pi for one token, cap 1.2 (1 + eps_high with eps_high = 0.2)
    for a in (+1.0, -1.0):
        for rho, weight in ((0.5, 0.5), (1.0, 1.0), (1.5, 1.2)):
            old = _f32([[-1.0]])
            logp = _f32([[-1.0 + math.log(rho)]])
            case = f"one token, rho={rho}, A={a:+g}, ratio_cap=1.2"
            grad = grad_of(fn)(logp, old, _f32([a]), _f32([[1.0]]), ratio_cap=1.2)
            expect_close(grad, [[-a * weight]], f"d cispo_loss / d logp for {case} "
                f"(the book's example: "
                         "-min(rho, cap) A; the weight is held constant (stop_gradient), never "
                         "zero, and has no lower clip: TRL's absolute cap, see the docstring)",
                         atol=1e-6)
            value = _call(fn, f"cispo_loss({case})", (), logp, old, _f32([a]), _f32([[1.0]]),
                          ratio_cap=1.2)
            expect_close(value, -a * weight * float(logp[0, 0]), f"cispo_loss({case}) (the value "
                         "is -min(rho, cap) A log pi)", atol=1e-6)

    rng = np.random.default_rng(4)
    N, T = 5, 7
    mask = _random_mask(rng, N, T)
    old = -rng.uniform(0.1, 3.0, (N, T))
    logp = old + 0.8 * rng.standard_normal((N, T))
    adv = rng.standard_normal(N)
    w = _cispo_weight(logp, old, 1.5)
    per_token = -w * adv[:, None] * logp
    for mode in ("per_token", "per_sequence", "fixed_length"):
        what = f"cispo_loss(random [{N}, {T}], A [{N}], ratio_cap=1.5, aggregation={mode!r})"
        out = _call(fn, what, (), _f32(logp), _f32(old), _f32(adv), _f32(mask), ratio_cap=1.5,
                    aggregation=mode)
        expect_close(out, aggregate_loop(per_token, mask, mode), what + " (-min(rho, cap) A "
                     "log pi per token, then aggregate_loss)", atol=1e-5)
    grad = grad_of(fn)(_f32(logp), _f32(old), _f32(adv), _f32(mask), 1.5)
    expected = -w * adv[:, None] * aggregate_grad_loop(mask, "per_token")
    expect_close(grad, expected, f"d cispo_loss / d logp (random [{N}, {T}], per token: "
                 "-min(rho, cap) A / (number of completion tokens); stop_gradient on the weight)",
                 atol=1e-5)
    grad_old = grad_of(fn, argnums=1)(_f32(logp), _f32(old), _f32(adv), _f32(mask), 1.5)
    expect_close(grad_old, np.zeros((N, T)), "d cispo_loss / d old_logp (the weight is a "
                 "constant: no gradient flows into the old policy)", atol=0)

    adv_t = rng.standard_normal((N, T))
    what = f"cispo_loss(random [{N}, {T}], A [{N}, {T}] per token)"
    expect_close(_call(fn, what, (), _f32(logp), _f32(old), _f32(adv_t), _f32(mask), 1.5),
                 aggregate_loop(-w * adv_t * logp, mask, "per_token"), what, atol=1e-5)

    # no token is dropped: far outside any trust region the gradient is still there
    rho = np.array([[0.05, 20.0]])
    grad = grad_of(fn)(_f32(-3.0 + np.log(rho)), _f32([[-3.0, -3.0]]), _f32([1.0]), _f32([[1, 1]]),
                       ratio_cap=5.0)
    expect_close(grad, [[-0.05 / 2, -5.0 / 2]], "d cispo_loss / d logp at rho = 0.05 and 20, "
                 "A = 1, cap 5 (every token keeps a gradient; the cap bounds the big one)",
                 atol=1e-6)
    what = "cispo_loss(log-probs of size 1e4)"
    big = _f32(-1e4 * rng.uniform(0, 1, (N, T)))
    expect_finite(fn(big, _f32(old), _f32(adv), _f32(mask)), what + " (min(rho, cap) of a ratio "
                  "e^1e4: clamp the log-ratio (the module's _ratio does) before exp)")
    jitted = jit(fn, static_argnames="aggregation")
    expect_close(jitted(_f32(logp), _f32(old), _f32(adv), _f32(mask), 1.5),
                 aggregate_loop(per_token, mask, "per_token"), "jax.jit(cispo_loss)", atol=1e-5)


# ----------------------------------------------------------------------------------------------
# 6.6 loss aggregation (eqs. 67, 68, 69)


def aggregate_loss(fn):
    # the book's two sequences, padded to a width of 12 > max_length = 10
    losses = np.zeros((2, 12))
    losses[0, :5] = [1, 1, 1, 1, 10]
    losses[1, :10] = [1] * 9 + [10]
    mask = np.zeros((2, 12), np.float32)
    mask[0, :5] = 1
    mask[1, :10] = 1
    garbage = np.where(mask > 0, losses, 1e4)  # padding must not count
    book = {"per_sequence": (2.35, "eq. 67: the mean of the sequence means 2.8 and 1.9",
                             [0.1, 0.05]),
            "per_token": (2.2, "eq. 68: 33 / 15, every token weighs the same", [1 / 15, 1 / 15]),
            "fixed_length": (1.65, "eq. 69 with max_length 10: the mean of 14/10 = 1.4 and "
                             "19/10 = 1.9", [0.05, 0.05])}
    for mode, (value, note, weights) in book.items():
        kwargs = {"max_length": 10} if mode == "fixed_length" else {}
        what = f"aggregate_loss(the book's [1, 1, 1, 1, 10] and [1] * 9 + [10], {mode!r})"
        out = _call(fn, what, (), _f32(garbage), _f32(mask), mode, **kwargs)
        expect_close(out, value, what + f" (book §6.2.2.1, {note})", atol=1e-5)
        grad = grad_of(fn)(_f32(garbage), _f32(mask), mode, **kwargs)
        expect_close(as_array(grad, "gradient")[:, 0], weights, f"d {what} / d loss_(i, 0) "
                     "(the book's per-token gradient weights: short sequence, long sequence)",
                     atol=1e-6)
        expect_close(as_array(grad, "gradient")[0, 5:], np.zeros(7), f"d {what} / d padding "
                     "(padding gets no gradient)", atol=0)

    # the book's gradient demo: ratio = 1, advantages 2, sequences of 4 and 7 tokens
    mask = np.array([[1, 1, 1, 1, 0, 0, 0], [1] * 7], np.float32)
    ones, advs = np.ones((2, 7)), np.full((2, 7), 2.0)
    demo = (("per_sequence", {}, 2.0, [0.25, 1 / 7], "masked_mean per sequence, then .mean()"),
            ("fixed_length", {"max_length": 7}, (8 / 7 + 2) / 2, [1 / 7, 1 / 7],
             "masked_sum / 7, then .mean()"),
            ("per_token", {}, 2.0, [2 / 11, 2 / 11], "with the advantages; the book's printed "
             "0.0909 = 1/11 leaves them out, an erratum (see the chapter guide)"))
    for mode, kwargs, value, weights, note in demo:
        what = f"aggregate_loss(ratio * advs, masks of 4 and 7 tokens, {mode!r})"
        expect_close(_call(fn, what, (), _f32(ones * advs), _f32(mask), mode, **kwargs), value,
                     what + f" (the book's example: {note})", atol=1e-5)
        grad = as_array(call(fn, _grad_of_scaled, _f32(ones), _f32(advs), _f32(mask), mode, kwargs),
                        "gradient")
        expect_close(grad[:, 0], weights, f"d {what} / d ratio (the book's gradients: {note})",
                     atol=1e-5)

    rng = np.random.default_rng(5)
    N, T = 6, 9
    mask = _random_mask(rng, N, T)
    per_token = rng.standard_normal((N, T))
    garbage = np.where(mask > 0, per_token, 1e4)
    for mode, kwargs in (("per_sequence", {}), ("per_token", {}), ("fixed_length", {}),
                         ("fixed_length", {"max_length": 16})):
        what = f"aggregate_loss(random [{N}, {T}], row 1 empty, {mode!r}, {kwargs})"
        out = _call(fn, what, (), _f32(garbage), _f32(mask), mode, **kwargs)
        hint = {"per_sequence": " (rows with no completion token are left out of the mean over "
                                "sequences)",
                "per_token": " (divide by the number of completion tokens in the batch)",
                "fixed_length": " (divide by N * max_length, max_length defaulting to T)"}[mode]
        expect_close(out, aggregate_loop(per_token, mask, mode, kwargs.get("max_length")),
                     what + hint, atol=1e-5)
        grad = grad_of(fn)(_f32(garbage), _f32(mask), mode, **kwargs)
        expect_close(grad, aggregate_grad_loop(mask, mode, kwargs.get("max_length")),
                     f"d {what} / d per_token_loss", atol=1e-6)
        jitted = jit(fn, static_argnums=(2, 3))
        expect_close(jitted(_f32(garbage), _f32(mask), mode, kwargs.get("max_length")),
                     aggregate_loop(per_token, mask, mode, kwargs.get("max_length")),
                     f"jax.jit({what})", atol=1e-5)
    what = "aggregate_loss(per_token_loss, mask as booleans, 'per_token')"
    expect_close(fn(_f32(garbage), jnp.asarray(mask > 0), "per_token"),
                 aggregate_loop(per_token, mask, "per_token"), what, atol=1e-5)
    empty = np.zeros((N, T), np.float32)
    for mode in ("per_sequence", "per_token", "fixed_length"):
        what = f"aggregate_loss(per_token_loss, an all-zero mask, {mode!r})"
        expect_close(expect_shape(fn(_f32(garbage), _f32(empty), mode), (), what), 0.0,
                     what + " (nothing counts: 0, not 0/0 = NaN)", atol=0)


# ----------------------------------------------------------------------------------------------
# 6.7 truncated importance sampling (eq. 70, the book's TIS code)


def tis_loop(learner, sampler, cap=2.0, log_clamp=10.0) -> np.ndarray:
    diff = np.asarray(learner, np.float64) - np.asarray(sampler, np.float64)
    return np.minimum(np.exp(np.clip(diff, -log_clamp, log_clamp)), cap)


def tis_weights(fn):
    log_ratio = np.array([-12.0, -0.5, 0.0, 0.5, 1.0, 12.0])
    sampler = np.full(6, -3.0)
    what = "tis_weights(log-ratios [-12, -0.5, 0, 0.5, 1, 12])"
    out = _call(fn, what, (6,), _f32(sampler + log_ratio), _f32(sampler))
    expect_close(out, [math.exp(-10), 0.6065307, 1.0, 1.6487213, 2.0, 2.0],
                 what + " (the book's example: min(exp(clip(log-ratio, -10, 10)), 2); the cap is "
                 "one-sided, ratios below 1 pass unchanged)", atol=1e-6, rtol=1e-5)
    what = "tis_weights(log-ratio 1.0, cap=3.0)"
    expect_close(_call(fn, what, (1,), _f32([0.0]), _f32([-1.0]), cap=3.0), [math.e],
                 what + " (e < 3: not truncated)", atol=1e-5)
    what = "tis_weights(log-ratio -12, log_clamp=5.0)"
    expect_close(_call(fn, what, (1,), _f32([-12.0]), _f32([0.0]), log_clamp=5.0),
                 [math.exp(-5)], what + " (the log-ratio is clamped to +-log_clamp)", atol=1e-7)

    rng = np.random.default_rng(6)
    shape = (3, 4, 5)
    sampler = -rng.uniform(0.1, 5.0, shape)
    learner = sampler + rng.standard_normal(shape)
    what = f"tis_weights(random {list(shape)})"
    out = _call(fn, what, shape, _f32(learner), _f32(sampler))
    expect_close(out, tis_loop(learner, sampler), what + " (any shape, elementwise)", atol=1e-5)
    grad = grad_of_sum(fn)(_f32(learner), _f32(sampler))
    expect_close(grad, np.zeros(shape), "d sum(tis_weights) / d learner_logp (the weights "
                 "are constants: stop_gradient, eq. 71's tilde rho is not differentiated)", atol=0)
    what = "tis_weights(learner log-probs of size 1e4)"
    expect_close(_call(fn, what, (2,), _f32([0.0, -1e4]), _f32([-1e4, 0.0])),
                 [2.0, math.exp(-10)], what, atol=1e-6, rtol=1e-4)
    expect_close(jit(fn)(_f32(learner), _f32(sampler)), tis_loop(learner, sampler),
                 "jax.jit(tis_weights)", atol=1e-5)


# ----------------------------------------------------------------------------------------------
# 6.8 GAE (eqs. 75, 76, 77, the book's GAE code)


def gae_loop(rewards, values, mask, gamma, lam) -> np.ndarray:
    """Eq. 77 per row, over the row's completion tokens only (in order), the value after the
    last one being 0: ``A_t = sum_l (gamma lam)^l delta_{t+l}``."""
    rewards, values = np.asarray(rewards, np.float64), np.asarray(values, np.float64)
    mask = np.asarray(mask) > 0
    out = np.zeros(rewards.shape)
    for n in range(len(rewards)):
        idx = [t for t in range(rewards.shape[1]) if mask[n, t]]
        r, v = [rewards[n, t] for t in idx], [values[n, t] for t in idx] + [0.0]
        deltas = [r[k] + gamma * v[k + 1] - v[k] for k in range(len(idx))]
        for k, t in enumerate(idx):
            out[n, t] = sum((gamma * lam) ** l * deltas[k + l] for l in range(len(idx) - k))
    return out


def compute_gae(fn):
    rewards = _f32([[0, 0, 0, 0, 0, 0.73]])
    values = _f32([[0.45, 0.55, 0.62, 0.68, 0.71, 0.73]])
    ones = _f32(np.ones((1, 6)))
    sweep = {0.0: [0.10, 0.07, 0.06, 0.03, 0.02, 0.0], 0.5: [0.155, 0.11, 0.08, 0.04, 0.02, 0.0],
             0.95: [0.26266138, 0.1712225, 0.10655, 0.049, 0.02, 0.0],
             1.0: [0.28, 0.18, 0.11, 0.05, 0.02, 0.0]}
    for lam, expected in sweep.items():
        what = f"compute_gae(Figure 21's rewards and values, gamma=1, lam={lam})"
        out = fn(rewards, values, ones, gamma=1.0, lam=lam)
        require(isinstance(out, tuple) and len(out) == 2,
                f"{what} must return a pair (advantages, returns), got {type(out).__name__}")
        adv = _call(lambda: out[0], what + " advantages", (1, 6))
        ret = _call(lambda: out[1], what + " returns", (1, 6))
        note = {0.0: "lam = 0 is one-step TD: delta_t", 1.0: "lam = 1 is the Monte-Carlo return "
                "0.73 minus V"}.get(lam, "eq. 77: sum_l (gamma lam)^l delta_{t+l}")
        expect_close(adv, [expected], what + f" "
            f"(the book's example: {note}; V after the last token is 0)",
                     atol=1e-5)
        expect_close(ret, np.asarray(values) + np.asarray([expected]), what + " returns "
                     "(returns = advantages + values, the critic's targets)", atol=1e-5)

    # two episodes, one per row, the second right-padded (padding holds garbage)
    rewards = _f32([[0, 0, 1.0], [0, 0.5, 9.0]])
    values = _f32([[0.2, 0.4, 0.6], [0.1, 0.3, 9.0]])
    mask = _f32([[1, 1, 1], [1, 1, 0]])
    book_gae = {1.0: ([0.8, 0.6, 0.4], [0.4, 0.2]), 0.95: ([0.751, 0.58, 0.4], [0.39, 0.2]),
                0.0: ([0.2, 0.2, 0.4], [0.2, 0.2])}
    for lam, (first, second) in book_gae.items():
        what = f"compute_gae(the book's example episodes in two rows, gamma=1, lam={lam})"
        adv, ret = fn(rewards, values, mask, gamma=1.0, lam=lam)
        expect_close(_call(lambda: adv, what, (2, 3)), [first, second + [0.0]],
                     what + " (each row ends after its last completion token: no bootstrap from "
                     "padding, and 0 on padding)", atol=1e-5)
        expect_close(_call(lambda: ret, what + " returns", (2, 3))[:, :2],
                     (np.asarray(adv) + np.asarray(values))[:, :2], what + " returns", atol=1e-5)
        expect_close(np.asarray(ret)[1, 2], 0.0, what + " returns on padding (0)", atol=0)

    rng = np.random.default_rng(7)
    N, T = 4, 9
    mask = _random_mask(rng, N, T)
    mask[2] = 0
    mask[2, [1, 2, 5, 6]] = 1  # a prompt before it and a hole inside: both skipped
    rewards, values = rng.standard_normal((N, T)), rng.standard_normal((N, T))
    for gamma, lam in ((1.0, 0.95), (0.9, 0.8), (0.99, 1.0), (0.5, 0.0)):
        what = f"compute_gae(random [{N}, {T}], gamma={gamma}, lam={lam})"
        adv, ret = fn(_f32(rewards), _f32(values), _f32(mask), gamma=gamma, lam=lam)
        expected = gae_loop(rewards, values, mask, gamma, lam)
        expect_close(_call(lambda: adv, what, (N, T)), expected, what + " (positions off the "
                     "mask are skipped: V(s_{t+1}) is the value of the next completion token)",
                     atol=1e-5)
        expect_close(_call(lambda: ret, what + " returns", (N, T)),
                     np.where(mask > 0, expected + values, 0.0), what + " returns", atol=1e-5)

    # a completion shifted right by a prompt gives the same advantages, shifted
    shift = 4
    pad = lambda x, fill: np.concatenate([np.full((N, shift), fill), x], axis=1)  # noqa: E731
    what = "compute_gae(the same completions after a 4-token prompt with non-zero rewards)"
    adv, _ = fn(_f32(pad(rewards, 5.0)), _f32(pad(values, -3.0)), _f32(pad(mask, 0.0)), 1.0, 0.95)
    expect_close(_call(lambda: adv, what, (N, T + shift))[:, shift:],
                 gae_loop(rewards, values, mask, 1.0, 0.95), what, atol=1e-5)
    expect_close(np.asarray(adv)[:, :shift], np.zeros((N, shift)), what + " on the prompt (0)",
                 atol=0)

    # linear in the rewards: d A_0 / d r_s = (gamma lam)^s
    gamma, lam = 0.9, 0.8
    full = _f32(np.ones((1, 6)))
    grad = call(fn, _grad_of_first_advantage, _f32(rewards[:1, :6]), _f32(values[:1, :6]), full,
                gamma, lam)
    expect_close(grad, [(gamma * lam) ** np.arange(6)], "d A_0 / d r_s for one full row, "
                 "gamma=0.9, lam=0.8 (eq. 77: (gamma lam)^s)", atol=1e-5)

    jitted = jit(fn)
    expect_close(jitted(_f32(rewards), _f32(values), _f32(mask), 0.9, 0.8)[0],
                 gae_loop(rewards, values, mask, 0.9, 0.8), "jax.jit(compute_gae)", atol=1e-5)
    stack = lambda x: np.stack([x, x[::-1]])  # noqa: E731
    expect_close(call(fn, _vmap_advantages, _f32(stack(rewards)), _f32(stack(values)),
                      _f32(stack(mask))),
                 np.stack([gae_loop(rewards, values, mask, 1.0, 0.95),
                           gae_loop(rewards[::-1], values[::-1], mask[::-1], 1.0, 0.95)]),
                 "jax.vmap(compute_gae)(2 batches)", atol=1e-5)


# ----------------------------------------------------------------------------------------------
# 6.9 the GRPO step on a fixed rollout (eqs. 52, 55, 56, 57, 58, 67, 68, 69)
#
# A tiny GPT and a rollout of B = 2 prompts x G = 4 completions whose prompts and completions
# differ in length (one completion is empty). Oracles: the log-probs from gpt.forward's logits
# by a per-token float64 loop, the advantages by grpo_loop, the surrogate and k3 per token and
# the aggregation by aggregate_loop; the gradient by jax.grad of a loss written here without
# the library's loss functions; and the invariants: at rho = 1 the gradient is REINFORCE's with
# advantage A, and a batch whose groups all tie has loss 0 and gradient 0.

GRPO_STEP_STATIC = ("model_config", "aggregation", "scale")
_GRPO_B, _GRPO_G, _GRPO_T = 2, 4, 12


@functools.lru_cache(maxsize=1)
def _tiny_gpt():
    """``(config, params)`` of the tiny GPT the step is graded on."""
    config = gpt.get_config("tiny")
    return config, gpt.init_params(jax.random.PRNGKey(0), config)


_forward = jax.jit(gpt.forward, static_argnums=2)  # the oracle's logits, compiled once


def _grpo_rollout(seed: int = 9):
    """``(tokens [N, T], mask [N, T])``: prompts of 2-4 tokens, completions of 0-7 tokens,
    then padding; row 5's completion is empty."""
    rng = np.random.default_rng(seed)
    N, T = _GRPO_B * _GRPO_G, _GRPO_T
    tokens = rng.integers(0, 256, (N, T))
    mask = np.zeros((N, T), np.float32)
    for n in range(N):
        start = int(rng.integers(2, 5))
        length = 0 if n == 5 else int(rng.integers(1, T - start + 1))
        mask[n, start:start + length] = 1.0
        tokens[n, start + length:] = 0
    return jnp.asarray(tokens, jnp.int32), mask


def token_logp_loop(logits, tokens, mask, temperature=1.0) -> np.ndarray:
    """``log softmax(logits[n, t - 1] / temperature)[tokens[n, t]]`` where ``mask[n, t]`` is 1,
    else 0, token by token in float64 (position ``t`` is predicted by position ``t - 1``)."""
    logits = np.asarray(logits, np.float64) / temperature
    tokens, mask = np.asarray(tokens), np.asarray(mask)
    out = np.zeros(tokens.shape)
    for n in range(tokens.shape[0]):
        for t in range(1, tokens.shape[1]):
            if mask[n, t] > 0:
                row = logits[n, t - 1]
                top = row.max()
                out[n, t] = row[tokens[n, t]] - top - math.log(np.exp(row - top).sum())
    return out


def grpo_step_loss_loop(logp, old_logp, ref_logp, rewards, mask, beta, clip_low, clip_high,
                        aggregation, scale=True) -> float:
    """The GRPO loss of a rollout in float64: eq. 57's advantage per group (row ``b * G + g``
    is completion ``g`` of prompt ``b``), eq. 52 per token, k3 per token, each aggregated."""
    adv = grpo_loop(rewards, scale).reshape(-1)
    logp, old_logp, ref_logp = (np.asarray(x, np.float64) for x in (logp, old_logp, ref_logp))
    N, T = logp.shape
    policy, kl = np.zeros((N, T)), np.zeros((N, T))
    for n in range(N):
        for t in range(T):
            rho = math.exp(min(max(logp[n, t] - old_logp[n, t], -20.0), 20.0))
            clipped = min(max(rho, 1 - clip_low), 1 + clip_high)
            policy[n, t] = -min(rho * adv[n], clipped * adv[n])
            d = ref_logp[n, t] - logp[n, t]
            kl[n, t] = math.exp(d) - d - 1.0
    return (aggregate_loop(policy, mask, aggregation)
            + beta * aggregate_loop(kl, mask, aggregation))


def _reduce(per_token, mask, aggregation):
    """Eqs. 67, 68, 69 in a few lines of jnp, for the oracle losses below."""
    total = jnp.sum(per_token * mask, axis=1)
    count = jnp.sum(mask, axis=1)
    if aggregation == "per_sequence":
        rows = count > 0
        return jnp.sum(jnp.where(rows, total / jnp.maximum(count, 1), 0)) / jnp.sum(rows)
    if aggregation == "per_token":
        return jnp.sum(total) / jnp.sum(count)
    return jnp.sum(total) / mask.size


def _oracle_logp(params, tokens, config, mask, temperature=1.0):
    logits = gpt.forward(params, tokens, config)[:, :-1] / temperature
    picked = jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1)[..., 0]
    return jnp.concatenate([jnp.zeros((tokens.shape[0], 1)), picked], axis=1) * mask


@jax.jit
def _grpo_oracle_grad(params, tokens, mask, adv, old_logp, ref_logp, beta):
    """d/d params of eq. 52's clipped surrogate + beta k3, per sequence, clip 0.2."""

    def loss(params):
        logp = _oracle_logp(params, tokens, gpt.get_config("tiny"), mask)
        rho = jnp.exp(logp - old_logp)
        surrogate = jnp.minimum(rho * adv[:, None], jnp.clip(rho, 0.8, 1.2) * adv[:, None])
        d = ref_logp - logp
        return _reduce(-surrogate + beta * (jnp.exp(d) - d - 1), mask, "per_sequence")

    return jax.grad(loss)(params)


@jax.jit
def _reinforce_grad(params, tokens, mask, adv):
    """d/d params of REINFORCE's ``-A log pi`` per token, aggregated per sequence."""

    def loss(params):
        logp = _oracle_logp(params, tokens, gpt.get_config("tiny"), mask)
        return _reduce(-adv[:, None] * logp, mask, "per_sequence")

    return jax.grad(loss)(params)


def _expect_grads(grads, expected, what):
    """The gradient pytree has the structure of params and matches ``expected`` leaf by leaf,
    one sub-check over all the scalars."""
    require(isinstance(grads, dict) and jax.tree.structure(grads) == jax.tree.structure(expected),
            f"{what}: grads must be a pytree shaped like params (a dict of the same keys), got "
            f"{type(grads).__name__}")
    got = np.concatenate([as_array(g, what).reshape(-1) for g in jax.tree.leaves(grads)])
    want = np.concatenate([np.asarray(g, np.float64).reshape(-1) for g in jax.tree.leaves(expected)])
    scale = float(np.abs(want).max())
    expect_close(got, want, what, atol=2e-4 * scale, rtol=2e-3)


def _unpack_step(out, what, N, T):
    require(isinstance(out, (tuple, list)) and len(out) == 3,
            f"{what} must return (loss, grads, logp), got {type(out).__name__}"
            + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else ""))
    loss, grads, logp = out
    loss = expect_finite(expect_shape(loss, (), what + " loss (a scalar)"), what + " loss")
    logp = expect_finite(expect_shape(logp, (N, T), what + " logp"), what + " logp")
    return loss, grads, logp


def grpo_step(fn):
    config, params = _tiny_gpt()
    tokens, mask = _grpo_rollout()
    N, T = mask.shape
    logits = np.asarray(_forward(params, tokens, config))
    logp = token_logp_loop(logits, tokens, mask)
    rewards = np.array([[1.0, 0.0, 0.5, 1.0], [0.2, 0.9, 0.4, 0.3]])
    adv = grpo_loop(rewards).reshape(-1)
    step = jit(fn, static_argnames=GRPO_STEP_STATIC)

    def run(rewards, old, ref, beta, aggregation="per_sequence", scale=True, temperature=1.0,
            clip_high=0.2):
        return step(params, tokens, _f32(mask), _f32(rewards), _f32(old), _f32(ref),
                    model_config=config, beta=beta, clip_low=0.2, clip_high=clip_high,
                    aggregation=aggregation, scale=scale, temperature=temperature)

    # at the old policy (rho = 1) and the reference (k3 = 0): the loss is -mean(A) over the
    # rows with a completion, and the gradient REINFORCE's
    what = "grpo_step(rollout [8, 12] of 2 prompts x 4, old_logp = ref_logp = the policy's own)"
    loss, grads, got_logp = _unpack_step(run(rewards, logp, logp, 0.04), what, N, T)
    expect_close(got_logp, logp, what + " logp (log pi(tokens[:, t] | tokens[:, :t]) comes "
                 "from logits[:, t - 1]: shift by one; 0 where mask is 0)", atol=2e-5)
    expect_close(loss, grpo_step_loss_loop(logp, logp, logp, rewards, mask, 0.04, 0.2, 0.2,
                                           "per_sequence"),
                 what + " loss (at rho = 1 it is minus the aggregated advantages: eq. 57 per "
                 "group of G consecutive rows, row b * G + g is completion g of prompt b; the "
                 "row without a completion token is left out of the mean)", atol=2e-5)
    _expect_grads(grads, _reinforce_grad(params, tokens, _f32(mask), _f32(adv)),
                  what + " grads vs REINFORCE's gradient of -A log pi (at rho = 1 the clipped "
                  "surrogate's gradient is REINFORCE's, and k3's is 0 at the reference)")

    # off-policy: ratios far enough from 1 for the clip to bind, and a KL to a distinct reference
    rng = np.random.default_rng(10)
    old = np.where(mask > 0, logp + 0.4 * rng.standard_normal((N, T)), 0.0)
    ref = np.where(mask > 0, logp + 0.3 * rng.standard_normal((N, T)), 0.0)
    what = "grpo_step(the rollout, old_logp and ref_logp 0.3-0.4 away, beta=0.1)"
    loss, grads, _ = _unpack_step(run(rewards, old, ref, 0.1), what, N, T)
    expect_close(loss, grpo_step_loss_loop(logp, old, ref, rewards, mask, 0.1, 0.2, 0.2,
                                           "per_sequence"),
                 what + " loss (eq. 52: -min(rho A, clip(rho, 1 - clip_low, 1 + clip_high) A) "
                 "per token with rho = exp(logp - old_logp), plus beta * k3 with k3 = "
                 "exp(ref - logp) - (ref - logp) - 1)", atol=2e-5)
    _expect_grads(grads, _grpo_oracle_grad(params, tokens, _f32(mask), _f32(adv), _f32(old),
                                           _f32(ref), 0.1),
                  what + " grads vs jax.grad of an independent loss (the advantages, old_logp "
                  "and ref_logp are constants; clipped tokens whose advantage pushes past the "
                  "clip get no gradient)")

    for aggregation, scale, temperature, clip_high in (("per_token", False, 1.0, 0.28),
                                                       ("fixed_length", True, 0.7, 0.2)):
        what = (f"grpo_step(the rollout off-policy, aggregation={aggregation!r}, scale={scale}, "
                f"temperature={temperature}, clip_high={clip_high})")
        expected_logp = token_logp_loop(logits, tokens, mask, temperature)
        loss, _, got_logp = _unpack_step(run(rewards, old, ref, 0.1, aggregation, scale,
                                             temperature, clip_high), what, N, T)
        if temperature != 1.0:
            expect_close(got_logp, expected_logp, what + " logp (softmax of logits / "
                         "temperature)", atol=2e-5)
        expect_close(loss, grpo_step_loss_loop(expected_logp, old, ref, rewards, mask, 0.1, 0.2,
                                               clip_high, aggregation, scale),
                     what + " loss (per_token: every token of the batch weighs the same, eq. 68; "
                     "fixed_length: the sum over N * T, eq. 69; scale=False: Dr. GRPO's r - mean, "
                     "eq. 58)", atol=2e-5)

    ties = np.array([[0.5, 0.5, 0.5, 0.5], [1.0, 1.0, 1.0, 1.0]])
    what = "grpo_step(every group's rewards tie, off-policy, beta=0)"
    loss, grads, _ = _unpack_step(run(ties, old, ref, 0.0), what, N, T)
    expect_close(loss, 0.0, what + " loss (A = 0 in every group: 0, not NaN)", atol=1e-7)
    flat = np.concatenate([as_array(g, what).reshape(-1) for g in jax.tree.leaves(grads)])
    expect_close(np.abs(flat).max(), 0.0, what + " grads (a group whose rewards tie has A = 0 "
                 "and gives no gradient)", atol=1e-10)
