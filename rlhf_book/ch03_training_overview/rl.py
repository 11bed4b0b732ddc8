"""Chapter 3's math in the book's order: returns, the thermostat, CartPole, the REINFORCE loss,
the KL-regularised objective and the canonical recipes.

* §3.1, eq. 2 -- :func:`discounted_return` (one number per trajectory) and
  :func:`discounted_returns` (the return-to-go ``G_t`` of §6.1, eqs. 24, 25, as corrected in the
  guide's errata), a backwards ``lax.scan``.
* §3.1.1, eq. 3 -- the thermostat: :class:`ThermostatConfig`, :func:`thermostat_reward`,
  :func:`thermostat_step`, the policy family :func:`threshold_policy` / :class:`ThresholdPolicy`
  and :func:`rollout_thermostat`.
* §3.1.2, eqs. 4, 5, 6, 7, 8, 9 -- CartPole with Gym ``CartPole-v1``'s constants:
  :class:`CartPoleConfig`, :func:`cartpole_reset`, :func:`cartpole_step`.
* §6.1.3, eq. 45 (chapter 3 poses the problem, chapter 6 gives the algorithm) --
  :func:`reinforce_loss` and the time-dependent batch baseline :func:`batch_baseline`.
* §3.1.4, eq. 11 -- :func:`rlhf_objective`, the KL-regularised objective per sequence.
* §3.3 -- :data:`RECIPES` (InstructGPT, Tülu 3, DeepSeek R1) and :func:`recipe_table`.

Conventions: a trajectory of ``T`` steps holds the rewards ``r_0 .. r_{T-1}`` (eqs. 1, 2);
``gamma`` lies in [0, 1] (RLHF uses 1). Where the book leaves a choice open (the thermostat's
dynamics, CartPole's constants, the form of eq. 11), the docstring says which one we made; the
errata are in ``chapters/ch03_training_overview.md``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from rlhf_book.lm.checks import as_float_array, as_like, check_positive_ints, check_range, is_traced
from rlhf_book.lm.ops import masked_mean, masked_sum

__all__ = [
    "discounted_return", "discounted_returns",
    "ThermostatConfig", "thermostat_reward", "thermostat_step", "threshold_policy",
    "ThresholdPolicy", "ThermostatTrajectory", "rollout_thermostat",
    "CartPoleConfig", "CARTPOLE", "cartpole_reset", "cartpole_step",
    "reinforce_loss", "batch_baseline",
    "rlhf_objective",
    "RecipeStage", "Recipe", "RECIPES", "recipe_table",
]


# ----------------------------------------------------------------------------------------------
# §3.1 Problem formulation: returns


# [guide:discounted-return]
def discounted_return(rewards: jax.Array, gamma: float) -> jax.Array:
    """The discounted return of a trajectory, ``sum_{t=0}^{T-1} gamma^t r_t`` (book §3.1, eq. 2).

    ``rewards [..., T] -> [...]``: one number per trajectory, the quantity inside eq. 2's
    expectation (its mean over trajectories estimates ``J(pi)``). ``gamma`` in [0, 1]; with
    ``gamma = 1`` (the RLHF setting, §3.1.3) it is the plain sum of rewards. Equal to
    ``discounted_returns(rewards, gamma)[..., 0]``. A ``[T]`` array holds all of one
    trajectory's rewards (eq. 2 sums ``t = 0 .. T-1``).
    """
    check_range(gamma, "gamma", 0.0, 1.0)
    rewards = as_float_array(rewards, "rewards")
    powers = jnp.power(jnp.asarray(gamma, rewards.dtype), jnp.arange(rewards.shape[-1]))
    return jnp.sum(rewards * powers, axis=-1)
# [/guide]


# [guide:discounted-returns]
def discounted_returns(rewards: jax.Array, gamma: float, dones: jax.Array | None = None) -> jax.Array:
    """The return-to-go at every step, ``G_t = sum_{k >= 0} gamma^k r_{t+k}`` (book §6.1,
    eqs. 24, 25, with the reward index of eq. 2; ``G_0`` is the return inside §3.1's eq. 2):
    the reward of step ``t`` counts undiscounted.

    Shapes: ``rewards [T]`` or ``[B, T]`` (time last, each row its own trajectory); ``dones``
    (optional) the same shape, 1/True on the *last* step of an episode: the sum stops after
    that step's reward, so several episodes laid end to end in one row do not leak into each
    other's returns; returns the same shape as ``rewards``. ``gamma`` in [0, 1]. ``G_t`` is the
    weight REINFORCE puts on ``log pi(a_t | s_t)`` (book §6.1.3, eq. 45).

    How: backwards with one ``lax.scan`` over time (``reverse=True``, time moved to the front),
    from the exact recursion ``G_t = r_t + gamma * (1 - done_t) * G_{t+1}`` with ``G_T = 0``.
    """
    check_range(gamma, "gamma", 0.0, 1.0)
    rewards = as_float_array(rewards, "rewards")
    if rewards.ndim not in (1, 2):
        raise ValueError(f"rewards must have shape [T] or [B, T], got shape {rewards.shape}")
    if dones is None:
        dones = jnp.zeros(rewards.shape)
    dones = as_like(dones, "dones", rewards, "rewards")
    # BEGIN SOLUTION
    keep = 1.0 - dones.astype(rewards.dtype)  # 0 where an episode ends: nothing flows back past it
    gamma = jnp.asarray(gamma, rewards.dtype)

    def backwards(future_return, step):
        reward, not_last = step
        g = reward + gamma * not_last * future_return
        return g, g

    time_major = (jnp.moveaxis(rewards, -1, 0), jnp.moveaxis(keep, -1, 0))
    _, returns = lax.scan(backwards, jnp.zeros(rewards.shape[:-1], rewards.dtype), time_major,
                          reverse=True)
    return jnp.moveaxis(returns, 0, -1)
    # END SOLUTION
# [/guide]


# ----------------------------------------------------------------------------------------------
# §3.1.1 A simple example: the thermostat


# [guide:thermostat]
@dataclasses.dataclass(frozen=True)
class ThermostatConfig:
    """The thermostat of book §3.1.1, with dynamics the book leaves open.

    The book fixes the target (70 °F), the example state (65 °F), the actions (heater on/off)
    and the reward (+1 within 2 °F of the target, else 0). It says only that the room warms
    with the heater on and cools with it off. **Our choice**: Newton cooling towards the
    outside plus a constant heater gain,

        ``T_{t+1} = T_t + heat_rate * a_t - loss_rate * (T_t - outside)``,   ``a_t in {0, 1}``,

    deterministic (no noise), starting at ``initial`` for ``horizon`` steps. With the heater
    always on the room settles at ``outside + heat_rate / loss_rate`` = 80 °F, always off at
    50 °F. The reward of step ``t`` is that of the state *before* the transition,
    ``1[|T_t - target| <= band]`` (band edges included).
    """

    target: float = 70.0
    band: float = 2.0
    heat_rate: float = 1.5  # °F per step added by the heater
    loss_rate: float = 0.05  # fraction of the gap to the outside lost per step
    outside: float = 50.0
    initial: float = 65.0
    horizon: int = 100

    def __post_init__(self):
        check_range(self.band, "ThermostatConfig.band", 0.0)
        check_range(self.heat_rate, "ThermostatConfig.heat_rate", 0.0)
        check_range(self.loss_rate, "ThermostatConfig.loss_rate", 0.0, 1.0)
        check_positive_ints(self, "horizon")


def thermostat_reward(temperature: jax.Array, config: ThermostatConfig = ThermostatConfig()) -> jax.Array:
    """``1.0`` if ``|temperature - target| <= band`` else ``0.0`` (book §3.1.1), elementwise."""
    temperature = jnp.asarray(temperature, jnp.float32)
    return (jnp.abs(temperature - config.target) <= config.band).astype(jnp.float32)


def thermostat_step(state: jax.Array, action: jax.Array,
                    config: ThermostatConfig = ThermostatConfig()) -> tuple[jax.Array, jax.Array]:
    """One transition of the thermostat: ``(temperature [...], heater [...]) -> (next, reward)``.

    ``action`` is 1 (heater on) or 0 (off); the reward is that of the current ``state``
    (:func:`thermostat_reward`), the next temperature follows :class:`ThermostatConfig`'s law.
    """
    state = jnp.asarray(state, jnp.float32)
    heater = jnp.asarray(action).astype(jnp.float32)
    reward = thermostat_reward(state, config)
    next_state = state + config.heat_rate * heater - config.loss_rate * (state - config.outside)
    return next_state, reward


def threshold_policy(temperature: jax.Array, low: float, high: float) -> jax.Array:
    """Probability of switching the heater on: 1 below ``low``, 0 at or above ``high``, and a
    linear ramp ``(high - T) / (high - low)`` in between (book §3.1.1, eq. 3, as a family).

    With ``low == high == 70`` this is the book's eq. 3 (on iff ``T < 70 °F``). The ramp makes
    the policy stochastic (and differentiable in its parameters) between the two temperatures.
    ``low = high = +inf`` is "always on", ``-inf`` "always off". Requires ``low <= high``.
    Shapes: ``temperature [...] -> [...]``.
    """
    if not is_traced(high):
        check_range(low, "low", high=float(high), finite=False)
    temperature = jnp.asarray(temperature, jnp.float32)
    low, high = jnp.asarray(low, jnp.float32), jnp.asarray(high, jnp.float32)
    width = high - low
    ramp = (high - temperature) / jnp.where(width > 0, width, 1.0)
    p_on = jnp.where(temperature < low, 1.0, jnp.where(temperature >= high, 0.0, ramp))
    return jnp.clip(p_on, 0.0, 1.0)


class ThresholdPolicy(NamedTuple):
    """Parameters of a thermostat policy (a pytree, so policies can be stacked and vmapped):
    :func:`threshold_policy`'s ``low`` and ``high``, mixed with a fair coin with probability
    ``epsilon`` (``epsilon = 1`` is the uniformly random policy the book's agent starts from)."""

    low: float
    high: float
    epsilon: float = 0.0


class ThermostatTrajectory(NamedTuple):
    """One episode: ``temperature``, ``action`` (0/1) and ``reward`` per step, each ``[steps]``
    (the temperature *before* each action)."""

    temperature: jax.Array
    action: jax.Array
    reward: jax.Array


def rollout_thermostat(policy_params: ThresholdPolicy, key: jax.Array,
                       config: ThermostatConfig = ThermostatConfig(),
                       steps: int | None = None) -> ThermostatTrajectory:
    """Run one thermostat episode (book §3.1.1) of ``steps`` (default ``config.horizon``) with
    ``lax.scan``; returns a :class:`ThermostatTrajectory` of ``[steps]`` arrays.

    At each step the heater goes on with probability
    ``(1 - epsilon) * threshold_policy(T, low, high) + epsilon / 2``, drawn from ``key``
    (a deterministic policy ignores the key). ``sum(trajectory.reward)`` is the episode's
    undiscounted return (``discounted_return(reward, 1.0)``).
    """
    steps = config.horizon if steps is None else steps
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    low, high, epsilon = (jnp.asarray(p, jnp.float32) for p in policy_params)

    def step(temperature, step_key):
        p_on = (1.0 - epsilon) * threshold_policy(temperature, low, high) + 0.5 * epsilon
        heater = (jax.random.uniform(step_key) < p_on).astype(jnp.int32)
        next_temperature, reward = thermostat_step(temperature, heater, config)
        return next_temperature, (temperature, heater, reward)

    _, (temps, actions, rewards) = lax.scan(step, jnp.float32(config.initial),
                                            jax.random.split(key, steps))
    return ThermostatTrajectory(temps, actions, rewards)
# [/guide]


# ----------------------------------------------------------------------------------------------
# §3.1.2 RL task example: CartPole


@dataclasses.dataclass(frozen=True)
class CartPoleConfig:
    """CartPole's constants. The book gives only the limits 2.4 and 12 degrees (§3.1.2); the
    rest are Gym's ``CartPole-v1`` (gymnasium 1.x): ``length`` is the pole's *half* length,
    actions push with ``±force_mag``, Euler steps of ``tau`` seconds, episodes truncated at
    ``max_steps``."""

    gravity: float = 9.8
    masscart: float = 1.0
    masspole: float = 0.1
    length: float = 0.5
    force_mag: float = 10.0
    tau: float = 0.02
    theta_threshold: float = 12 * 2 * math.pi / 360  # 12 degrees = 0.20944 rad
    x_threshold: float = 2.4
    max_steps: int = 500


CARTPOLE = CartPoleConfig()


def cartpole_reset(key: jax.Array) -> jax.Array:
    """Gym's initial state: ``(x, x_dot, theta, theta_dot)`` (book §3.1.2, eq. 4) each uniform
    in [-0.05, 0.05]; ``[4]`` float32 (vmap over keys for a batch)."""
    return jax.random.uniform(key, (4,), jnp.float32, -0.05, 0.05)


# [guide:cartpole-step]
def cartpole_step(state: jax.Array, action: jax.Array,
                  config: CartPoleConfig = CARTPOLE) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One Euler step of CartPole (book §3.1.2, eqs. 5, 6, 7, 8, 9), as Gym's ``CartPole-v1``
    computes it.

    Shapes: ``state [..., 4]`` = ``(x, x_dot, theta, theta_dot)`` (eq. 4), ``action [...]``
    integer, 0 pushes left (force ``-F``), 1 pushes right (``+F``); the constants (``F``, the
    masses, the pole's half-length ``l``, ``g``, the time step ``tau``, the limits) are the
    fields of ``config``. Returns ``(next_state [..., 4], reward [...], done [...])``: the
    accelerations of eqs. 5, 6, 7 at the current state, then explicit Euler (eqs. 8, 9), in
    which positions move with the *old* velocities. The reward is 1.0 on every step, including
    the one that ends the episode (Gym's convention), and ``done`` (bool) is True when the
    *next* state leaves ``|x| <= 2.4`` or ``|theta| <= 12°`` (strict ``>`` fails, as in Gym).
    Works under ``jit`` and ``vmap``. Truncation at ``max_steps`` is the caller's business (the
    rollout's length).

    How: with ``alpha = (F + m_p l theta_dot^2 sin theta) / (m_c + m_p)`` (eq. 5):
    ``theta_acc = (g sin theta - cos theta alpha) / (l (4/3 - m_p cos^2 theta / (m_c + m_p)))``
    (eq. 6), ``x_acc = alpha - m_p l theta_acc cos theta / (m_c + m_p)`` (eq. 7); then ``x +=
    tau x_dot``, ``x_dot += tau x_acc`` and the same for ``theta``. The force is
    ``jnp.where(action == 1, F, -F)``, so the step has no Python branch.
    """
    state, action = jnp.asarray(state), jnp.asarray(action)
    if state.shape[-1:] != (4,) or action.shape != state.shape[:-1]:
        raise ValueError(f"state [..., 4] and action [...] expected, got shapes {state.shape}, "
                         f"{action.shape}")
    # BEGIN SOLUTION
    x, x_dot, theta, theta_dot = (state[..., i] for i in range(4))
    force = jnp.where(action == 1, config.force_mag, -config.force_mag)
    total_mass = config.masscart + config.masspole
    pole_ml = config.masspole * config.length
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    alpha = (force + pole_ml * theta_dot**2 * sin) / total_mass  # eq. 5
    theta_acc = (config.gravity * sin - cos * alpha) / (
        config.length * (4.0 / 3.0 - config.masspole * cos**2 / total_mass))  # eq. 6
    x_acc = alpha - pole_ml * theta_acc * cos / total_mass  # eq. 7
    next_state = jnp.stack([x + config.tau * x_dot, x_dot + config.tau * x_acc,  # eq. 8
                            theta + config.tau * theta_dot, theta_dot + config.tau * theta_acc],
                           axis=-1)  # eq. 9
    done = (jnp.abs(next_state[..., 0]) > config.x_threshold) | (
        jnp.abs(next_state[..., 2]) > config.theta_threshold)
    reward = jnp.ones(action.shape, next_state.dtype)
    return next_state, reward, done
    # END SOLUTION
# [/guide]


# ----------------------------------------------------------------------------------------------
# The REINFORCE loss (book §6.1.3, eq. 45), for CartPole


# [guide:reinforce-loss]
def reinforce_loss(logp: jax.Array, returns: jax.Array, mask: jax.Array,
                   baseline: jax.Array | float = 0.0) -> jax.Array:
    """The REINFORCE surrogate loss, ``-(1/E) sum_e sum_t mask * log pi(a_t|s_t) * (G_t - b)``.

    Book §6.1.3, eq. 45 (Williams 1992): ``grad J = E[sum_t grad log pi(a_t|s_t) (G_t - b)]``;
    minimising this loss ascends that estimate of the gradient. Shapes: ``logp``, ``returns``
    and ``mask`` are ``[E, T]`` (episodes x steps; ``[T]`` for one episode), ``baseline``
    broadcastable to them (a scalar, ``[T]`` or ``[E, T]``). The sum runs over the steps of
    each episode where ``mask`` is 1 (0/1 or boolean), the mean over episodes (the Monte-Carlo
    estimate of the expectation); a step off the mask never counts: under ``jit`` even a
    ``logp`` of ``-inf`` there does not reach the result (called eagerly, the inputs must be
    finite: the module's argument checks refuse it). ``G_t - b`` is a constant: only ``logp`` carries a gradient, ``d loss / d logp =
    -mask * (G - b) / E``, and none reaches ``returns`` or ``baseline``. Returns a scalar.

    How: ``stop_gradient(G - b)``; the masked sum over the last axis selects with ``jnp.where``
    (``masked_sum``) rather than multiplying by the mask, since ``0 * -inf`` is NaN; then the
    mean over episodes.
    """
    logp, baseline = as_float_array(logp, "logp"), as_float_array(baseline, "baseline")
    returns, mask = as_like(returns, "returns", logp, "logp"), as_like(mask, "mask", logp, "logp")
    bs = jnp.shape(baseline)
    if len(bs) > logp.ndim or any(b not in (1, n) for b, n in zip(bs[::-1], logp.shape[::-1])):
        raise ValueError(f"baseline must broadcast to logp's shape {logp.shape}, got {bs}")
    # BEGIN SOLUTION
    advantage = lax.stop_gradient(jnp.asarray(returns) - baseline)
    return -jnp.mean(masked_sum(logp * advantage, jnp.asarray(mask), axis=-1))
    # END SOLUTION
# [/guide]


def batch_baseline(returns: jax.Array, mask: jax.Array) -> jax.Array:
    """``[E, T] -> [T]``: the mean return-to-go at each step over the episodes still running
    (0 where none is), the time-dependent baseline ``b(t)`` of REINFORCE (book §6.1.3, eq. 45).
    It includes each episode's own return, as the batch-mean baselines of §6.1.2 do."""
    returns = as_float_array(returns, "returns", "[E, T]")
    return masked_mean(returns, as_like(mask, "mask", returns, "returns"), axis=0)


# ----------------------------------------------------------------------------------------------
# §3.1.4 Fine-tuning and regularization: the KL-regularised objective


# [guide:rlhf-objective]
def rlhf_objective(rewards: jax.Array, logp_policy: jax.Array, logp_ref: jax.Array, beta: float,
                   mask: jax.Array) -> jax.Array:
    """Per-sequence KL-regularised RLHF objective (book §3.1.4, eq. 11):
    ``r(x, y) - beta * sum_t mask_t (log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t))``.

    Shapes: ``rewards [B]`` (one reward-model score per completion), ``logp_policy`` and
    ``logp_ref [B, T]`` (the log-probabilities of the sampled tokens under the policy and the
    reference model), ``mask [B, T]`` (1 on completion tokens); returns ``[B]``. For
    completions sampled from the policy, the summed log-ratio is an unbiased sample of
    ``KL(pi(.|x) || pi_ref(.|x))`` (the k1 estimator; Schulman 2020), so the batch mean
    estimates the objective in its well-posed per-prompt form,
    ``E_{x~D}[E_{y~pi(.|x)} r(x, y) - beta KL(pi(.|x) || pi_ref(.|x))]``. With ``beta = 0`` it
    is the bandit reward of §3.1.3, eq. 10.
    """
    check_range(beta, "beta", 0.0)
    rewards = as_float_array(rewards, "rewards")
    logp_policy = as_float_array(logp_policy, "logp_policy")
    if rewards.ndim != 1 or logp_policy.ndim != 2 or logp_policy.shape[:1] != rewards.shape:
        raise ValueError(f"rewards [B] and logp_policy [B, T] expected, got shapes "
                         f"{rewards.shape}, {logp_policy.shape}")
    logp_ref = as_like(logp_ref, "logp_ref", logp_policy, "logp_policy")
    mask = as_like(mask, "mask", logp_policy, "logp_policy")
    return rewards - beta * masked_sum(logp_policy - logp_ref, mask, axis=-1)
# [/guide]


# ----------------------------------------------------------------------------------------------
# §3.3 Canonical recipes


@dataclasses.dataclass(frozen=True)
class RecipeStage:
    """One training stage: its ``name``, what data it uses, and the data size as the book
    states it (``size_text``) and as a number for plotting (``size``; None if not stated)."""

    name: str
    data: str
    size_text: str
    size: int | None


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A post-training recipe of book §3.3: its ``name``, the ``section`` that describes it,
    the ``base`` model it starts from and its ``stages`` in order."""

    name: str
    section: str
    base: str
    stages: tuple[RecipeStage, ...]


RECIPES: tuple[Recipe, ...] = (
    Recipe("InstructGPT", "§3.3.1", "a pretrained base model", (
        RecipeStage("SFT", "instruction demonstrations, mostly human-written", "~10K examples",
                    10_000),
        RecipeStage("reward model", "prompts with pairwise completions, from the SFT checkpoint",
                    "~100K prompts (the paper: 33K)", 100_000),
        RecipeStage("RLHF", "separate prompts, optimised against the reward model",
                    "~100K prompts (the paper: 31K)", 100_000),
    )),
    Recipe("Tülu 3", "§3.3.2", "Llama 3.1 (also OLMo 2, SmolLM)", (
        RecipeStage("SFT", "mostly synthetic (GPT-4o, Llama 3.1 405B): instruction following, "
                    "math, code", "~1M examples", 1_000_000),
        RecipeStage("preference tuning", "on-policy preference pairs", "~1M pairs", 1_000_000),
        RecipeStage("RLVR", "prompts with verifiable answers (math)", "~10K prompts", 10_000),
    )),
    Recipe("DeepSeek R1", "§3.3.3", "DeepSeek-V3-Base", (
        RecipeStage("cold-start SFT", "on-policy reasoning samples from R1-Zero, heavily filtered",
                    "100K+ samples", 100_000),
        RecipeStage("large-scale RL (RLVR)", "verifiable rewards, run until convergence",
                    "not stated", None),
        RecipeStage("rejection sampling + SFT", "3/4 reasoning, 1/4 general queries",
                    "~800K samples", 800_000),
        RecipeStage("mixed RL", "verifiable rewards plus a general preference reward model",
                    "not stated", None),
    )),
)
"""The book's canonical post-training recipes (§3.3), with the data sizes it states."""


def recipe_table(recipes: tuple[Recipe, ...] = RECIPES) -> str:
    """The recipes of book §3.3 as a plain-text table, one row per stage (the notebook prints
    it)."""
    header = ("recipe", "stage", "data", "size")
    rows = [header]
    for recipe in recipes:
        for k, stage in enumerate(recipe.stages, start=1):
            name = f"{recipe.name} ({recipe.section})" if k == 1 else ""
            rows.append((name, f"{k}. {stage.name}", stage.data, stage.size_text))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
