"""Grading checks for chapter 3 (training overview), and their float64 oracles.

The oracles are public, so that the tests import them instead of keeping copies: plain Python
loops in float64 written from the equations -- :func:`returns_loop`, the return-to-go
``G_t = sum_k gamma^k r_{t+k}`` (book §6.1, eqs. 24, 25 as corrected, with the reward ``r_t``
of step ``t`` counted undiscounted; ``G_0`` is §3.1's eq. 2); :func:`gym_step` /
:func:`gym_steps`, a line-by-line transcription of Gym ``CartPole-v1``'s ``step`` (book
§3.1.2, eqs. 5, 6, 7, 8, 9, with its termination test); and :func:`reinforce_loop`, the
REINFORCE sum ``-(1/E) sum_e sum_t mask log pi (G - b)`` (book §6.1.3, eq. 45). The checks
add the closed forms the code must agree with (the plain sum at ``gamma = 1``, the geometric
series for constant rewards), two CartPole test vectors computed with ``gymnasium``'s
``CartPole-v1``, and the gradient ``d loss / d logp = -mask (G - b) / E``.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from rlhf_book.textbook.checks import (as_array, expect, expect_close, expect_dtype, expect_finite,
                                       expect_shape, grad_of, jit, require, vmap)


# ----------------------------------------------------------------------------------------------
# 3.1 discounted returns-to-go


def returns_loop(rewards, gamma, dones=None):
    """``G_t = sum_{k >= t} gamma^(k-t) r_k`` in float64, the sum stopping after the first done
    at or after ``t`` (book §6.1, eqs. 24, 25, corrected); ``rewards [T]`` or ``[B, T]``, rows
    independent; returns the shape of ``rewards``."""
    rewards = np.asarray(rewards, np.float64)
    rows = rewards.reshape(-1, rewards.shape[-1])
    ends = np.zeros(rows.shape, bool) if dones is None else np.asarray(dones, bool).reshape(rows.shape)
    out = np.zeros(rows.shape)
    for b, row in enumerate(rows):
        T = len(row)
        for t in range(T):
            total = 0.0
            for k in range(t, T):
                total += gamma ** (k - t) * row[k]
                if ends[b, k]:
                    break
            out[b, t] = total
    return out.reshape(rewards.shape)


def discounted_returns(fn):
    rng = np.random.default_rng(0)

    what = "discounted_returns([1, 0, 1, 1], gamma=1)"
    expect_close(fn(jnp.array([1.0, 0.0, 1.0, 1.0]), 1.0), [3.0, 2.0, 2.0, 1.0], what)

    what = "discounted_returns([1, 2, 3], gamma=0.5)"
    expect_close(fn(jnp.array([1.0, 2.0, 3.0]), 0.5), [2.75, 3.5, 3.0], what
                 + " (G_t = r_t + 0.5 r_{t+1} + 0.25 r_{t+2}: the current reward is not discounted)")

    rewards = jnp.asarray(rng.standard_normal(9), jnp.float32)
    for gamma in (0.0, 0.5, 0.9, 0.99, 1.0):
        what = f"discounted_returns(rewards [9], gamma={gamma})"
        out = expect_shape(fn(rewards, gamma), (9,), what)
        expect_close(out, returns_loop(rewards, gamma), what, atol=1e-5)
    expect_close(fn(rewards, 0.0), rewards, "discounted_returns(rewards, gamma=0) (expected the rewards)")
    expect_close(fn(rewards, 1.0), np.cumsum(np.asarray(rewards, np.float64)[::-1])[::-1],
                 "discounted_returns(rewards, gamma=1) (expected the reversed cumulative sum)",
                 atol=1e-5)

    T, gamma = 50, 0.9
    what = f"discounted_returns(ones [{T}], gamma={gamma})"
    closed = (1 - gamma ** (T - np.arange(T))) / (1 - gamma)  # geometric series
    expect_close(fn(jnp.ones(T), gamma), closed, what + " (expected (1 - g^(T-t)) / (1 - g))",
                 atol=1e-4, rtol=1e-5)

    batch = jnp.asarray(rng.standard_normal((3, 7)), jnp.float32)
    what = "discounted_returns(rewards [3, 7], gamma=0.8)"
    out = expect_shape(fn(batch, 0.8), (3, 7), what)
    expect_close(out, returns_loop(batch, 0.8), what + " (each row is its own trajectory)",
                 atol=1e-5)

    what = "discounted_returns([1, 1, 1, 1, 1], gamma=0.5, dones=[0, 1, 0, 0, 1])"
    expect_close(fn(jnp.ones(5), 0.5, jnp.array([0, 1, 0, 0, 1], bool)),
                 [1.5, 1.0, 1.75, 1.5, 1.0], what + " (a done ends the sum after its own reward)")
    dones = rng.random((3, 7)) < 0.3
    what = "discounted_returns(rewards [3, 7], gamma=0.9, dones [3, 7])"
    expect_close(fn(batch, 0.9, jnp.asarray(dones)), returns_loop(batch, 0.9, dones), what,
                 atol=1e-5)
    expect_close(fn(batch, 0.9, jnp.zeros((3, 7), bool)), returns_loop(batch, 0.9),
                 "discounted_returns(..., dones all False) (expected the same as no dones)", atol=1e-5)

    jitted = jit(fn, static_argnums=1)
    expect_close(jitted(batch, 0.9, jnp.asarray(dones)), returns_loop(batch, 0.9, dones),
                 "jax.jit(discounted_returns)(rewards [3, 7], 0.9, dones)", atol=1e-5)


# ----------------------------------------------------------------------------------------------
# 3.2 one CartPole step


GRAVITY, MASSCART, MASSPOLE, LENGTH, FORCE_MAG, TAU = 9.8, 1.0, 0.1, 0.5, 10.0, 0.02
THETA_LIMIT, X_LIMIT = 12 * 2 * math.pi / 360, 2.4


def gym_step(state, action):
    """Gym ``CartPole-v1.step`` (euler integrator; book §3.1.2, eqs. 5, 6, 7, 8, 9),
    transcribed in float64 for one state ``[4]`` and action: ``(next_state [4], 1.0,
    terminated)``."""
    x, x_dot, theta, theta_dot = (float(v) for v in state)
    force = FORCE_MAG if int(action) == 1 else -FORCE_MAG
    costheta, sintheta = math.cos(theta), math.sin(theta)
    total_mass = MASSPOLE + MASSCART
    polemass_length = MASSPOLE * LENGTH
    temp = (force + polemass_length * theta_dot**2 * sintheta) / total_mass
    thetaacc = (GRAVITY * sintheta - costheta * temp) / (
        LENGTH * (4.0 / 3.0 - MASSPOLE * costheta**2 / total_mass))
    xacc = temp - polemass_length * thetaacc * costheta / total_mass
    x = x + TAU * x_dot
    x_dot = x_dot + TAU * xacc
    theta = theta + TAU * theta_dot
    theta_dot = theta_dot + TAU * thetaacc
    terminated = x < -X_LIMIT or x > X_LIMIT or theta < -THETA_LIMIT or theta > THETA_LIMIT
    return np.array([x, x_dot, theta, theta_dot]), 1.0, terminated


def gym_steps(states, actions):
    """:func:`gym_step` over a batch: ``states [N, 4]``, ``actions [N]`` -> ``(next [N, 4],
    rewards [N], terminated [N])``."""
    out = [gym_step(s, a) for s, a in zip(np.asarray(states), np.asarray(actions))]
    return (np.stack([o[0] for o in out]), np.array([o[1] for o in out]),
            np.array([o[2] for o in out]))


def _unpack(out, what, lead):
    require(isinstance(out, tuple) and len(out) == 3,
            f"{what} must return a triple (next_state, reward, done), got {type(out).__name__}")
    next_state, reward, done = out
    expect_shape(next_state, (*lead, 4), what + " next_state")
    expect_shape(reward, lead, what + " reward")
    expect_shape(done, lead, what + " done")
    expect_dtype(done, "b", what + " done")
    return next_state, reward, done


def cartpole_step(fn):
    # two test vectors (gymnasium's CartPole-v1 env.step gives the same, to float32)
    for action, expected in ((1, [0.0, 0.1943706, 0.05, -0.2764976]),
                             (0, [0.0, -0.1958020, 0.05, 0.3080299])):
        what = f"cartpole_step(state (0, 0, 0.05, 0), action {action})"
        next_state, reward, done = _unpack(fn(jnp.array([0.0, 0.0, 0.05, 0.0]), jnp.int32(action)),
                                           what, ())
        expect_close(next_state, expected, what + f" ({'+' if action else '-'}10 N push)", atol=1e-5)
        expect_close(reward, 1.0, what + " reward")
        expect_close(done, False, what + " done")

    rng = np.random.default_rng(0)
    n = 256
    limits = np.array([2.4, 2.0, 0.2, 2.0])
    states = jnp.asarray(rng.uniform(-limits, limits, (n, 4)), jnp.float32)
    actions = jnp.asarray(rng.integers(0, 2, n), jnp.int32)
    exp_state, exp_reward, exp_done = gym_steps(states, actions)
    what = f"cartpole_step(states [{n}, 4], actions [{n}]) vs Gym's equations"
    next_state, reward, done = _unpack(fn(states, actions), what, (n,))
    expect_close(next_state, exp_state, what + " next_state", atol=1e-5, rtol=1e-5)
    expect_close(reward, exp_reward, what + " reward (1 on every step, the last one included)")
    expect_finite(next_state, what + " next_state")
    # a state within float32 rounding of a limit could flip either way: skip those
    x_next, theta_next = exp_state[:, 0], exp_state[:, 2]
    clear = (np.abs(np.abs(x_next) - X_LIMIT) > 1e-5) & (np.abs(np.abs(theta_next) - THETA_LIMIT) > 1e-5)
    expect_close(as_array(done, what)[clear], exp_done[clear],
                 what + " done (|x| > 2.4 or |theta| > 12 deg, tested on the next state)")
    require(exp_done.any() and not exp_done.all(), "internal: the random states must test both outcomes")

    # the thresholds, on the next state and strict: on the limit is not yet out
    cases = [((2.4, 0.0, 0.0, 0.0), False), ((2.39, 1.0, 0.0, 0.0), True),
             ((-2.39, -1.0, 0.0, 0.0), True), ((2.3, 1.0, 0.0, 0.0), False),
             ((0.0, 0.0, 0.2094, 0.0), False), ((0.0, 0.0, 0.2094, 0.05), True),
             ((0.0, 0.0, -0.2094, -0.05), True), ((0.0, 0.0, 0.2, 0.2), False)]
    states = jnp.asarray([s for s, _ in cases], jnp.float32)
    expected = np.array([d for _, d in cases])
    what = "cartpole_step at the limits (x = +-2.4, theta = +-12 deg = 0.20944 rad)"
    _, reward, done = _unpack(fn(states, jnp.ones(len(cases), jnp.int32)), what, (len(cases),))
    expect_close(done, expected, what + " done (is the test on the next state, with |.| > limit?)")
    expect_close(reward, np.ones(len(cases)), what + " reward (the terminating step earns 1 too)")

    # action 0 pushes left, 1 right: from rest the cart accelerates that way
    _, x_dot_left, _, _ = np.asarray(fn(jnp.zeros(4), jnp.int32(0))[0])
    _, x_dot_right, _, _ = np.asarray(fn(jnp.zeros(4), jnp.int32(1))[0])
    expect(x_dot_left < 0 < x_dot_right,
           f"cartpole_step(zeros, 0 / 1): x_dot became {x_dot_left:.4g} / {x_dot_right:.4g}; "
           f"action 0 must push left (-10 N) and 1 right (+10 N)")

    states = jnp.asarray(rng.uniform(-limits, limits, (8, 4)), jnp.float32)
    actions = jnp.asarray(rng.integers(0, 2, 8), jnp.int32)
    eager = fn(states, actions)
    for name, transformed in (("jax.jit(cartpole_step)", jit(fn)),
                              ("jax.vmap(cartpole_step)", vmap(fn)),
                              ("jax.jit(jax.vmap(cartpole_step))", jit(vmap(fn)))):
        out = _unpack(transformed(states, actions), f"{name}(states [8, 4], actions [8])", (8,))
        for part, got, want in zip(("next_state", "reward", "done"), out, eager):
            expect_close(got, want, f"{name}(states [8, 4], actions [8]) {part} vs eager", atol=1e-6)


# ----------------------------------------------------------------------------------------------
# 3.3 the REINFORCE loss


def reinforce_loop(logp, returns, mask, baseline):
    """``-(1/E) sum_e sum_t mask log pi (G - b)`` (book §6.1.3, eq. 45) as a float64 loop over
    episodes and steps; ``[E, T]`` or ``[T]`` inputs, ``baseline`` broadcastable to them."""
    logp, returns, mask = (np.asarray(a, np.float64) for a in (logp, returns, mask))
    baseline = np.broadcast_to(np.asarray(baseline, np.float64), logp.shape)
    logp2, ret2, mask2, base2 = (a.reshape(-1, a.shape[-1]) for a in (logp, returns, mask, baseline))
    total = 0.0
    for e in range(logp2.shape[0]):
        for t in range(logp2.shape[1]):
            if mask2[e, t]:
                total += logp2[e, t] * (ret2[e, t] - base2[e, t])
    return -total / logp2.shape[0]


def reinforce_loss(fn):
    rng = np.random.default_rng(0)
    E, T = 4, 6
    logp = jnp.asarray(-rng.random((E, T)) * 2, jnp.float32)
    returns = jnp.asarray(rng.standard_normal((E, T)) * 3, jnp.float32)
    lengths = np.array([6, 3, 1, 4])
    mask = jnp.asarray(np.arange(T)[None] < lengths[:, None], jnp.float32)

    for baseline, name in ((0.0, "0"), (jnp.float32(0.7), "a scalar"),
                           (jnp.asarray(rng.standard_normal(T), jnp.float32), "[T]"),
                           (jnp.asarray(rng.standard_normal((E, T)), jnp.float32), "[E, T]")):
        what = f"reinforce_loss(logp [{E},{T}], returns, mask, baseline {name})"
        out = expect_shape(fn(logp, returns, mask, baseline), (), what)
        expect_close(out, reinforce_loop(logp, returns, mask, baseline),
                     what + " (expected -(1/E) sum_e sum_t mask logp (G - b))", atol=1e-5)

    what = f"reinforce_loss(logp [{T}], returns [{T}], mask [{T}], 0.5) (one episode)"
    out = expect_shape(fn(logp[0], returns[0], mask[1], 0.5), (), what)
    expect_close(out, reinforce_loop(logp[0], returns[0], mask[1], 0.5), what, atol=1e-5)

    what = "reinforce_loss with a boolean mask"
    expect_close(fn(logp, returns, mask.astype(bool), 0.0), reinforce_loop(logp, returns, mask, 0.0),
                 what, atol=1e-5)

    baseline = jnp.asarray(rng.standard_normal(T), jnp.float32)
    grads = grad_of(fn, argnums=(0, 1, 3))(logp, returns, mask, baseline)
    expected = -np.asarray(mask) * (np.asarray(returns) - np.asarray(baseline)) / E
    expect_close(grads[0], expected,
                 "gradient of reinforce_loss w.r.t. logp (expected -mask (G - b) / E)", atol=1e-6)
    expect_close(grads[1], np.zeros((E, T)),
                 "gradient of reinforce_loss w.r.t. returns (G - b is a constant: stop_gradient)")
    expect_close(grads[2], np.zeros(T),
                 "gradient of reinforce_loss w.r.t. baseline (G - b is a constant: stop_gradient)")

    padded = logp.at[2, 1:].set(-jnp.inf)  # past the end of episode 2 (length 1)
    what = "reinforce_loss with logp = -inf on masked steps (under jit)"
    expect_close(expect_finite(jit(fn)(padded, returns, mask, 0.0), what),
                 reinforce_loop(logp, returns, mask, 0.0), what
                 + " (masked steps must not count, even as 0 * inf)", atol=1e-5)

    expect_close(jit(fn)(logp, returns, mask, baseline),
                 reinforce_loop(logp, returns, mask, baseline), "jax.jit(reinforce_loss)(...)",
                 atol=1e-5)
