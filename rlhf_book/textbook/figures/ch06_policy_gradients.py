"""Chapter 6 figures: the gradient weight each loss aggregation gives a token (§6.2.2), the PPO
objective and its gradient with CISPO's weight beside it (Figure 20), group advantages against
the number of correct completions (GRPO, Dr. GRPO, RLOO), GAE's lambda on Figure 21's value
example, truncated importance sampling and GSPO's sequence ratio, and RL on the small model:
learning curves of five algorithms in gold reward, and a length-hacking reward under a sweep of
KL coefficients.

This module only draws; the numbers come from :mod:`rlhf_book.ch06_policy_gradients.experiments`.
``notebooks/ch06_policy_gradients.ipynb`` passes its own results; with no arguments
(``rlhf-book figures ch06``) the RL figures run :func:`~.experiments.algorithm_runs` and
:func:`~.experiments.kl_sweep_runs` from chapter 4's SFT model (``substrate.sft_small()``),
each once per process.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from rlhf_book import ch06_policy_gradients as ch06
from rlhf_book.ch06_policy_gradients import experiments
from rlhf_book.ch06_policy_gradients.experiments import (
    AGG_LOSSES, AGG_MAX_LENGTH, ANSWER_KINDS, FIG21_VALUES, GAE_LAMBDAS, GROUP_SIZE,
    GSPO_SIGMA, LECTURE_RATIOS, PPO_EPS, TABLE_RATIOS, TIS_CAP, TIS_LOG_RATIOS, first_last)
from rlhf_book.lm.eval import mean_se
from rlhf_book.textbook import substrate
from rlhf_book.textbook.figures import FigureResult, figure, finish_axes

AGG_LABELS = {"per_sequence": "per sequence (eq. 67, GRPO)",
              "per_token": "per token (eq. 68, DAPO)",
              "fixed_length": "fixed length (eq. 69, Dr. GRPO)"}
ALGORITHM_COLOURS = {"grpo": "tab:blue", "dr_grpo": "tab:cyan", "rloo": "tab:green",
                     "ppo": "tab:red", "cispo": "tab:purple", "reinforce": "tab:olive",
                     "dapo": "tab:brown", "gspo": "tab:pink"}


@functools.lru_cache(maxsize=1)
def algorithm_runs() -> dict[str, dict]:
    """:func:`~rlhf_book.ch06_policy_gradients.experiments.algorithm_runs` from the shared SFT
    model, once per process."""
    return experiments.algorithm_runs(substrate.sft_small())


@functools.lru_cache(maxsize=1)
def kl_sweep_runs() -> dict[float, dict]:
    """:func:`~rlhf_book.ch06_policy_gradients.experiments.kl_sweep_runs` from the shared SFT
    model, once per process."""
    return experiments.kl_sweep_runs(substrate.sft_small())


def _band(ax, x, values, colour, label, **kw):
    mean, se = mean_se(values)
    ax.plot(x, mean, color=colour, label=label, **kw)
    ax.fill_between(x, mean - se, mean + se, color=colour, alpha=0.2, lw=0)


# ----------------------------------------------------------------------------------------------
# Figures


@figure("ch06_loss_aggregation", "ch06",
        "Loss aggregation (§6.2.2, eqs. 67, 68, 69) on the book's example: per-token losses "
        "[1, 1, 1, 1, 10] and [1 x 9, 10]. Each cell is the gradient of the batch loss with "
        "respect to that token's loss (jax.grad of aggregate_loss): per sequence, a token of "
        "the short sequence counts twice as much as one of the long sequence; per token and "
        "fixed length (L_max = 10), every token counts the same.")
def loss_aggregation(rows=AGG_LOSSES, max_length: int = AGG_MAX_LENGTH) -> FigureResult:
    results = experiments.aggregation_weights(rows, max_length)
    losses, mask = experiments.padded(rows)
    fig = Figure(figsize=(11, 3.3))
    axes = fig.subplots(len(results), 1)
    vmax = max(float(w.max()) for _, w in results.values())
    numbers = {}
    for ax, (mode, (value, weights)) in zip(axes, results.items()):
        shown = np.where(mask > 0, weights, np.nan)
        ax.imshow(shown, cmap="Blues", vmin=0, vmax=vmax * 1.8, aspect="auto")
        for (i, t), w in np.ndenumerate(weights):
            if mask[i, t]:
                ax.text(t, i, f"{w:.3f}\n(l={losses[i, t]:g})", ha="center", va="center",
                        fontsize=6.5)
        ax.set_yticks(range(len(rows)), [f"{int(mask[i].sum())} tokens" for i in range(len(rows))],
                      fontsize=7)
        ax.set_xticks([])
        ax.set_title(f"{AGG_LABELS[mode]}: loss = {value:.4g}", fontsize=8.5, loc="left")
        numbers[mode] = {"loss": value,
                         "weights": [sorted({round(float(w), 6) for w, m in zip(wr, mr) if m})
                                     for wr, mr in zip(weights, mask)]}
    fig.suptitle("d loss / d l_t for every completion token (blank: padding)", fontsize=9)
    fig.tight_layout()
    return FigureResult(fig, numbers)


@figure("ch06_ppo_objective", "ch06",
        "Figure 20 reproduced: PPO's clipped objective J(rho) = min(rho A, clip(rho, 0.8, 1.2) A) "
        "(top) and its gradient dJ/d rho (bottom) for A = +1 and A = -1; the shaded band is the "
        "trust region 1 +- eps. Dashed: the weight each method puts on grad log pi, rho dJ/d rho "
        "for PPO and min(rho, 1.2) A for CISPO (capped at 1 + eps, no lower clip): PPO drops "
        "the token (weight 0) on one side of the band, CISPO never does.")
def ppo_regions(eps: float = PPO_EPS) -> FigureResult:
    fig = Figure(figsize=(10.5, 5.6))
    axes = fig.subplots(2, 2, sharex=True)
    numbers = {}
    for col, advantage in enumerate((1.0, -1.0)):
        c = experiments.ppo_curves(advantage, eps=eps)
        top, bottom = axes[0, col], axes[1, col]
        for ax in (top, bottom):
            ax.axvspan(1 - eps, 1 + eps, color="tab:green", alpha=0.12)
            ax.axvline(1.0, color="0.5", lw=0.6)
        top.plot(c["rho"], c["rho"] * advantage, color="0.6", ls=":", label="unclipped rho A")
        top.plot(c["rho"], c["J"], color="tab:blue", lw=2, label="J = min(rho A, clip(rho) A)")
        for label, r in LECTURE_RATIOS.items():
            j = float(ch06.ppo_objective(jnp.float32(r), jnp.float32(advantage), eps, eps))
            top.plot(r, j, "o", color="tab:red", ms=5)
            top.annotate(f"rho={r:g}: J={j:+.2f}", (r, j), xytext=(4, -12 if advantage > 0 else 6),
                         textcoords="offset points", fontsize=7)
        finish_axes(top, title=f"A = {advantage:+g}", ylabel="objective J")
        top.legend(fontsize=7, loc="upper left" if advantage > 0 else "lower left")
        bottom.plot(c["rho"], c["dJ"], color="tab:blue", lw=2, label="PPO dJ/d rho")
        bottom.plot(c["rho"], c["ppo_weight"], color="tab:blue", ls="--", lw=1,
                    label="PPO weight on grad log pi (rho dJ/d rho)")
        bottom.plot(c["rho"], c["cispo_weight"], color="tab:purple", ls="--", lw=1.5,
                    label="CISPO weight min(rho, 1+eps) A")
        bottom.axhline(0, color="k", lw=0.6)
        finish_axes(bottom, xlabel="ratio rho = pi_theta / pi_old", ylabel="gradient")
        bottom.legend(fontsize=7, loc="upper left" if advantage > 0 else "lower left")
        exact = experiments.ppo_curves(advantage, TABLE_RATIOS, eps)
        numbers[f"A={advantage:+g}"] = {
            f"rho={r:g}": {"J": float(exact["J"][k]), "dJ/drho": float(exact["dJ"][k]),
                           "ppo_weight": float(exact["ppo_weight"][k]),
                           "cispo_weight": float(exact["cispo_weight"][k])}
            for k, r in enumerate(TABLE_RATIOS)}
    fig.tight_layout()
    return FigureResult(fig, numbers)


@figure("ch06_group_advantages", "ch06",
        "Group advantages for G = 8 binary rewards with k correct (Figure 22; eqs. 57, 58, 59): the "
        "advantage of a correct completion (solid) and of an incorrect one (dashed). GRPO divides "
        "by the group's std, which is smallest when nearly all or nearly none are correct "
        "(bars, right axis: 1/std), so a lone correct answer gets 2.47; Dr. GRPO does not "
        "divide; RLOO is Dr. GRPO times G/(G-1) = 8/7 (eq. 60).")
def group_advantages(group_size: int = GROUP_SIZE) -> FigureResult:
    g = experiments.group_advantage_table(group_size)
    fig = Figure(figsize=(10.5, 3.8))
    ax, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.6, 1]})
    for name, colour, label in (("grpo", "tab:blue", "GRPO (r - mean) / (std + 1e-4)"),
                                ("dr_grpo", "tab:cyan", "Dr. GRPO r - mean"),
                                ("rloo", "tab:green", "RLOO r - mean of the others")):
        ax.plot(g["k"], g[f"{name}_correct"], "o-", color=colour, label=f"{label}: correct")
        ax.plot(g["k"], g[f"{name}_incorrect"], "s--", color=colour, ms=4, label="... incorrect")
    ax.axhline(0, color="k", lw=0.6)
    finish_axes(ax, xlabel=f"k correct of G = {group_size}", ylabel="advantage",
                title="advantage of a correct and an incorrect completion")
    ax.legend(fontsize=6.5, ncol=2, loc="lower left")
    right.bar(g["k"], 1.0 / g["std"], color="tab:blue", alpha=0.6)
    for k, v in zip(g["k"], 1.0 / g["std"]):
        right.text(k, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    finish_axes(right, xlabel=f"k correct of G = {group_size}", ylabel="1 / std (ddof = 1)",
                title="GRPO's extra weight = GRPO / Dr. GRPO", ylim=(0, 3.3))
    fig.tight_layout()
    return FigureResult(fig, {k: v.tolist() for k, v in g.items()})


@figure("ch06_gae_lambda", "ch06",
        "GAE (§6.3.2, eqs. 75, 76, 77) on Figure 21's value example: rewards 0 on five tokens and "
        "0.73 at <|eos|>, the critic's predictions V = .45 ... .73, gamma = 1. Left: the "
        "regression targets (Monte-Carlo returns, 0.73 everywhere) and the predictions. Right: "
        "advantages for lambda = 0 (one-step TD), 0.5, 0.95 and 1 (returns minus V, the "
        "figure's A_t): lambda trades the critic's bias for the returns' variance.")
def gae_lambda(lambdas=GAE_LAMBDAS) -> FigureResult:
    sweep = experiments.gae_sweep(lambdas)
    t = np.arange(len(FIG21_VALUES))
    tokens = ("The", "answer", "is", "5", ".", "<|eos|>")
    fig = Figure(figsize=(10.5, 3.5))
    left, right = fig.subplots(1, 2)
    left.bar(t - 0.2, sweep["returns"], 0.4, color="tab:orange", label="target (return) 0.73")
    left.bar(t + 0.2, FIG21_VALUES, 0.4, color="tab:blue", label="prediction V(s_t)")
    left.set_xticks(t, tokens, fontsize=8)
    finish_axes(left, ylabel="value", title="the critic's regression (Figure 21)", ylim=(0, 0.9))
    left.legend(fontsize=7, loc="lower right")
    for lam, colour in zip(lambdas, ("tab:gray", "tab:cyan", "tab:blue", "tab:red")):
        right.plot(t, sweep[lam], "o-", color=colour, label=f"lambda = {lam:g}")
    right.set_xticks(t, tokens, fontsize=8)
    finish_axes(right, ylabel="advantage A_t", title="GAE advantages (gamma = 1)")
    right.legend(fontsize=7)
    fig.tight_layout()
    return FigureResult(fig, {f"lambda={lam:g}": sweep[lam].tolist() for lam in lambdas}
                        | {"returns": sweep["returns"].tolist()})


@figure("ch06_tis_gspo", "ch06",
        "Left: truncated importance-sampling weights min(pi_learner / pi_sampler, 2) (§6.2.4, "
        "eq. 70; Open Instruct's cap) against the log-ratio, one-sided: below 1 the ratio passes "
        "unchanged; dots are example log-ratios. Right: with independent token log-ratios "
        "~ N(0, 0.1^2), the spread of log rho for a single token, for the unnormalised "
        "sequence ratio prod_t rho_t (grows like sqrt(|a|)) and for GSPO's length-normalised "
        "ratio (eq. 63, shrinks like 1/sqrt(|a|)).")
def tis_gspo(cap: float = TIS_CAP) -> FigureResult:
    x = np.linspace(-3, 3, 301).astype(np.float32)
    w = experiments.tis_curve(x, cap)
    points = np.asarray(TIS_LOG_RATIOS, np.float32)
    wp = experiments.tis_curve(points, cap)
    spread = experiments.gspo_spread()
    fig = Figure(figsize=(10.5, 3.6))
    left, right = fig.subplots(1, 2)
    left.plot(x, np.exp(x), color="0.6", ls=":", label="ratio e^x (untruncated)")
    left.plot(x, w, color="tab:blue", lw=2, label=f"TIS weight min(e^x, {cap:g})")
    shown = np.abs(points) <= 3
    left.plot(points[shown], wp[shown], "o", color="tab:red", ms=5)
    for p, v in zip(points[shown], wp[shown]):
        left.annotate(f"{v:.3g}", (p, v), xytext=(3, 5), textcoords="offset points", fontsize=7)
    finish_axes(left, xlabel="log pi_learner - log pi_sampler", ylabel="weight", ylim=(0, 4),
                title="truncated importance sampling (C = 2)")
    left.legend(fontsize=7, loc="upper left")
    L = np.asarray(spread["length"])
    right.loglog(L, spread["token_log_std"], "o-", color="0.5", label="one token log rho_t")
    right.loglog(L, spread["product_log_std"], "s-", color="tab:red",
                 label="sequence sum_t log rho_t (unnormalised)")
    right.loglog(L, spread["gspo_log_std"], "^-", color="tab:blue",
                 label="GSPO mean_t log rho_t (eq. 63)")
    finish_axes(right, xlabel="completion length |a| (tokens)", ylabel="std of the log-ratio",
                title=f"token log-ratios ~ N(0, {GSPO_SIGMA:g}^2)")
    right.legend(fontsize=7)
    fig.tight_layout()
    return FigureResult(fig, {"tis_weights": dict(zip(map(str, TIS_LOG_RATIOS), wp.tolist())),
                              **spread})


@figure("ch06_rl_algorithms", "ch06",
        "RL with real gradients on chapter 4's SFT model (the small GPT), rewarded by the gold "
        "reward: five algorithms with the same budget (20 steps of 8 training questions x 8 "
        "completions of at most 32 tokens, learning rate 1e-4, beta 0.02), 3 seeds each, mean "
        "+- standard error. From the left: gold reward of the completions sampled at each "
        "step; KL to the SFT model (summed over a completion's tokens); completion length in "
        "tokens; and what the final policies answer to 128 rephrased questions (phrasings no "
        "training data contains; 5 samples per question and seed; right, wrong, or no answer "
        "stated; mean gold reward above), next to the SFT model sampled with the same keys. "
        "Every algorithm raises the gold reward; right answers rise and wrong ones fall.")
def rl_algorithms(runs: dict | None = None) -> FigureResult:
    """``runs``: ``{algorithm: metrics [seeds, steps] (+ "answers")}``, optionally with
    ``"sft": {"answers": ...}``; by default :func:`algorithm_runs`."""
    runs = algorithm_runs() if runs is None else runs
    fig = Figure(figsize=(14, 3.6))
    axes = fig.subplots(1, 4, gridspec_kw={"width_ratios": [1, 1, 1, 0.9]})
    numbers = {}
    for algorithm, metrics in runs.items():
        if "score" not in metrics:
            continue
        colour = ALGORITHM_COLOURS.get(algorithm, None)
        steps = np.arange(1, metrics["score"].shape[1] + 1)
        for ax, key in zip(axes, ("score", "kl", "length")):
            _band(ax, steps, metrics[key], colour, algorithm)
        numbers[algorithm] = {"gold": first_last(metrics["score"]),
                              "kl_last": first_last(metrics["kl"])["last"],
                              "length": first_last(metrics["length"]),
                              "seeds": int(metrics["score"].shape[0])}
    finish_axes(axes[0], xlabel="RL step", ylabel="mean gold reward of the step's samples",
                title="gold reward (training questions)")
    finish_axes(axes[1], xlabel="RL step", ylabel="KL(pi || pi_SFT) per completion (nats)",
                title="KL to the SFT model")
    finish_axes(axes[2], xlabel="RL step", ylabel="tokens", title="completion length")
    axes[0].legend(fontsize=7)
    answers = {name: {k: v for k, v in m["answers"]["rephrased"].items()
                      if k in (*ANSWER_KINDS, "gold", "gold_se", "samples")}
               for name, m in runs.items() if "answers" in m}
    if answers:
        names = list(answers)
        bottom = np.zeros(len(names))
        for kind, colour in zip(ANSWER_KINDS, ("tab:green", "tab:red", "0.7")):
            share = np.array([answers[n][kind] for n in names])
            axes[3].bar(range(len(names)), share, bottom=bottom, color=colour, label=kind)
            bottom += share
        for k, n in enumerate(names):
            axes[3].text(k, 1.01, f"{answers[n]['gold']:+.2f}", ha="center", fontsize=7)
        axes[3].set_xticks(range(len(names)), names, rotation=30, fontsize=7)
        finish_axes(axes[3], ylabel="fraction of answers", ylim=(0, 1.1),
                    title="rephrased questions (gold above)")
        axes[3].legend(fontsize=7, loc="lower right")
        numbers["answers"] = answers
    fig.tight_layout()
    return FigureResult(fig, numbers)


@figure("ch06_kl_sweep", "ch06",
        "Exercises 3 and 5 of the numpy lesson \"RLHF: Reward Model + PPO\" with real "
        "gradients: RLOO on the flawed reward len(response) / 100 from chapter 4's SFT model, with the KL penalty folded into "
        "the reward, beta = 0 (no penalty), 0.001, 0.02, 0.1 and 0.5; 4 seeds each, mean +- "
        "standard error. Left: completion length in tokens (32 is the limit). Middle: the "
        "reward. Right: KL to the SFT model per completion.")
def kl_sweep(runs: dict | None = None) -> FigureResult:
    runs = kl_sweep_runs() if runs is None else runs
    fig = Figure(figsize=(12, 3.6))
    axes = fig.subplots(1, 3)
    colours = dict(zip(sorted(runs), ("k", "tab:red", "tab:orange", "tab:green", "tab:blue")))
    numbers = {}
    for beta in sorted(runs):
        metrics = runs[beta]
        steps = np.arange(1, metrics["score"].shape[1] + 1)
        label = f"beta = {beta:g}" + (" (no KL)" if beta == 0 else "")
        for ax, key in zip(axes, ("length", "score", "kl")):
            _band(ax, steps, metrics[key], colours.get(beta), label)
        numbers[f"beta={beta:g}"] = {"length": first_last(metrics["length"]),
                                     "reward": first_last(metrics["score"]),
                                     "kl": first_last(metrics["kl"]),
                                     "seeds": int(metrics["score"].shape[0])}
    finish_axes(axes[0], xlabel="RL step", ylabel="tokens", title="completion length")
    finish_axes(axes[1], xlabel="RL step", ylabel="len(response) / 100", title="the flawed reward")
    finish_axes(axes[2], xlabel="RL step", ylabel="KL(pi || pi_SFT) per completion (nats)",
                title="KL to the SFT model")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return FigureResult(fig, numbers)
