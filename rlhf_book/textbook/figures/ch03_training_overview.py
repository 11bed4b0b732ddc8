"""Chapter 3 figures: returns-to-go, the thermostat and its threshold policies, CartPole under
hand-written policies, REINFORCE learning curves over 16 seeds, and the KL-regularised objective
on a four-completion bandit. ``notebooks/ch03_training_overview.ipynb`` draws through these;
called with no arguments, each function recomputes its data (the slowest, the REINFORCE
curves, takes about 20 seconds on a 2-core CPU)."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from rlhf_book import ch03_training_overview as ch03
from rlhf_book.textbook.figures import FigureResult, figure

GAMMAS = (0.5, 0.9, 0.99, 1.0)

# §3.1.1: the policies whose temperature traces the thermostat figure draws.
THERMOSTAT_TRACES = {
    "eq. 3 (on below 70)": ch03.ThresholdPolicy(70.0, 70.0),
    "random": ch03.ThresholdPolicy(70.0, 70.0, 1.0),
    "always on": ch03.ThresholdPolicy(math.inf, math.inf),
    "always off": ch03.ThresholdPolicy(-math.inf, -math.inf),
}
THRESHOLDS = (66.0, 67.0, 68.0, 69.0, 70.0, 71.0, 72.0)
HEAT_RATES = (1.5, 4.0)  # the default heater, and the strong one of the reference notes

# §3.1.2: three hand-written CartPole rules (action 1 pushes right with +F, 0 left with -F),
# each a function of the state (x, x_dot, theta, theta_dot). Ties at 0 push left.
HAND_POLICIES = {
    "always push right": lambda s: jnp.int32(1),
    "bang-bang: push towards the lean, sign(theta)": lambda s: (s[2] > 0).astype(jnp.int32),
    "sign(theta + 0.5 theta_dot)": lambda s: (s[2] + 0.5 * s[3] > 0).astype(jnp.int32),
}

# REINFORCE on CartPole (notebook §4): the module's default config, 16 seeds at once.
REINFORCE_CONFIG = ch03.REINFORCEConfig()
REINFORCE_SEEDS = 16
REPORT_ITERATIONS = (1, 10, 30, 50, 80)

# §3.1.4: one prompt ("What is the capital of France?"), four canned completions, a reference
# policy and a reward model that overrates the flattering answer.
BANDIT_COMPLETIONS = ("Paris.", "Paris, of course! Great question!", "Lyon.", "I am not sure.")
BANDIT_REF = (0.40, 0.05, 0.25, 0.30)
BANDIT_REWARDS = (1.0, 1.5, -1.0, 0.0)
BANDIT_BETAS = (0.1, 0.5, 2.0)


# ----------------------------------------------------------------------------------------------
# Helpers (also used by the notebook)


def hand_policy_episode(policy, steps: int = 500, state=None):
    """Run one CartPole episode of a deterministic rule ``policy(state) -> action`` from
    ``state`` (default all zeros) with ``lax.scan``: returns ``(states [steps, 4], alive
    [steps])``, the state before each step and whether the episode was still running then.
    ``n = alive.sum()`` is the episode length; an episode that ends early stays frozen in the
    state that ended it, so ``states[n]`` is that state (when ``n < steps``)."""
    state = jnp.zeros(4, jnp.float32) if state is None else jnp.asarray(state, jnp.float32)

    def step(carry, _):
        s, alive = carry
        next_s, _, done = ch03.cartpole_step(s, policy(s))
        return (jnp.where(alive, next_s, s), alive & ~done), (s, alive)

    _, (states, alive) = jax.lax.scan(step, (state, jnp.array(True)), None, length=steps)
    return np.asarray(states), np.asarray(alive)


def train_seeds(config: ch03.REINFORCEConfig = REINFORCE_CONFIG, seeds: int = REINFORCE_SEEDS,
                seed: int = 0) -> np.ndarray:
    """Episode length per seed and iteration, ``[seeds, iterations]``: REINFORCE trained on
    ``seeds`` keys at once with ``jax.jit(jax.vmap(make_train(config)))``."""
    train = jax.jit(jax.vmap(ch03.make_train(config)))
    _, metrics = train(jax.random.split(jax.random.PRNGKey(seed), seeds))
    return np.asarray(metrics["episode_length"])


def kl_optimal_policy(ref, rewards, beta: float) -> np.ndarray:
    """The maximiser of ``E_pi[r] - beta KL(pi || ref)`` over distributions on a finite set of
    completions: ``pi*(y) = ref(y) exp(r(y) / beta) / Z`` (derived in book ch. 8)."""
    logits = np.log(np.asarray(ref, np.float64)) + np.asarray(rewards, np.float64) / beta
    p = np.exp(logits - logits.max())
    return p / p.sum()


def bandit_summary(pi, ref, rewards, beta: float) -> dict[str, float]:
    """Expected reward, ``KL(pi || ref)`` and the objective ``E_pi[r] - beta KL`` of a
    distribution ``pi`` over the bandit's completions (exact sums, no sampling)."""
    pi, ref, rewards = (np.asarray(a, np.float64) for a in (pi, ref, rewards))
    support = pi > 0
    kl = float(np.sum(pi[support] * np.log(pi[support] / ref[support])))
    reward = float(np.dot(pi, rewards))
    return {"reward": reward, "kl": kl, "objective": reward - beta * kl}


# ----------------------------------------------------------------------------------------------
# Figures


@figure("ch03_returns", "ch03",
        "Return-to-go G_t = r_t + gamma G_{t+1} for four discount factors. Left: a reward of 1 "
        "on every step of a 100-step episode (CartPole). Right: one reward of 1 on the last of "
        "20 steps (RLHF's response-level reward, where gamma = 1 is the usual choice).")
def returns(gammas=GAMMAS, steps: int = 100, completion: int = 20) -> FigureResult:
    dense = jnp.ones(steps)
    sparse = jnp.zeros(completion).at[-1].set(1.0)
    fig = Figure(figsize=(9, 3.2))
    left, right = fig.subplots(1, 2)
    numbers = {}
    for gamma in gammas:
        g_dense = np.asarray(ch03.discounted_returns(dense, gamma))
        g_sparse = np.asarray(ch03.discounted_returns(sparse, gamma))
        left.plot(np.arange(steps), g_dense, label=f"gamma = {gamma:g}")
        right.plot(np.arange(completion), g_sparse, "o-", ms=3, label=f"gamma = {gamma:g}")
        numbers[f"gamma={gamma:g}"] = {"dense_G0": float(g_dense[0]),
                                       "sparse_G0": float(g_sparse[0])}
    left.set(xlabel="step t", ylabel="G_t", yscale="log",
             title=f"reward 1 on each of {steps} steps")
    right.set(xlabel="token t", ylabel="G_t", title=f"reward 1 on the last of {completion} tokens")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    fig.tight_layout()
    return FigureResult(fig, numbers)


@figure("ch03_thermostat", "ch03",
        "The thermostat of book §3.1.1 under the notes' dynamics (heater +1.5 °F per step, 5% of "
        "the gap to 50 °F lost per step, start 65 °F). Left: 100-step temperature traces; the "
        "band 68-72 °F earns +1 per step. Right: mean return over 200 episodes of each policy.")
def thermostat(returns_by_policy: dict | None = None, traces: dict | None = None,
               seed: int = 0) -> FigureResult:
    config = ch03.ThermostatConfig()
    if returns_by_policy is None:
        returns_by_policy = ch03.compare_thermostat_policies(key=jax.random.PRNGKey(seed))
    if traces is None:
        traces = {name: ch03.rollout_thermostat(p, jax.random.PRNGKey(seed), config)
                  for name, p in THERMOSTAT_TRACES.items()}
    fig = Figure(figsize=(10.5, 3.6))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    left.axhspan(config.target - config.band, config.target + config.band, color="tab:green",
                 alpha=0.15, label="reward band")
    for name, trajectory in traces.items():
        temps = np.asarray(trajectory.temperature)
        left.plot(np.arange(len(temps)), temps, lw=1.2 if name != "random" else 0.8,
                  label=f"{name}: return {float(np.sum(trajectory.reward)):g}"
                        + (" (one episode)" if name == "random" else ""))
    left.set(xlabel="step", ylabel="temperature (°F)", ylim=(45, 85),
             title="temperature traces from 65 °F")
    left.legend(fontsize=7, loc="lower left", ncols=2)
    names = list(returns_by_policy)[::-1]
    values = [returns_by_policy[n] for n in names]
    colours = ["tab:orange" if n.startswith("eq. 3") else "tab:blue" for n in names]
    right.barh(names, values, color=colours)
    for i, v in enumerate(values):
        right.text(v, i, f" {v:.4g}", va="center", fontsize=7)
    right.set(xlabel="mean return (100 steps)", xlim=(0, 115), title="returns of the policies")
    right.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    numbers = {"returns": {k: float(v) for k, v in returns_by_policy.items()},
               "trace_returns": {k: float(np.sum(t.reward)) for k, t in traces.items()}}
    return FigureResult(fig, numbers)


@figure("ch03_thermostat_thresholds", "ch03",
        "Return of the rule 'heater on below T' against T, for the default heater (1.5 °F per "
        "step) and a strong one (4 °F per step). With the strong heater eq. 3's T = 70 scores "
        "74 and T = 69 scores 99: eq. 3 'may not be optimal depending on the dynamics' (L497).")
def thermostat_thresholds(thresholds=THRESHOLDS, heat_rates=HEAT_RATES) -> FigureResult:
    fig = Figure(figsize=(6, 3.4))
    ax = fig.add_subplot()
    numbers = {}
    for heat_rate in heat_rates:
        config = ch03.ThermostatConfig(heat_rate=heat_rate)
        policies = {f"{t:g}": ch03.ThresholdPolicy(t, t) for t in thresholds}
        # deterministic policies: one episode each is exact
        scores = ch03.compare_thermostat_policies(policies, config=config, episodes=1)
        values = [scores[f"{t:g}"] for t in thresholds]
        ax.plot(thresholds, values, "o-", label=f"heater +{heat_rate:g} °F/step")
        best = thresholds[int(np.argmax(values))]
        numbers[f"heat_rate={heat_rate:g}"] = {"returns": dict(zip(map(str, thresholds), values)),
                                               "best_threshold": best}
    ax.axvline(70, color="0.4", ls=":", lw=1)
    ax.text(70.05, 2, "eq. 3", fontsize=8, color="0.3")
    ax.set(xlabel="threshold T (heater on iff temperature < T)", ylabel="return (100 steps)",
           ylim=(0, 105), title="the best threshold depends on the dynamics")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return FigureResult(fig, numbers)


@figure("ch03_cartpole_policies", "ch03",
        "CartPole (Gym CartPole-v1 constants) from the upright rest state under three "
        "hand-written rules: cart position x and pole angle theta per step; the episode ends "
        "when |x| > 2.4 or |theta| > 12° (dotted).")
def cartpole_policies(policies: dict | None = None, steps: int = 500) -> FigureResult:
    policies = HAND_POLICIES if policies is None else policies
    fig = Figure(figsize=(9, 3.2))
    left, right = fig.subplots(1, 2)
    numbers = {}
    for name, policy in policies.items():
        states, alive = hand_policy_episode(policy, steps)
        n = int(alive.sum())
        shown = states[:n + 1]  # states[n] is the state that ended the episode (if it ended)
        left.plot(np.arange(len(shown)), shown[:, 0], label=f"{name} ({n} steps)")
        right.plot(np.arange(len(shown)), np.degrees(shown[:, 2]))
        numbers[name] = {"length": n, "final_x": float(shown[-1, 0]),
                         "final_theta": float(shown[-1, 2])}
    limit = math.degrees(ch03.CARTPOLE.theta_threshold)
    for ax, bound in ((left, ch03.CARTPOLE.x_threshold), (right, limit)):
        ax.axhline(bound, color="0.4", ls=":", lw=1)
        ax.axhline(-bound, color="0.4", ls=":", lw=1)
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlim(0, steps * 1.1)
        ax.grid(alpha=0.3)
    left.set(xlabel="step", ylabel="cart position x", title="cart position")
    right.set(xlabel="step", ylabel="pole angle theta (degrees)", title="pole angle")
    left.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return FigureResult(fig, numbers)


@figure("ch03_reinforce", "ch03",
        "REINFORCE on CartPole, 16 seeds trained at once with jax.jit(jax.vmap(train)): mean "
        "episode length per iteration (line) and the range over seeds (band), with and without "
        "the batch-mean baseline. A uniformly random policy lasts about 22 steps; 500 is the cap.")
def reinforce(lengths: dict | None = None) -> FigureResult:
    """``lengths``: ``{label: episode lengths [seeds, iterations]}``; by default train
    ``REINFORCE_CONFIG`` with and without the baseline on ``REINFORCE_SEEDS`` seeds."""
    if lengths is None:
        lengths = {"with baseline": train_seeds(REINFORCE_CONFIG),
                   "without baseline": train_seeds(
                       dataclasses.replace(REINFORCE_CONFIG, baseline=False))}
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:purple")
    fig = Figure(figsize=(4.2 * len(lengths) + 0.6, 3.5))
    axes = np.atleast_1d(fig.subplots(1, len(lengths), sharey=True))
    means, numbers = {}, {}
    for (label, runs), colour in zip(lengths.items(), colours):
        runs = np.asarray(runs)
        means[label] = (runs.mean(0), colour)
        last5 = runs[:, -5:].mean(1)
        numbers[label] = {
            "seeds": runs.shape[0],
            "mean_length_at_iteration": {str(i): float(runs.mean(0)[i - 1])
                                         for i in REPORT_ITERATIONS if i <= runs.shape[1]},
            "final_mean": float(last5.mean()),
            "worst_seed_final": float(last5.min()),
        }
    for ax, (label, runs) in zip(axes, lengths.items()):
        runs = np.asarray(runs)
        it = np.arange(1, runs.shape[1] + 1)
        mean, colour = means[label]
        ax.fill_between(it, runs.min(0), runs.max(0), color=colour, alpha=0.2, lw=0,
                        label="min-max over seeds")
        for other, (other_mean, other_colour) in means.items():
            if other != label:
                ax.plot(it, other_mean, color=other_colour, ls="--", lw=1, label=f"mean, {other}")
        ax.plot(it, mean, color=colour, lw=2, label=f"mean of {runs.shape[0]} seeds")
        ax.axhline(500, color="0.4", ls="-.", lw=1)
        ax.axhline(22, color="0.4", ls=":", lw=1)
        ax.set(xlabel="iteration (8 episodes each)", ylim=(0, 520),
               title=f"{label}: last 5 iterations {numbers[label]['final_mean']:.0f} "
                     f"(worst seed {numbers[label]['worst_seed_final']:.0f})")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("episode length (cap 500; random ~22)")
    fig.tight_layout()
    return FigureResult(fig, numbers)


@figure("ch03_kl_objective", "ch03",
        "The KL-regularised objective (eq. 11) on one prompt with four completions. Left: the "
        "reference policy and the optimum pi* = pi_ref exp(r / beta) / Z for three betas. "
        "Right: expected reward, KL(pi* || pi_ref) and the objective beta log Z against beta.")
def kl_objective(ref=BANDIT_REF, rewards=BANDIT_REWARDS, betas=BANDIT_BETAS,
                 completions=BANDIT_COMPLETIONS) -> FigureResult:
    ref, rewards = np.asarray(ref, np.float64), np.asarray(rewards, np.float64)
    fig = Figure(figsize=(10, 3.6))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / (len(betas) + 1)
    x = np.arange(len(ref))
    left.bar(x - 0.4 + width / 2, ref, width, color="0.6", label="pi_ref")
    numbers = {}
    for k, beta in enumerate(betas, start=1):
        pi = kl_optimal_policy(ref, rewards, beta)
        left.bar(x - 0.4 + width * (k + 0.5), pi, width, label=f"pi*, beta = {beta:g}")
        # eq. 11 per completion, through the library: every completion scores beta log Z
        per_completion = ch03.rlhf_objective(
            jnp.asarray(rewards, jnp.float32), jnp.log(jnp.asarray(pi, jnp.float32))[:, None],
            jnp.log(jnp.asarray(ref, jnp.float32))[:, None], beta, jnp.ones((len(ref), 1)))
        numbers[f"beta={beta:g}"] = {"pi": pi.round(4).tolist(),
                                     **bandit_summary(pi, ref, rewards, beta),
                                     "beta_log_Z": float(beta * np.log(np.dot(ref, np.exp(rewards / beta)))),
                                     "rlhf_objective_per_completion":
                                         np.asarray(per_completion).round(4).tolist()}
    labels = [f"{c}\nr = {r:g}" for c, r in zip(completions, rewards)]
    left.set_xticks(x, [lab.replace("! ", "!\n") for lab in labels], fontsize=7)
    left.set(ylabel="probability", title="reference and optimal policies")
    left.legend(fontsize=7)
    sweep = np.geomspace(0.02, 20, 120)
    stats = [bandit_summary(kl_optimal_policy(ref, rewards, b), ref, rewards, b) for b in sweep]
    right.semilogx(sweep, [s["reward"] for s in stats], label="E_pi*[r]")
    right.semilogx(sweep, [s["kl"] for s in stats], label="KL(pi* || pi_ref)")
    right.semilogx(sweep, [s["objective"] for s in stats], "--", label="objective = beta log Z")
    right.axhline(float(np.dot(ref, rewards)), color="0.5", ls=":", lw=1, label="E_ref[r]")
    right.set(xlabel="beta", title="the optimum as beta grows")
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
    fig.tight_layout()
    numbers["reference_reward"] = float(np.dot(ref, rewards))
    return FigureResult(fig, numbers)
