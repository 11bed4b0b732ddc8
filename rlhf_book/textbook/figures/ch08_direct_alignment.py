"""Chapter 8 figures: DPO's loss and gradient weight against the margin (eqs. 79, 81, 108); the
family of §8.2 side by side (cDPO, robust DPO, IPO, SLiC's hinge, SimPO); the derivation on a
finite response set (the Gibbs-tilted optimum of eq. 95 over beta, ``J = beta log Z - beta KL``,
and the population DPO loss minimised back to ``pi*``); the KL that DPO, cDPO and IPO reach on
a certain preference; preference displacement on a log-linear policy (Figure 27) and its NLL
fix; and DPO on the synthetic world: offline on the simulated annotators' pairs with and
without the NLL term, and online on pairs the policy samples, on the same budget.

The experiments live in :mod:`rlhf_book.ch08_direct_alignment.experiments`; these functions
only draw. ``notebooks/ch08_direct_alignment.ipynb`` passes its own results; with no arguments
(``rlhf-book figures ch08``) the figures compute them, the world runs from chapter 4's SFT
model of the small GPT (:func:`rlhf_book.textbook.substrate.sft_small`).
"""

from __future__ import annotations

import functools

import numpy as np
from matplotlib.figure import Figure

from rlhf_book.ch08_direct_alignment import experiments as ex
from rlhf_book.lm.eval import mean_se
from rlhf_book.textbook import substrate
from rlhf_book.textbook.figures import FigureResult, figure, finish_axes

COLOURS = {"dpo": "tab:blue", "cdpo": "tab:orange", "robust": "tab:brown", "ipo": "tab:green",
           "hinge": "tab:red", "simpo": "tab:purple", "dpo+nll": "tab:cyan",
           "online dpo": "tab:pink", "online dpo+nll": "tab:olive", "sft": "0.4", "tabular": "tab:gray"}


def smooth(x, window: int = 5) -> np.ndarray:
    """The running mean of the last ``window`` steps along the last axis (fewer at the start)."""
    x = np.asarray(x, np.float64)
    c = np.cumsum(x, axis=-1)
    out = c.copy()
    out[..., window:] = c[..., window:] - c[..., :-window]
    counts = np.minimum(np.arange(1, x.shape[-1] + 1), window)
    return out / counts


@functools.lru_cache(maxsize=1)
def world_runs() -> dict[str, dict]:
    """:func:`rlhf_book.ch08_direct_alignment.experiments.world_runs` from the substrate's SFT
    model, once per process."""
    return ex.world_runs(substrate.sft_small())


# ----------------------------------------------------------------------------------------------
# Figures


@figure("ch08_dpo_loss", "ch08",
        "DPO's loss -log sigmoid(beta h) (eq. 79, left) and the weight sigmoid(-beta h) its "
        "gradient gives each pair (eqs. 81, 108, right) against the margin h = log pi(y_c) / "
        "pi_ref(y_c) - log pi(y_r) / pi_ref(y_r), for four beta. At h = 0 (policy = reference) "
        "every loss is log 2 and every weight 1/2; the dot is a worked pair "
        "(h = 2, beta = 0.1: loss 0.598139, weight 0.450166). A pair ranked the wrong way "
        "round (h < 0) weighs up to 1, one ranked right by a wide margin almost 0.")
def dpo_loss_weight(betas=ex.LOSS_BETAS) -> FigureResult:
    h = np.linspace(-60.0, 60.0, 481)
    curves = ex.loss_weight_curves(h, betas)
    fig = Figure(figsize=(10.5, 3.6))
    left, right = fig.subplots(1, 2)
    numbers = {}
    for beta, colour in zip(betas, ("tab:cyan", "tab:blue", "tab:purple", "tab:red")):
        per_pair, weight = curves[beta]["loss"], curves[beta]["weight"]
        left.plot(h, per_pair, color=colour, label=f"beta = {beta:g}")
        right.plot(h, weight, color=colour, label=f"beta = {beta:g}")
        numbers[f"beta={beta:g}"] = {"loss_at_0": float(per_pair[240]),
                                     "weight_at_0": float(weight[240])}
    worked = ex.worked_pair_losses()
    left.plot(worked["h"], worked["dpo"], "o", color="k", ms=5)
    left.annotate(f"h = 2, beta = 0.1: {worked['dpo']:.6f}", (worked["h"], worked["dpo"]),
                  xytext=(8, 8), textcoords="offset points", fontsize=7)
    right.plot(worked["h"], worked["weight"], "o", color="k", ms=5)
    right.annotate(f"w = {worked['weight']:.6f}", (worked["h"], worked["weight"]), xytext=(8, 6),
                   textcoords="offset points", fontsize=7)
    for ax in (left, right):
        ax.axvline(0, color="0.5", lw=0.6)
    finish_axes(left, xlabel="margin h", ylabel="-log sigmoid(beta h)", ylim=(0, 4),
                title="the DPO loss (eq. 79)")
    finish_axes(right, xlabel="margin h", ylabel="sigmoid(-beta h)", ylim=(0, 1.02),
                title="the gradient weight w (eq. 108)")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.tight_layout()
    numbers["worked_pair"] = worked
    return FigureResult(fig, numbers)


@figure("ch08_loss_family", "ch08",
        "The family of §8.2 on one pair against the margin h at beta = 0.1 (SimPO: h is its "
        "difference of average log-probs, beta = 0.1 and gamma = 0.05 to share the axis). "
        "Left: the losses; right: -dL/dh, how hard each pushes the margin up. DPO and robust "
        "DPO push at every h (towards h = infinity on a certain preference); cDPO (eps = 0.1) "
        "stops at h* = log(9) / beta = 22; IPO pulls h to 1 / (2 beta) = 5 from both sides "
        "(its squared loss and push dwarf the others': both axes turn logarithmic past 1 and 0.01); SLiC's hinge stops at beta h = 1; SimPO "
        "pushes until its margin clears gamma. Dots: the worked pair h = 2.")
def loss_family(beta: float = ex.WORKED_BETA, eps: float = ex.FAMILY_EPS) -> FigureResult:
    c = ex.loss_curves(np.linspace(-30.0, 60.0, 721), beta, eps)
    worked = ex.worked_pair_losses(beta, eps)
    labels = {"dpo": "DPO (eq. 79)", "cdpo": f"cDPO (eps = {eps:g})",
              "robust": f"robust DPO (eps = {eps:g})", "ipo": "IPO (h - 1/(2 beta))^2",
              "hinge": "SLiC hinge relu(1 - beta h)", "simpo": "SimPO (margin gamma)"}
    fig = Figure(figsize=(11, 3.8))
    left, right = fig.subplots(1, 2)
    for name, label in labels.items():
        left.plot(c["h"], c[name], color=COLOURS[name], label=label)
        right.plot(c["h"], c[f"{name}_push"], color=COLOURS[name], label=label)
        if name in worked:
            left.plot(worked["h"], worked[name], "o", color=COLOURS[name], ms=4)
    h_cdpo = float(np.log((1 - eps) / eps) / beta)
    for ax in (left, right):
        ax.axvline(0, color="0.5", lw=0.6)
        ax.axvline(h_cdpo, color=COLOURS["cdpo"], lw=0.8, ls=":")
        ax.axvline(1 / (2 * beta), color=COLOURS["ipo"], lw=0.8, ls=":")
    right.axhline(0, color="k", lw=0.6)
    left.set_yscale("symlog", linthresh=1.0)
    right.set_yscale("symlog", linthresh=0.01)
    finish_axes(left, xlabel="margin h", ylabel="loss (linear to 1, then log)", ylim=(0, 2000),
                title=f"losses at beta = {beta:g}")
    finish_axes(right, xlabel="margin h", ylabel="-dL/dh (linear to +-0.01, then log)",
                ylim=(-100, 100), title="push on the margin (0: the loss is satisfied)")
    left.legend(fontsize=7)
    fig.tight_layout()
    numbers = {"worked_pair": worked, "cdpo_optimum": h_cdpo, "ipo_optimum": 1 / (2 * beta),
               "hinge_zero_at": 1 / beta}
    return FigureResult(fig, numbers)


@figure("ch08_derivation", "ch08",
        "The derivation on three responses (pi_ref = [0.5, 0.3, 0.2], "
        "r = [1, 0, 2]). Left: the optimal policy pi* = pi_ref exp(r / beta) / Z (eq. 95) for "
        "each beta, from pi_ref (beta -> infinity) to all mass on the best response "
        "(beta -> 0). Middle: 2,000 random policies at beta = 1: J(pi) = E[r] - beta KL(pi || "
        "pi_ref) equals beta log Z - beta KL(pi || pi*) (eq. 94), so nothing beats pi* (star). "
        "Right: the policy that minimises the population DPO loss (Adam on a tabular policy, "
        "only log-probabilities) against pi* (eqs. 96, 104, 105).")
def derivation(betas=ex.TOY_BETAS) -> FigureResult:
    table = ex.toy_table(betas)
    fig = Figure(figsize=(12, 3.7))
    left, middle, right = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.1, 1, 1]})
    labels = ["pi_ref"] + [f"{b:g}" for b in betas]
    stacks = np.array([ex.TOY_REF] + [table[b]["pi"] for b in betas])
    bottom = np.zeros(len(labels))
    for k, colour in enumerate(("tab:blue", "tab:orange", "tab:green")):
        left.bar(labels, stacks[:, k], bottom=bottom, color=colour,
                 label=f"y{k + 1} (r = {ex.TOY_REWARDS[k]:g})")
        bottom += stacks[:, k]
    finish_axes(left, xlabel="beta", ylabel="probability", title="pi* = pi_ref exp(r / beta) / Z")
    left.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)

    beta = 1.0
    pis, J_all = ex.random_policy_objectives(beta)
    ref, rewards = np.array(ex.TOY_REF), np.array(ex.TOY_REWARDS)
    star = table[beta]["pi"].astype(np.float64)
    J_numpy = pis @ rewards - beta * np.sum(pis * np.log(pis / ref), axis=1)
    kl_star = np.sum(pis * np.log(pis / star), axis=1)
    middle.scatter(kl_star, J_all, s=3, alpha=0.4, color="tab:blue", label="random pi")
    grid = np.linspace(0, kl_star.max(), 50)
    middle.plot(grid, beta * table[beta]["log_Z"] - beta * grid, color="k", lw=1,
                label="beta log Z - beta KL(pi || pi*)")
    middle.plot(0, table[beta]["J"], "*", color="tab:red", ms=12, label="pi*")
    finish_axes(middle, xlabel="KL(pi || pi*)", ylabel="J(pi)", title=f"J(pi) at beta = {beta:g}")
    middle.legend(fontsize=7)

    learned = {b: ex.fit_population_dpo(b)[0] for b in betas}
    for b, marker in zip(betas, "osD^v"):
        right.plot(table[b]["pi"], learned[b], marker, ls="none", ms=6, label=f"beta = {b:g}")
    right.plot([0, 1], [0, 1], color="0.5", lw=0.8)
    finish_axes(right, xlabel="pi* (eq. 95)", ylabel="pi minimising the population DPO loss",
                title="DPO recovers pi*")
    right.legend(fontsize=7)
    fig.tight_layout()
    jax_vs_numpy = float(np.max(np.abs(J_all - J_numpy)))
    numbers = {f"beta={b:g}": {"pi": table[b]["pi"].tolist(), "Z": table[b]["Z"],
                               "kl": table[b]["kl"], "reward": table[b]["reward"],
                               "J": table[b]["J"], "dpo_pi": learned[b].tolist(),
                               "dpo_max_error": float(np.max(np.abs(learned[b]
                                                                    - table[b]["pi"])))}
               for b in betas}
    numbers["random_policies_best_J"] = float(J_all.max())
    numbers["max_J_identity_error"] = float(np.max(np.abs(
        J_numpy - (beta * table[beta]["log_Z"] - beta * kl_star))))
    numbers["regularized_objective_vs_numpy"] = jax_vs_numpy
    return FigureResult(fig, numbers)


@figure("ch08_achieved_kl", "ch08",
        "beta is a coefficient, not the KL DPO reaches (erratum on §8.1 and §8.3 in the guide): "
        "one pair whose label is certain, four responses, pi_ref uniform, a "
        "tabular policy trained by gradient descent. DPO's margin h and KL(pi || pi_ref) keep "
        "growing at every beta; cDPO (eps = 0.1) stops at h* = log(9) / beta and IPO at "
        "h = 1 / (2 beta), each with a finite KL that beta sets.")
def achieved_kl(runs: dict | None = None) -> FigureResult:
    runs = ex.certain_preference_runs() if runs is None else runs
    fig = Figure(figsize=(10.5, 3.6))
    left, right = fig.subplots(1, 2)
    styles = dict(zip(ex.KL_BETAS, ("-", "--", ":")))
    numbers = {}
    for loss, by_beta in runs.items():
        numbers[loss] = {}
        for beta, run in by_beta.items():
            steps = np.arange(1, len(run["kl"]) + 1)
            label = f"{loss}, beta = {beta:g}"
            left.plot(steps, run["h"], color=COLOURS[loss], ls=styles.get(beta, "-"), label=label)
            right.plot(steps, run["kl"], color=COLOURS[loss], ls=styles.get(beta, "-"),
                       label=label)
            numbers[loss][f"beta={beta:g}"] = {
                "h_at_100": float(run["h"][99]), "h_last": float(run["h"][-1]),
                "kl_at_100": float(run["kl"][99]), "kl_last": float(run["kl"][-1])}
    finish_axes(left, xlabel="gradient step", ylabel="margin h", xscale="log", yscale="log",
                title="the margin on a certain preference")
    finish_axes(right, xlabel="gradient step", ylabel="KL(pi || pi_ref) (nats)", xscale="log",
                title="the KL reached")
    right.legend(fontsize=6.5, ncol=3, loc="upper left")
    fig.tight_layout()
    return FigureResult(fig, numbers)


@figure("ch08_displacement", "ch08",
        "Preference displacement (Figure 27): one pair, a log-linear "
        "policy over 50 responses with 8 features, the rejected response's features at "
        "cosine 0.73 to the chosen one's, beta = 0.1, gradient descent. With DPO alone both "
        "log-probabilities fall, the rejected one faster, so the margin grows while almost all "
        "mass leaves for responses no pair mentions. The NLL term on the chosen response "
        "(alpha = 1) keeps it likely; a tabular policy (one logit per response) cannot "
        "displace: its chosen log-probability rises.")
def displacement(runs: dict | None = None) -> FigureResult:
    runs = ex.displacement_runs() if runs is None else runs
    fig = Figure(figsize=(13, 3.6))
    axes = fig.subplots(1, 3)
    labels = {"dpo": "DPO, log-linear", "dpo+nll": "DPO + NLL, log-linear",
              "tabular": "DPO, tabular"}
    numbers = {}
    for name, run in runs.items():
        steps = np.arange(1, len(run["chosen"]) + 1)
        colour = COLOURS[name]
        axes[0].plot(steps, run["chosen"], color=colour, label=f"{labels[name]}: log pi(y_c)")
        axes[0].plot(steps, run["rejected"], color=colour, ls="--",
                     label=f"{labels[name]}: log pi(y_r)")
        axes[1].plot(steps, run["margin"], color=colour, label=labels[name])
        axes[2].plot(steps, run["unseen"], color=colour, label=labels[name])
        numbers[name] = {f"step={s}": {"chosen": float(run["chosen"][s - 1]),
                                       "rejected": float(run["rejected"][s - 1]),
                                       "margin": float(run["margin"][s - 1]),
                                       "unseen": float(run["unseen"][s - 1])}
                         for s in (1000, len(steps))}
    axes[0].axhline(-np.log(ex.DISPLACEMENT_M), color="0.5", lw=0.6)
    finish_axes(axes[0], xlabel="step", ylabel="log-probability", ylim=(-26, 0.5),
                title="chosen (solid) and rejected (dashed)")
    finish_axes(axes[1], xlabel="step", ylabel="log pi(y_c) - log pi(y_r)", title="the margin h")
    finish_axes(axes[2], xlabel="step", ylabel="probability", ylim=(-0.02, 1.02),
                title="mass on the 48 responses no pair mentions")
    axes[0].legend(fontsize=6, loc="lower left")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    return FigureResult(fig, numbers)


@figure("ch08_dpo_world", "ch08",
        "DPO on the synthetic world, from chapter 4's SFT model of the small GPT (4 seeds, mean "
        "+- standard error; curves averaged over 5 steps; every run 32 steps of 8 pairs, lr 1e-4, "
        "beta 0.1). Left: the batch's implicit-reward accuracy during offline DPO on the biased "
        "annotators' pairs (3 in 4 right-vs-wrong) and online DPO on pairs of the policy's own "
        "samples (best vs worst of 8 by the gold reward), each with and without the chosen "
        "completions' NLL. Middle: the chosen and rejected sequence log-probabilities of the "
        "offline batches. Right: what the final policies answer to the 520 rephrased questions "
        "at temperature 1 (right, wrong, no answer; the gold reward's change from the SFT "
        "model, paired by question, above the bars).")
def dpo_world(runs: dict | None = None) -> FigureResult:
    """``runs``: :func:`rlhf_book.ch08_direct_alignment.experiments.world_runs`'s dict (the
    offline and online runs' metrics and an ``"eval"`` entry); by default computed."""
    runs = world_runs() if runs is None else runs
    fig = Figure(figsize=(14, 3.8))
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 1.2]})
    numbers = {}
    for name in (*ex.OFFLINE_RUNS, *ex.ONLINE_RUNS):
        m = runs[name]
        steps = np.arange(1, m["loss"].shape[1] + 1)
        colour = COLOURS[name]
        mean, se = mean_se(smooth(m["rewards/accuracies"]))
        axes[0].plot(steps, mean, color=colour, label=name)
        axes[0].fill_between(steps, mean - se, mean + se, color=colour, alpha=0.2, lw=0)
        numbers[name] = {"accuracy": ex.first_last(m["rewards/accuracies"], 5),
                         "logps/chosen": ex.first_last(m["logps/chosen"], 5),
                         "logps/rejected": ex.first_last(m["logps/rejected"], 5),
                         "loss": ex.first_last(m["loss/preference"], 5)}
        if name not in ex.OFFLINE_RUNS:
            continue
        for key, ls in (("logps/chosen", "-"), ("logps/rejected", "--")):
            mean, se = mean_se(smooth(m[key]))
            axes[1].plot(steps, mean, color=colour, ls=ls,
                         label=f"{name}: {key.split('/')[1]}")
            axes[1].fill_between(steps, mean - se, mean + se, color=colour, alpha=0.15, lw=0)
    finish_axes(axes[0], xlabel="step", ylabel="fraction of pairs (mean of 5 steps)", ylim=(0, 1),
                title="implicit reward ranks the batch's pairs right")
    axes[0].legend(fontsize=7)
    finish_axes(axes[1], xlabel="step", ylabel="sequence log-prob (nats, mean of 5 steps)",
                title="offline: log pi(y_c) (solid), log pi(y_r) (dashed)")
    axes[1].legend(fontsize=6.5)
    ev = runs["eval"]
    names = [n for n in ("sft", *ex.OFFLINE_RUNS, *ex.ONLINE_RUNS) if n in ev]
    kinds = (("right", "tab:green"), ("wrong", "tab:red"), ("none", "0.7"))
    bottom = np.zeros(len(names))
    for kind, colour in kinds:
        values = np.array([ev[n]["summary"]["rephrased"][kind] for n in names])
        axes[2].bar(names, values, bottom=bottom, color=colour, label=kind)
        bottom += values
    for k, n in enumerate(names):
        s = ev[n]["summary"]["rephrased"]
        label = (f"{s['gold']:+.2f}" if n == "sft"
                 else f"{s['d_gold']:+.2f}\n+-{s['d_gold_se']:.2f}")
        axes[2].text(k, 1.01, label, ha="center", fontsize=6.5)
    finish_axes(axes[2], ylabel="fraction of answers", ylim=(0, 1.15),
                title="answers to 520 rephrased questions (gold; change vs SFT)")
    axes[2].tick_params(axis="x", labelsize=6.5)
    axes[2].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    for n in names:
        numbers.setdefault(n, {})["answers"] = {rows: dict(ev[n]["summary"][rows])
                                                for rows in ev[n]["summary"]}
        if "heldout" in ev[n]:
            numbers[n]["heldout"] = {k: ev[n]["heldout"][k]
                                     for k in ("accuracy", "accuracy_se", "gold_accuracy",
                                               "margin", "logps/chosen", "logps/rejected")}
    for n in ex.ONLINE_RUNS:
        if n in runs and "score" in runs[n]:
            numbers.setdefault(n, {})["score"] = ex.first_last(runs[n]["score"], 8)
    return FigureResult(fig, numbers)
