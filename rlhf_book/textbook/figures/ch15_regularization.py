"""Chapter 15 figures: Schulman's three KL estimators against the exact KL as two distributions
move apart (bias and spread), the gradients the estimators give when used as a loss (by
enumeration on a categorical), the per-token KL of the mini GPT against its reference along
sampled completions, the reward-KL frontier of chapter 6's loop under a sweep of beta, and
forgetting: SFT against on-policy RL on a second task, measured on the first (§15.2).

This module only draws; the numbers come from :mod:`rlhf_book.ch15_regularization.experiments`.
``notebooks/ch15_regularization.ipynb`` passes its own results; with no arguments (``rlhf-book
figures ch15``) the figures recompute them (the runs on the mini GPT start from chapter 4's SFT
model of the small GPT, ``substrate.sft_small()``), each once per process.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from matplotlib.figure import Figure

from rlhf_book import ch15_regularization as ch15
from rlhf_book.ch15_regularization import experiments
from rlhf_book.ch15_regularization.experiments import CAT_VOCAB, FRONTIER_BETAS, GAUSS_MUS
from rlhf_book.lm.eval import mean_se
from rlhf_book.textbook import substrate
from rlhf_book.textbook.figures import FigureResult, figure, finish_axes

COLOURS = {"k1": "tab:blue", "k2": "tab:orange", "k3": "tab:green", "exact": "k",
           "sft": "tab:red", "rl": "tab:blue", "start": "0.4"}


@functools.lru_cache(maxsize=1)
def frontier_runs() -> dict:
    """:func:`~rlhf_book.ch15_regularization.experiments.frontier_runs` from the shared SFT
    model, once per process."""
    return experiments.frontier_runs(substrate.sft_small())


@functools.lru_cache(maxsize=1)
def forgetting_runs() -> dict:
    """:func:`~rlhf_book.ch15_regularization.experiments.forgetting_runs` from the shared SFT
    model, once per process."""
    return experiments.forgetting_runs(substrate.sft_small())


def per_token_kl() -> dict:
    """:func:`~rlhf_book.ch15_regularization.experiments.per_token_kl` of the beta = 0 policy
    of :func:`frontier_runs` (its first seed) against the shared SFT model."""
    params = jax.tree.map(lambda x: x[0], frontier_runs()["params"])
    return experiments.per_token_kl(params, substrate.sft_small())


@figure("ch15_estimators", "ch15",
        "Schulman's KL estimators (Schulman 2020's Gaussian example). Left: q = N(0, 1) "
        "sampled, reference p = N(mu, 1); bias / true KL and per-sample std / true KL of k1, k2, k3 against mu "
        "(10^6 samples each). Right: a 50-token categorical whose reference logits move away "
        "by a growing noise scale; the Monte Carlo mean of each estimator (200k samples, +- 2 "
        "standard errors) against the exact KL summed over the vocabulary.")
def estimators(gauss: dict | None = None, cat: dict | None = None) -> FigureResult:
    if gauss is None:
        gauss = experiments.gaussian_estimates(experiments.GAUSS_CURVE_MUS,
                                               n=experiments.GAUSS_CURVE_SAMPLES)
    cat = experiments.categorical_estimates() if cat is None else cat
    fig = Figure(figsize=(12, 3.6))
    axes = fig.subplots(1, 3)
    mus = np.asarray(sorted(gauss))
    for name in ch15.KL_ESTIMATORS:
        true = np.asarray([gauss[m]["true"] for m in mus])
        axes[0].plot(mus, [gauss[m][name]["bias"] for m in mus] / true, "o-", ms=3,
                     color=COLOURS[name], label=name)
        axes[1].plot(mus, [gauss[m][name]["std"] for m in mus] / true, "o-", ms=3,
                     color=COLOURS[name], label=name)
    axes[1].set_yscale("log")
    finish_axes(axes[0], xlabel="mu (KL = mu^2 / 2)", ylabel="bias / true KL",
                title="Gaussian: bias")
    finish_axes(axes[1], xlabel="mu", ylabel="std / true KL", title="Gaussian: spread per sample")
    scale = np.asarray(cat["scale"])
    axes[2].plot(scale, cat["exact"], "k-", lw=2, label="exact (sum over vocabulary)")
    for name in ch15.KL_ESTIMATORS:
        m, se = np.asarray(cat[name]["mean"]), np.asarray(cat[name]["se"])
        axes[2].errorbar(scale, m, yerr=2 * se, fmt="o", ms=3, color=COLOURS[name], label=name)
    finish_axes(axes[2], xlabel="noise scale of the reference logits", ylabel="nats",
                title=f"categorical, V = {CAT_VOCAB}")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    table = {f"mu={m:g}": {name: {"bias/true": gauss[m][name]["bias"] / gauss[m]["true"],
                                  "std/true": gauss[m][name]["std"] / gauss[m]["true"]}
                           for name in ch15.KL_ESTIMATORS}
             for m in mus if m in GAUSS_MUS}
    return FigureResult(fig, {"gaussian": table,
                              "categorical_exact_last": cat["exact"][-1],
                              **{f"categorical_{n}_last": cat[n]["mean"][-1]
                                 for n in ch15.KL_ESTIMATORS}})


@figure("ch15_estimator_gradients", "ch15",
        "The estimators used as a loss (book §15.1.2; §6.2.5): the expected gradient with "
        "respect to the policy's logits, E_{y ~ pi}[grad k(y)] with the sample held fixed, by "
        "enumeration over a 6-token vocabulary, beside the gradients of the reverse KL(pi || "
        "pi_ref) and of the forward KL(pi_ref || pi). k1's is zero, k2's is the reverse KL's, "
        "k3's is the forward KL's.")
def estimator_gradient_bars(grads: dict | None = None) -> FigureResult:
    grads = experiments.estimator_gradients() if grads is None else grads
    fig = Figure(figsize=(9, 3.4))
    ax = fig.subplots()
    v = np.arange(len(grads["theta"]))
    series = [("k1", "k1"), ("k2", "k2"), ("reverse", "grad KL(pi || ref)"),
              ("k3", "k3"), ("forward", "grad KL(ref || pi)")]
    colours = {"k1": COLOURS["k1"], "k2": COLOURS["k2"], "reverse": "tab:purple",
               "k3": COLOURS["k3"], "forward": "tab:olive"}
    w = 0.16
    for i, (key, label) in enumerate(series):
        ax.bar(v + (i - 2) * w, grads[key], w, color=colours[key],
               label=("E[grad " + label + "]") if key.startswith("k") else label)
    ax.axhline(0, color="k", lw=0.5)
    finish_axes(ax, xlabel="logit index", ylabel="d / d theta_v", title="expected gradients")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    err = {f"{k}_vs_{t}": float(np.max(np.abs(grads[k] - (grads[t] if t else 0))))
           for k, t in (("k1", None), ("k2", "reverse"), ("k3", "forward"))}
    return FigureResult(fig, {"max_abs_diff": err})


@figure("ch15_frontier", "ch15",
        "The reward-KL frontier of chapter 6's loop, and the gold peak: RLOO from chapter 4's "
        "SFT model on a proxy reward, chapter 5's reward model (trained on the biased "
        "annotators' pairs from the same SFT model), the KL to the SFT model as a k1 penalty in "
        "the reward with beta = 0, 0.05, 0.5; 4 seeds each in one vmapped run, 16 steps. Every 4 "
        "steps each policy answers 128 rephrased questions (T = 1). Left: the gold reward "
        "against the exact KL to the SFT model along the answers (mean +- SE over seeds; each "
        "line a beta, from step 0 to step 16). Middle: the proxy the same way. Right: answer "
        "length in bytes (the gold reward's length penalty starts at 48).")
def frontier(runs: dict | None = None) -> FigureResult:
    runs = frontier_runs() if runs is None else runs
    points = experiments.frontier_points(runs)
    fig = Figure(figsize=(13, 3.6))
    axes = fig.subplots(1, 3)
    cmap = {b: c for b, c in zip(FRONTIER_BETAS, ("k", "tab:red", "tab:blue", "tab:green"))}
    numbers = {}
    for b, p in points.items():
        label = f"beta = {b:g}" + (" (no KL penalty)" if b == 0 else "")
        for ax, key in zip(axes, ("gold", "proxy")):
            ax.errorbar(p["kl"], p[key], xerr=p["kl_se"], yerr=p[f"{key}_se"], color=cmap.get(b),
                        marker="o", ms=3, lw=1, capsize=2, label=label)
        axes[2].errorbar(p["steps"], p["bytes"], yerr=p["bytes_se"], color=cmap.get(b),
                         marker="o", ms=3, lw=1, capsize=2, label=label)
        numbers[f"beta={b:g}"] = {k: [float(x) for x in p[k]]
                                  for k in ("steps", "gold", "gold_se", "proxy", "proxy_se",
                                            "kl", "kl_se", "bytes")}
    finish_axes(axes[0], xlabel="KL(pi || pi_SFT) per answer (nats)",
                ylabel="gold reward (rephrased questions)", title="gold reward against KL")
    finish_axes(axes[1], xlabel="KL(pi || pi_SFT) per answer (nats)",
                ylabel="proxy (reward-model score)", title="the proxy it optimises")
    axes[2].axhline(48, color="0.5", ls=":", lw=0.8)
    finish_axes(axes[2], xlabel="RL step", ylabel="bytes", title="answer length")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return FigureResult(fig, numbers)


@figure("ch15_token_kl", "ch15",
        "The per-token KL of an RL policy (chapter 6's loop on the reward model, beta = 0, 16 steps "
        "from chapter 4's SFT model) against the SFT model along 128 sampled completions: at each completion "
        "position the mean exact KL over the vocabulary, and the mean k1 and k3 of the sampled "
        "token (+- 1 standard error over completions). Right: the same summed over positions, "
        "the sequence KL, per completion: exact against k1.")
def token_kl(result: dict | None = None) -> FigureResult:
    result = per_token_kl() if result is None else result
    fig = Figure(figsize=(10, 3.6))
    axes = fig.subplots(1, 2)
    m = result["mask"]
    n = m.sum(0)
    pos = np.arange(m.shape[1])[n >= 2]
    for name in ("exact", "k1", "k3"):
        x = result[name][:, pos]
        mean = x.sum(0) / n[pos]
        se = np.sqrt(((x - mean) ** 2 * m[:, pos]).sum(0) / (n[pos] - 1) / n[pos])
        axes[0].plot(pos, mean, "o-", ms=3, color=COLOURS[name], label=name)
        axes[0].fill_between(pos, mean - se, mean + se, color=COLOURS[name], alpha=0.2)
    finish_axes(axes[0], xlabel="completion position", ylabel="nats",
                title="KL(pi || pi_SFT) per token")
    seq_exact, seq_k1 = result["exact"].sum(1), result["k1"].sum(1)
    axes[1].scatter(seq_exact, seq_k1, s=8, color=COLOURS["k1"])
    lim = [min(seq_k1.min(), 0), max(seq_exact.max(), seq_k1.max())]
    axes[1].plot(lim, lim, "k--", lw=0.8, label="y = x")
    finish_axes(axes[1], xlabel="sum of exact per-token KL", ylabel="sum of k1 (log-ratio)",
                title="per completion")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return FigureResult(fig, {"sequence_exact": float(seq_exact.mean()),
                              "sequence_k1": float(seq_k1.mean()),
                              "sequence_k3": float(result["k3"].sum(1).mean()),
                              "length": float(m.sum(1).mean())})


@figure("ch15_forgetting", "ch15",
        "Forgetting (§15.2): from chapter 4's SFT model, 24 steps of 16 sequences on a new task "
        "(open the answer to an arithmetic question with 'The answer is') by SFT on "
        "demonstrations or by on-policy RL (GRPO on the format score, no KL term); 4 seeds "
        "each. Left: share of 64 sampled answers to arithmetic questions in the new format. "
        "Middle: gold reward of one sampled answer to each of 64 old-task questions (capital, "
        "animal, colour). Right: exact KL to the start model per answer, summed over tokens, on "
        "each task's answers. Mean +- standard error over seeds.")
def forgetting(runs: dict | None = None) -> FigureResult:
    runs = forgetting_runs() if runs is None else runs
    fig = Figure(figsize=(12, 3.4))
    axes = fig.subplots(1, 3)
    numbers = {}
    labels = ["start", "+ SFT", "+ RL"]
    for ax, task, title, ylabel in (
            (axes[0], "new", "new task (format on arithmetic)", "share 'The answer is ...'"),
            (axes[1], "old", "old task (capital, animal, colour)", "gold reward")):
        for i, run in enumerate(("start", "sft", "rl")):
            m, se = mean_se(runs[task][run])
            ax.bar(i, m, yerr=se, color=COLOURS[run], capsize=4)
            numbers[f"{task}_{run}"] = {"mean": float(m), "se": float(se)}
        ax.set_xticks(range(3), labels)
        finish_axes(ax, ylabel=ylabel, title=title)
    for j, task in enumerate(("new", "old")):
        for i, run in enumerate(("sft", "rl")):
            m, se = mean_se(runs[f"{task}_kl"][run])
            axes[2].bar(3 * j + i, m, yerr=se, color=COLOURS[run], capsize=4)
            numbers[f"{task}_kl_{run}"] = {"mean": float(m), "se": float(se)}
    axes[2].set_xticks([0, 1, 3, 4], ["SFT\nnew", "RL\nnew", "SFT\nold", "RL\nold"])
    finish_axes(axes[2], ylabel="KL to start per answer (nats)", title="distance moved")
    fig.tight_layout()
    return FigureResult(fig, numbers)
