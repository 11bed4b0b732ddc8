"""Chapter 3 figures: returns-to-go, the thermostat and its threshold policies, CartPole under
hand-written policies, REINFORCE learning curves over 16 seeds, and the KL-regularised objective
on a four-completion bandit.

Drawing only: each function takes the results of ``rlhf_book.ch03_training_overview.experiments``
as arguments (``notebooks/ch03_training_overview.ipynb`` passes the ones it computed); called
with no arguments, as ``rlhf-book figures`` does, it runs the experiment with its default
settings (the slowest, the REINFORCE curves, takes about 20 seconds on a 2-core CPU)."""

from __future__ import annotations

import math

import jax
import numpy as np
from matplotlib.figure import Figure

from rlhf_book import ch03_training_overview as ch03
from rlhf_book.ch03_training_overview import experiments
from rlhf_book.textbook.figures import FigureResult, figure


@figure("ch03_returns", "ch03",
        "Return-to-go G_t = r_t + gamma G_{t+1} for four discount factors. Left: a reward of 1 "
        "on every step of a 100-step episode (CartPole). Right: one reward of 1 on the last of "
        "20 steps (RLHF's response-level reward, where gamma = 1 is the usual choice).")
def returns(curves: dict | None = None) -> FigureResult:
    """``curves``: :func:`experiments.returns_to_go_curves` (computed when None)."""
    curves = experiments.returns_to_go_curves() if curves is None else curves
    first = next(iter(curves.values()))
    steps, completion = len(first["dense"]), len(first["sparse"])
    fig = Figure(figsize=(9, 3.2))
    left, right = fig.subplots(1, 2)
    numbers = {}
    for gamma, curve in curves.items():
        g_dense, g_sparse = curve["dense"], curve["sparse"]
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
        "The thermostat of book §3.1.1 under our dynamics (heater +1.5 °F per step, 5% of "
        "the gap to 50 °F lost per step, start 65 °F). Left: 100-step temperature traces; the "
        "band 68-72 °F earns +1 per step. Right: mean return over 200 episodes of each policy.")
def thermostat(returns_by_policy: dict | None = None, traces: dict | None = None,
               seed: int = 0) -> FigureResult:
    """``returns_by_policy``: :func:`experiments.compare_thermostat_policies`; ``traces``:
    :func:`experiments.thermostat_traces` (each computed from ``seed`` when None)."""
    config = ch03.ThermostatConfig()
    if returns_by_policy is None:
        returns_by_policy = experiments.compare_thermostat_policies(key=jax.random.PRNGKey(seed))
    if traces is None:
        traces = experiments.thermostat_traces(seed=seed, config=config)
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
        "74 and T = 69 scores 99: eq. 3 'may not be optimal depending on the dynamics' (§3.1.1).")
def thermostat_thresholds(sweep: dict | None = None) -> FigureResult:
    """``sweep``: :func:`experiments.threshold_sweep` (computed when None)."""
    sweep = experiments.threshold_sweep() if sweep is None else sweep
    fig = Figure(figsize=(6, 3.4))
    ax = fig.add_subplot()
    numbers = {}
    for heat_rate, scores in sweep.items():
        thresholds = list(scores)
        values = [scores[t] for t in thresholds]
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
def cartpole_policies(episodes: dict | None = None) -> FigureResult:
    """``episodes``: :func:`experiments.hand_policy_episodes` (computed when None)."""
    episodes = experiments.hand_policy_episodes() if episodes is None else episodes
    steps = len(next(iter(episodes.values()))[1])
    fig = Figure(figsize=(9, 3.2))
    left, right = fig.subplots(1, 2)
    numbers = {}
    for name, (states, alive) in episodes.items():
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
    """``lengths``: ``{label: episode lengths [seeds, iterations]}``, e.g.
    :func:`experiments.reinforce_runs` (computed when None)."""
    lengths = experiments.reinforce_runs() if lengths is None else lengths
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
                                         for i in experiments.REPORT_ITERATIONS if i <= runs.shape[1]},
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
def kl_objective(bandit: dict | None = None,
                 completions=experiments.BANDIT_COMPLETIONS) -> FigureResult:
    """``bandit``: :func:`experiments.kl_bandit` (computed when None)."""
    bandit = experiments.kl_bandit() if bandit is None else bandit
    ref, rewards, optima = bandit["ref"], bandit["rewards"], bandit["optima"]
    fig = Figure(figsize=(10, 3.6))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / (len(optima) + 1)
    x = np.arange(len(ref))
    left.bar(x - 0.4 + width / 2, ref, width, color="0.6", label="pi_ref")
    numbers = {}
    for k, (beta, optimum) in enumerate(optima.items(), start=1):
        left.bar(x - 0.4 + width * (k + 0.5), optimum["pi"], width, label=f"pi*, beta = {beta:g}")
        numbers[f"beta={beta:g}"] = {
            "pi": np.asarray(optimum["pi"]).round(4).tolist(),
            **{key: optimum[key] for key in ("reward", "kl", "objective", "beta_log_Z")},
            "rlhf_objective_per_completion":
                np.asarray(optimum["rlhf_objective_per_completion"]).round(4).tolist()}
    labels = [f"{c}\nr = {r:g}" for c, r in zip(completions, rewards)]
    left.set_xticks(x, [lab.replace("! ", "!\n") for lab in labels], fontsize=7)
    left.set(ylabel="probability", title="reference and optimal policies")
    left.legend(fontsize=7)
    sweep = bandit["sweep"]
    right.semilogx(sweep["beta"], sweep["reward"], label="E_pi*[r]")
    right.semilogx(sweep["beta"], sweep["kl"], label="KL(pi* || pi_ref)")
    right.semilogx(sweep["beta"], sweep["objective"], "--", label="objective = beta log Z")
    right.axhline(bandit["reference_reward"], color="0.5", ls=":", lw=1, label="E_ref[r]")
    right.set(xlabel="beta", title="the optimum as beta grows")
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
    fig.tight_layout()
    numbers["reference_reward"] = bandit["reference_reward"]
    return FigureResult(fig, numbers)
