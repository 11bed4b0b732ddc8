"""What the chapter 3 notebook runs, with its settings as named constants a learner can change.

Each function returns plain data (NumPy arrays, dicts of floats) that the notebook prints and
``rlhf_book.textbook.figures.ch03_training_overview`` draws:

* §3.1 -- :func:`returns_to_go_curves`: ``G_t`` for the discount factors :data:`GAMMAS`, with a
  reward on every step and with one reward at the end of a completion;
* §3.1.1 -- :func:`compare_thermostat_policies` (mean return of a family of policies),
  :func:`thermostat_traces` (one episode of each of :data:`THERMOSTAT_TRACES`) and
  :func:`threshold_sweep` (the return of "heater on below T" for :data:`THRESHOLDS` and the
  heaters :data:`HEAT_RATES`);
* §3.1.2 -- :func:`hand_policy_episode` / :func:`hand_policy_episodes`: CartPole under the
  hand-written rules :data:`HAND_POLICIES`;
* §6.1.3, eq. 45 -- :func:`train_seeds` / :func:`reinforce_runs`: REINFORCE on CartPole for
  :data:`REINFORCE_SEEDS` seeds at once, with and without the baseline;
* §3.1.4, eq. 11 -- :func:`kl_optimal_policy`, :func:`bandit_summary` and :func:`kl_bandit`:
  the KL-regularised objective on a four-completion bandit (:data:`BANDIT_COMPLETIONS`).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_book.ch03_training_overview.loop import REINFORCEConfig, make_train
from rlhf_book.ch03_training_overview.rl import (ThermostatConfig, ThresholdPolicy, cartpole_step,
                                                 discounted_returns, rlhf_objective,
                                                 rollout_thermostat)

# ----------------------------------------------------------------------------------------------
# Settings

# §3.1: the discount factors of the returns figure, the length of a CartPole-like episode with
# a reward on every step, and of a completion with one reward at its end.
GAMMAS = (0.5, 0.9, 0.99, 1.0)
DENSE_STEPS = 100
COMPLETION_TOKENS = 20

# §3.1.1: the policies whose temperature traces the thermostat figure draws.
THERMOSTAT_TRACES = {
    "eq. 3 (on below 70)": ThresholdPolicy(70.0, 70.0),
    "random": ThresholdPolicy(70.0, 70.0, 1.0),
    "always on": ThresholdPolicy(math.inf, math.inf),
    "always off": ThresholdPolicy(-math.inf, -math.inf),
}
THERMOSTAT_EPISODES = 200  # episodes per policy in compare_thermostat_policies
THRESHOLDS = (66.0, 67.0, 68.0, 69.0, 70.0, 71.0, 72.0)
HEAT_RATES = (1.5, 4.0)  # the default heater, and a strong one for which eq. 3 is not optimal

# §3.1.2: three hand-written CartPole rules (action 1 pushes right with +F, 0 left with -F),
# each a function of the state (x, x_dot, theta, theta_dot). Ties at 0 push left.
HAND_POLICIES = {
    "always push right": lambda s: jnp.int32(1),
    "bang-bang: push towards the lean, sign(theta)": lambda s: (s[2] > 0).astype(jnp.int32),
    "sign(theta + 0.5 theta_dot)": lambda s: (s[2] + 0.5 * s[3] > 0).astype(jnp.int32),
}
CARTPOLE_STEPS = 500

# REINFORCE on CartPole (notebook §4): the module's default config, 16 seeds at once.
REINFORCE_CONFIG = REINFORCEConfig()
REINFORCE_SEEDS = 16
REPORT_ITERATIONS = (1, 10, 30, 50, 80)

# §3.1.4: one prompt ("What is the capital of France?"), four canned completions, a reference
# policy and a reward model that overrates the flattering answer.
BANDIT_COMPLETIONS = ("Paris.", "Paris, of course! Great question!", "Lyon.", "I am not sure.")
BANDIT_REF = (0.40, 0.05, 0.25, 0.30)
BANDIT_REWARDS = (1.0, 1.5, -1.0, 0.0)
BANDIT_BETAS = (0.1, 0.5, 2.0)
BANDIT_SWEEP = tuple(np.geomspace(0.02, 20, 120).tolist())  # the betas of the sweep


# ----------------------------------------------------------------------------------------------
# §3.1 returns


def returns_to_go_curves(gammas=GAMMAS, steps: int = DENSE_STEPS,
                         completion: int = COMPLETION_TOKENS) -> dict[float, dict[str, np.ndarray]]:
    """``{gamma: {"dense": G [steps], "sparse": G [completion]}}``: the return-to-go of a
    reward of 1 on every step (CartPole) and of one reward of 1 on the last token of a
    completion (RLHF's response-level reward), from :func:`discounted_returns`."""
    dense = jnp.ones(steps)
    sparse = jnp.zeros(completion).at[-1].set(1.0)
    return {gamma: {"dense": np.asarray(discounted_returns(dense, gamma)),
                    "sparse": np.asarray(discounted_returns(sparse, gamma))} for gamma in gammas}


# ----------------------------------------------------------------------------------------------
# §3.1.1 the thermostat


def default_thermostat_policies() -> dict[str, ThresholdPolicy]:
    """The policies :func:`compare_thermostat_policies` compares by default: eq. 3, other
    thresholds, a smooth ramp, and the trivial policies (random, always on, always off)."""
    inf = float("inf")
    policies = {"eq. 3 (on below 70)": ThresholdPolicy(70.0, 70.0)}
    for t in (66.0, 67.0, 68.0, 69.0, 71.0, 72.0):
        policies[f"on below {t:g}"] = ThresholdPolicy(t, t)
    policies["ramp 68-72"] = ThresholdPolicy(68.0, 72.0)
    policies["random"] = ThresholdPolicy(70.0, 70.0, 1.0)
    policies["always on"] = ThresholdPolicy(inf, inf)
    policies["always off"] = ThresholdPolicy(-inf, -inf)
    return policies


def compare_thermostat_policies(policies: dict[str, ThresholdPolicy] | None = None,
                                key: jax.Array | None = None,
                                config: ThermostatConfig = ThermostatConfig(),
                                steps: int | None = None,
                                episodes: int = THERMOSTAT_EPISODES) -> dict[str, float]:
    """Mean undiscounted return of each policy over ``episodes`` episodes: ``{name: mean}``.

    Each policy's episodes are one jitted ``vmap`` of :func:`rollout_thermostat` over
    ``episodes`` keys (the same keys for every policy). With the defaults (``heat_rate`` 1.5)
    eq. 3 scores 95 of 100, thresholds 69-71 all score 95, a random policy about 9, always-on
    8 and always-off 0; with ``heat_rate = 4`` the threshold 69 beats eq. 3's 70 (99 vs 74):
    eq. 3 "may not be optimal depending on the transition dynamics" (book §3.1.1).
    """
    if not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"episodes must be a positive int, got {episodes!r}")
    policies = default_thermostat_policies() if policies is None else policies
    key = jax.random.PRNGKey(0) if key is None else key
    keys = jax.random.split(key, episodes)
    run = jax.jit(jax.vmap(lambda p, k: rollout_thermostat(p, k, config, steps).reward.sum(),
                           in_axes=(None, 0)))
    return {name: float(jnp.mean(run(ThresholdPolicy(*map(float, p)), keys)))
            for name, p in policies.items()}


def thermostat_traces(policies: dict[str, ThresholdPolicy] | None = None, seed: int = 0,
                      config: ThermostatConfig = ThermostatConfig()) -> dict:
    """``{name: ThermostatTrajectory}``: one episode of each policy (default
    :data:`THERMOSTAT_TRACES`) from ``jax.random.PRNGKey(seed)``."""
    policies = THERMOSTAT_TRACES if policies is None else policies
    return {name: rollout_thermostat(p, jax.random.PRNGKey(seed), config)
            for name, p in policies.items()}


def threshold_sweep(thresholds=THRESHOLDS, heat_rates=HEAT_RATES) -> dict[float, dict[float, float]]:
    """``{heat_rate: {threshold: return}}``: the return of the deterministic rule "heater on
    below T" (eq. 3 is T = 70) for each heater; one episode each is exact."""
    sweep = {}
    for heat_rate in heat_rates:
        policies = {t: ThresholdPolicy(t, t) for t in thresholds}
        sweep[heat_rate] = compare_thermostat_policies(
            policies, config=ThermostatConfig(heat_rate=heat_rate), episodes=1)
    return sweep


# ----------------------------------------------------------------------------------------------
# §3.1.2 CartPole under hand-written rules


def hand_policy_episode(policy, steps: int = CARTPOLE_STEPS, state=None):
    """Run one CartPole episode of a deterministic rule ``policy(state) -> action`` from
    ``state`` (default all zeros) with ``lax.scan``: returns ``(states [steps, 4], alive
    [steps])``, the state before each step and whether the episode was still running then.
    ``n = alive.sum()`` is the episode length; an episode that ends early stays frozen in the
    state that ended it, so ``states[n]`` is that state (when ``n < steps``)."""
    state = jnp.zeros(4, jnp.float32) if state is None else jnp.asarray(state, jnp.float32)

    def step(carry, _):
        s, alive = carry
        next_s, _, done = cartpole_step(s, policy(s))
        return (jnp.where(alive, next_s, s), alive & ~done), (s, alive)

    _, (states, alive) = jax.lax.scan(step, (state, jnp.array(True)), None, length=steps)
    return np.asarray(states), np.asarray(alive)


def hand_policy_episodes(policies: dict | None = None, steps: int = CARTPOLE_STEPS) -> dict:
    """``{name: (states [steps, 4], alive [steps])}``: :func:`hand_policy_episode` of each rule
    (default :data:`HAND_POLICIES`) from the upright rest state."""
    policies = HAND_POLICIES if policies is None else policies
    return {name: hand_policy_episode(policy, steps) for name, policy in policies.items()}


# ----------------------------------------------------------------------------------------------
# REINFORCE on CartPole (book §6.1.3, eq. 45)


def train_seeds(config: REINFORCEConfig = REINFORCE_CONFIG, seeds: int = REINFORCE_SEEDS,
                seed: int = 0) -> np.ndarray:
    """Episode length per seed and iteration, ``[seeds, iterations]``: REINFORCE trained on
    ``seeds`` keys at once with ``jax.jit(jax.vmap(make_train(config)))``."""
    train = jax.jit(jax.vmap(make_train(config)))
    _, metrics = train(jax.random.split(jax.random.PRNGKey(seed), seeds))
    return np.asarray(metrics["episode_length"])


def reinforce_runs(config: REINFORCEConfig = REINFORCE_CONFIG,
                   seeds: int = REINFORCE_SEEDS) -> dict[str, np.ndarray]:
    """``{"with baseline": [seeds, iterations], "without baseline": ...}``: :func:`train_seeds`
    of ``config`` with the batch-mean baseline and without one (same keys)."""
    return {"with baseline": train_seeds(dataclasses.replace(config, baseline=True), seeds),
            "without baseline": train_seeds(dataclasses.replace(config, baseline=False), seeds)}


# ----------------------------------------------------------------------------------------------
# §3.1.4 the KL-regularised objective on a bandit


def kl_optimal_policy(ref, rewards, beta: float) -> np.ndarray:
    """The maximiser of ``E_pi[r] - beta KL(pi || ref)`` over distributions on a finite set of
    completions: ``pi*(y) = ref(y) exp(r(y) / beta) / Z`` (derived in book §8.1.2.1).
    ``ref``, ``rewards [K] -> [K]``, float64."""
    logits = np.log(np.asarray(ref, np.float64)) + np.asarray(rewards, np.float64) / beta
    p = np.exp(logits - logits.max())
    return p / p.sum()


def bandit_summary(pi, ref, rewards, beta: float) -> dict[str, float]:
    """Expected reward, ``KL(pi || ref)`` and the objective ``E_pi[r] - beta KL`` (book §3.1.4,
    eq. 11) of a distribution ``pi [K]`` over the bandit's completions (exact sums, no
    sampling)."""
    pi, ref, rewards = (np.asarray(a, np.float64) for a in (pi, ref, rewards))
    support = pi > 0
    kl = float(np.sum(pi[support] * np.log(pi[support] / ref[support])))
    reward = float(np.dot(pi, rewards))
    return {"reward": reward, "kl": kl, "objective": reward - beta * kl}


def kl_bandit(ref=BANDIT_REF, rewards=BANDIT_REWARDS, betas=BANDIT_BETAS,
              sweep=BANDIT_SWEEP) -> dict:
    """The optimum of eq. 11 on the bandit, for each of ``betas`` and along ``sweep``.

    Returns ``{"ref" [K], "rewards" [K], "optima": {beta: {"pi" [K], "reward", "kl", "objective", "beta_log_Z",
    "rlhf_objective_per_completion" [K]}}, "sweep": {"beta", "reward", "kl", "objective"}
    (arrays over ``sweep``), "reference_reward": E_ref[r]}``. ``rlhf_objective_per_completion``
    is :func:`rlhf_objective` of each completion under ``pi*``: every one scores ``beta log Z``.
    """
    ref, rewards = np.asarray(ref, np.float64), np.asarray(rewards, np.float64)
    optima = {}
    for beta in betas:
        pi = kl_optimal_policy(ref, rewards, beta)
        per_completion = rlhf_objective(
            jnp.asarray(rewards, jnp.float32), jnp.log(jnp.asarray(pi, jnp.float32))[:, None],
            jnp.log(jnp.asarray(ref, jnp.float32))[:, None], beta, jnp.ones((len(ref), 1)))
        optima[beta] = {"pi": pi, **bandit_summary(pi, ref, rewards, beta),
                        "beta_log_Z": float(beta * np.log(np.dot(ref, np.exp(rewards / beta)))),
                        "rlhf_objective_per_completion": np.asarray(per_completion)}
    stats = [bandit_summary(kl_optimal_policy(ref, rewards, b), ref, rewards, b) for b in sweep]
    return {"ref": ref, "rewards": rewards, "optima": optima,
            "sweep": {"beta": np.asarray(sweep), **{k: np.array([s[k] for s in stats])
                                                    for k in ("reward", "kl", "objective")}},
            "reference_reward": float(np.dot(ref, rewards))}
