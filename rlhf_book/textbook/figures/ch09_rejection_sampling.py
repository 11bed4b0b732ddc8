"""Chapter 9 figures: the book's Figure 28 redrawn with this chapter's settings, the worked
example's two selections on the reward matrix (eqs. 117, 118, 119, 120, 121, 122, 123), the
best-of-N curves of §9.3 (expected reward and KL against N, the formula against the exact KL of
discrete distributions, with and without ties), and best-of-N and rejection-sampling
fine-tuning on the synthetic world (gold reward against N and against KL, best-of-N ranked by
the gold reward and by chapter 5's learned reward model; what the reward model keeps; rewards
before and after selection; answers before and after one round of rejection sampling).

The experiments live in :mod:`rlhf_book.ch09_rejection_sampling.experiments`; these functions
only draw. ``notebooks/ch09_rejection_sampling.ipynb`` passes its own results; with no
arguments (``rlhf-book figures ch09``) the world figures compute them once per process from
chapter 4's SFT model of the small GPT (:func:`rlhf_book.textbook.substrate.sft_small`).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyBboxPatch, Rectangle

from rlhf_book import ch09_rejection_sampling as ch09
from rlhf_book.ch09_rejection_sampling import experiments as ex
from rlhf_book.lm.eval import ANSWER_KINDS
from rlhf_book.textbook import substrate
from rlhf_book.textbook.figures import FigureResult, figure, finish_axes


@functools.lru_cache(maxsize=1)
def world_runs() -> dict:
    """:func:`rlhf_book.ch09_rejection_sampling.experiments.world_runs` from the substrate's
    SFT model, once per process."""
    return ex.world_runs(substrate.sft_small())


# ----------------------------------------------------------------------------------------------
# Figures


@figure("ch09_rs_overview", "ch09",
        "Figure 28 redrawn with this chapter's settings: the prompts are given to the current "
        "model, which samples N completions of each; a reward (here the synthetic world's gold "
        "reward, in the book a reward model) scores every completion; a selection rule keeps "
        "the best one per prompt (eq. 113) or the best K pairs overall (eq. 116); the starting "
        "model is fine-tuned on what was kept with the instruction-tuning loss. Best-of-N "
        "(§9.3) stops after the selection and keeps the model unchanged.")
def rs_overview() -> FigureResult:
    fig = Figure(figsize=(11, 2.6))
    ax = fig.add_subplot()
    boxes = (("prompts\nx_1 ... x_M", f"M = {ex.WORLD_PROMPTS} training\nquestions", "0.85"),
             ("current model\nsamples N each", f"N = {ex.BON_N}, T = 1,\n<= {ex.MAX_NEW_TOKENS} "
                                                "new tokens", "#cfe2f3"),
             ("reward scores\nR [M, N]", "gold reward\n(book: a reward model)", "#fce5cd"),
             ("select\nper prompt / top K", "argmax_j r_ij (eq. 113)\nor top K of R_flat",
              "#d9ead3"),
             ("instruction-tune\non the kept pairs", f"{ex.RS_SFT_CONFIG.steps} steps at "
                                                     f"{ex.RS_SFT_CONFIG.learning_rate:g}",
              "#ead1dc"))
    width, gap = 1.7, 0.45
    for i, (title, detail, colour) in enumerate(boxes):
        x = i * (width + gap)
        ax.add_patch(FancyBboxPatch((x, 0.2), width, 1.2, boxstyle="round,pad=0.05",
                                    facecolor=colour, edgecolor="0.3"))
        ax.text(x + width / 2, 1.05, title, ha="center", va="center", fontsize=9,
                fontweight="bold")
        ax.text(x + width / 2, 0.5, detail, ha="center", va="center", fontsize=7.5)
        if i:
            ax.annotate("", (x - 0.04, 0.8), (x - gap + 0.04, 0.8),
                        arrowprops=dict(arrowstyle="->", lw=1.5))
    end = len(boxes) * (width + gap) - gap
    select_x = 3 * (width + gap) + width / 2
    ax.annotate("", (width + gap + width / 2, 1.48), (end - width / 2, 1.48),
                arrowprops=dict(arrowstyle="->", lw=1.2, ls="--", connectionstyle="arc3,rad=0.25"))
    ax.text((width + gap + end) / 2 + 0.3, 1.95, "another round from the new model (Llama 2)",
            ha="center", fontsize=7.5, style="italic")
    ax.annotate("best-of-N: return the kept\ncompletion, no training", (select_x, 0.15),
                (select_x, -0.55), ha="center", fontsize=7.5,
                arrowprops=dict(arrowstyle="<-", lw=1.0, color="tab:green"), color="tab:green")
    ax.set(xlim=(-0.2, end + 0.2), ylim=(-0.8, 2.2))
    ax.axis("off")
    fig.tight_layout()
    return FigureResult(fig, {"prompts": ex.WORLD_PROMPTS, "completions_per_prompt": ex.BON_N,
                              "max_new_tokens": ex.MAX_NEW_TOKENS,
                              "sft_steps": ex.RS_SFT_CONFIG.steps,
                              "learning_rate": ex.RS_SFT_CONFIG.learning_rate})


@figure("ch09_selection", "ch09",
        "The book's worked example (eqs. 117, 118, 119, 120, 121, 122, 123): the reward matrix R of 5 prompts x 4 "
        "completions. Left: the best completion of each prompt (eq. 113, circled: S(R) = "
        "[1, 2, 1, 3, 4] 1-based) and the best K = 5 pairs overall (eq. 116, squares, ranked "
        "best first): prompt 3 keeps two completions, prompt 5 none. Right: R flattened "
        "row-major (eq. 122) with the top 5 coloured; eq. 116's ascending argsort lists them as "
        "[0, 11, 5, 14, 8], eq. 123 prints the descending order [8, 5, 14, 0, 11] (erratum).")
def selection(rewards=ex.BOOK_R, k: int = ex.BOOK_K) -> FigureResult:
    rewards = np.asarray(rewards, np.float64)
    B, N = rewards.shape
    per_prompt = np.asarray(ch09.select_top_per_prompt(rewards))
    top_p, top_c = (np.asarray(a) for a in ch09.select_top_overall(rewards, k))
    flat = rewards.reshape(-1)
    literal = np.argsort(flat)[-k:]
    fig = Figure(figsize=(11, 3.8))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.9]})
    left.imshow(rewards, cmap="Blues", vmin=0, vmax=1.3)
    for (i, j), v in np.ndenumerate(rewards):
        left.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=9)
    for i, j in enumerate(per_prompt):
        left.add_patch(Circle((j, i), 0.36, fill=False, edgecolor="k", lw=2.0))
    for i, j in zip(top_p, top_c):
        left.add_patch(Rectangle((j - 0.42, i - 0.42), 0.84, 0.84, fill=False,
                                 edgecolor="tab:orange", lw=2.2))
    left.set_xticks(range(N), [f"c{j + 1}" for j in range(N)])
    left.set_yticks(range(B), [f"p{i + 1}" for i in range(B)])
    left.set_title("per prompt (circles) and top 5 overall (squares)", fontsize=9)
    colours = np.where(np.isin(np.arange(B * N), top_p * N + top_c), "tab:orange", "0.75")
    right.bar(np.arange(B * N), flat, color=colours)
    for rank, f in enumerate(top_p * N + top_c, 1):
        right.text(f, flat[f] + 0.02, f"#{rank}", ha="center", fontsize=7, color="tab:red")
    for i in range(1, B):
        right.axvline(i * N - 0.5, color="0.4", lw=0.6, ls=":")
    right.set_xticks(np.arange(B * N), [str(f) for f in range(B * N)], fontsize=7)
    finish_axes(right, xlabel="flat index k (prompt k // 4, completion k % 4; 0-based)",
                ylabel="reward", ylim=(0, 1.1),
                title=f"R_flat: argsort(R_flat)[-5:] = {literal.tolist()} (eq. 116, ascending); "
                      f"eq. 123: {(top_p * N + top_c).tolist()}")
    right.title.set_fontsize(8.5)
    fig.tight_layout()
    return FigureResult(fig, {
        "per_prompt_0_based": per_prompt.tolist(), "per_prompt_book": (per_prompt + 1).tolist(),
        "per_prompt_rewards": rewards[np.arange(B), per_prompt].tolist(),
        "top_k_flat": (top_p * N + top_c).tolist(),
        "top_k_pairs_book": [[int(i) + 1, int(j) + 1] for i, j in zip(top_p, top_c)],
        "top_k_rewards": rewards[top_p, top_c].tolist(),
        "argsort_as_written": literal.tolist(),
        "prompts_without_a_top_k_pair": [i + 1 for i in range(B) if i not in set(top_p)]})


@figure("ch09_bon_curves", "ch09",
        "Best-of-N as a distribution (§9.3). Left: the expected best of N rewards when a single "
        "reward is N(0, 1), exactly (expected_best_of_n_reward on a fine grid), by Monte Carlo "
        "(20,000 draws, +-2 standard errors) and the growth rate sqrt(2 log N). Right: KL(pi_BoN "
        "|| pi) against N: the formula log N - (N - 1)/N and the exact KL of discrete "
        "distributions, below it: uniform over K distinct rewards (closer as K grows), 1,000 "
        "outcomes sharing 3 reward levels (ties: the KL stops at -log P(top level)), a fair "
        "coin (at most log 2).")
def bon_curves(ns=ex.CURVE_NS) -> FigureResult:
    ns = np.asarray(ns)
    probs, x = ex.normal_atoms()
    exact = ex.expected_reward_curve(probs, x, ns)
    mc = ex.monte_carlo_max()
    kl = ex.kl_curves(ns)
    fig = Figure(figsize=(11, 3.9))
    left, right = fig.subplots(1, 2)
    left.plot(ns, exact, color="tab:blue", lw=2, label="exact E[max of N], r ~ N(0, 1)")
    left.errorbar(list(mc), [m for m, _ in mc.values()], yerr=[2 * s for _, s in mc.values()],
                  fmt="o", color="tab:red", ms=4, label="Monte Carlo (20,000 draws)")
    left.plot(ns[ns > 1], np.sqrt(2 * np.log(ns[ns > 1])), color="0.5", ls="--",
              label="sqrt(2 log N)")
    left.set_xscale("log", base=2)
    finish_axes(left, xlabel="N", ylabel="expected reward of best-of-N", title="reward vs N")
    left.legend(fontsize=7.5)
    colours = iter(("tab:orange", "tab:green", "tab:blue", "tab:purple", "tab:brown"))
    for name, curve in kl.items():
        if name == "formula":
            right.plot(ns, curve, color="k", lw=2.2, label="log N - (N - 1)/N (the formula)")
        elif name != "n":
            right.plot(ns, curve, color=next(colours), ls="-" if "K=" in name else "--",
                       lw=1.4, label=name)
    right.set_xscale("log", base=2)
    finish_axes(right, xlabel="N", ylabel="KL(pi_BoN || pi) (nats)", title="KL vs N")
    right.legend(fontsize=7.5)
    fig.tight_layout()
    at = {int(n): i for i, n in enumerate(ns)}
    numbers = {
        "expected_max_exact": {str(n): float(exact[at[n]]) for n in (2, 3, 4, 10, 16, 100)
                               if n in at},
        "expected_max_mc": {str(n): {"mean": m, "se": s} for n, (m, s) in mc.items()},
        "kl": {name: {str(n): float(curve[at[n]]) for n in (2, 4, 16, 256) if n in at}
               for name, curve in kl.items() if name != "n"}}
    return FigureResult(fig, numbers)


@figure("ch09_bon_world", "ch09",
        "Best-of-N on the synthetic world: chapter 4's SFT model of the small GPT answering 128 "
        "rephrased questions (training facts in phrasings no training data contains), 16 "
        "samples each (mean +- standard error over prompts). Left: the gold reward of the best "
        "of N samples (estimated without bias from the 16), ranked by the gold reward itself "
        "(the upper reference), by chapter 5's learned reward model, and, after one round of "
        "rejection sampling (RS) on the training questions, by gold. Right: the same gold "
        "reward against the KL from the SFT model: log N - (N - 1)/N (exact for a reward "
        "without ties, such as the reward model's; an upper bound with ties), the exact KL of "
        "best-of-N by gold on each prompt's empirical distribution (gold ties a lot), and the "
        "RS-tuned model (k1 estimate per completion) with its single-sample gold reward.")
def bon_world(runs: dict | None = None) -> FigureResult:
    runs = world_runs() if runs is None else runs
    ns = np.asarray(ex.WORLD_NS)
    gold, rm = runs["rephrased_gold"], runs["rephrased_rm"]
    by_gold, by_gold_se = ex.best_of_n_curve(gold, ns)
    by_rm, by_rm_se = ex.best_of_n_curve(gold, ns, by=rm)
    rs, rs_se = ex.best_of_n_curve(runs["rephrased_after"], ns)
    plug_in = ex.plug_in_exact_kl(gold, ns)
    formula = np.asarray(ch09.best_of_n_kl(ns))
    kl = np.asarray(runs["kl"], np.float64)
    kl_mean, kl_se = float(kl.mean()), float(kl.std(ddof=1) / math.sqrt(kl.size))
    after = np.asarray(runs["rephrased_after"], np.float64).mean(1)
    rs_gold, rs_gold_se = float(after.mean()), float(after.std(ddof=1) / math.sqrt(after.size))
    fig = Figure(figsize=(11, 3.9))
    left, right = fig.subplots(1, 2)
    for mean, se, colour, label in ((by_gold, by_gold_se, "tab:blue", "SFT, ranked by gold"),
                                    (by_rm, by_rm_se, "tab:purple",
                                     "SFT, ranked by the reward model"),
                                    (rs, rs_se, "tab:red", "after one round of RS, by gold")):
        left.errorbar(ns, mean, yerr=se, fmt="o-", color=colour, ms=4, capsize=2, label=label)
    left.set_xscale("log", base=2)
    left.set_xticks(ns, [str(n) for n in ns])
    finish_axes(left, xlabel="N", ylabel="gold reward of best-of-N",
                title="rephrased questions: gold vs N")
    left.legend(fontsize=7.5)
    right.errorbar(formula, by_gold, yerr=by_gold_se, fmt="o--", color="tab:blue", ms=4,
                   capsize=2, label="by gold, KL = log N - (N - 1)/N (bound)")
    right.errorbar(plug_in.mean(0), by_gold, yerr=by_gold_se, fmt="s-", color="tab:cyan", ms=4,
                   capsize=2, label="by gold, exact KL (ties; plug-in)")
    right.errorbar(formula, by_rm, yerr=by_rm_se, fmt="o-", color="tab:purple", ms=4,
                   capsize=2, label="by the reward model, KL = log N - (N - 1)/N")
    for n, x, y in zip(ns, formula, by_gold):
        right.annotate(f"N={n}", (x, y), xytext=(3, -10), textcoords="offset points", fontsize=7)
    right.errorbar([kl_mean], [rs_gold], xerr=[kl_se], yerr=[rs_gold_se], fmt="*",
                   color="tab:red", ms=11, capsize=2, label="one round of RS (sampled)")
    finish_axes(right, xlabel="KL from the SFT model (nats per completion)", ylabel="gold reward",
                title="gold vs KL")
    right.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return FigureResult(fig, {
        "n": ns.tolist(), "bon_by_gold": by_gold.tolist(), "bon_by_gold_se": by_gold_se.tolist(),
        "bon_by_rm": by_rm.tolist(), "bon_by_rm_se": by_rm_se.tolist(),
        "rs_bon_gold": rs.tolist(), "rs_bon_se": rs_se.tolist(), "kl_formula": formula.tolist(),
        "kl_plug_in": plug_in.mean(0).tolist(),
        "prompts_with_zero_plug_in_kl": float((plug_in[:, -1] < 1e-6).mean()),
        "rs_kl": kl_mean, "rs_kl_se": kl_se, "rs_gold": rs_gold, "rs_gold_se": rs_gold_se})


@figure("ch09_bon_reward_model", "ch09",
        "Best-of-N ranked by chapter 5's learned reward model, on the 128 rephrased questions "
        "(16 samples of the SFT model each). Left: the reward model's score and the gold reward "
        "of the sample it keeps, against N (mean +- standard error over prompts): the proxy "
        "rises far more than the truth. Right: what is kept, right / wrong / no answer and mean "
        "length: one sample, the best of 16 by the reward model, the best of 16 by gold.")
def bon_reward_model(runs: dict | None = None) -> FigureResult:
    runs = world_runs() if runs is None else runs
    ns = np.asarray(ex.WORLD_NS)
    gold, rm = runs["rephrased_gold"], runs["rephrased_rm"]
    score, score_se = ex.best_of_n_curve(rm, ns)
    by_rm, by_rm_se = ex.best_of_n_curve(gold, ns, by=rm)
    fig = Figure(figsize=(11, 3.9))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.2]})
    left.errorbar(ns, score - score[0], yerr=score_se, fmt="o-", color="tab:orange", ms=4,
                  capsize=2, label="reward-model score (minus one sample's)")
    left.errorbar(ns, by_rm - by_rm[0], yerr=by_rm_se, fmt="s-", color="tab:purple", ms=4,
                  capsize=2, label="gold reward (minus one sample's)")
    left.axhline(0, color="0.5", lw=0.8)
    left.set_xscale("log", base=2)
    left.set_xticks(ns, [str(n) for n in ns])
    finish_axes(left, xlabel="N", ylabel="gain over one sample",
                title="best-of-N by the reward model")
    left.legend(fontsize=7.5)
    chosen = runs["chosen"]
    names = list(chosen)
    bottom = np.zeros(len(names))
    for kind, colour in zip(ANSWER_KINDS, ("tab:green", "tab:red", "0.7")):
        share = np.array([chosen[n][kind] for n in names])
        right.bar(range(len(names)), share, bottom=bottom, color=colour, label=kind, width=0.6)
        for i, (b, v) in enumerate(zip(bottom, share)):
            if v > 0.04:
                right.text(i, b + v / 2, f"{v:.0%}", ha="center", va="center", fontsize=7)
        bottom += share
    for i, name in enumerate(names):
        right.text(i, 1.02, f"{chosen[name]['bytes']:.0f} bytes", ha="center", fontsize=7.5)
    right.set_xticks(range(len(names)), [n.replace(" by ", "\nby ") for n in names],
                     fontsize=8)
    finish_axes(right, ylabel="fraction of kept answers", ylim=(0, 1.1),
                title="what is kept (rephrased questions)")
    right.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return FigureResult(fig, {"n": ns.tolist(), "rm_score": score.tolist(),
                              "rm_score_se": score_se.tolist(), "gold": by_rm.tolist(),
                              "gold_se": by_rm_se.tolist(), "chosen": chosen})


@figure("ch09_rs_finetune", "ch09",
        "One round of rejection sampling on the synthetic world (128 training questions x 16 "
        "samples of chapter 4's SFT model, gold reward). Left: the gold rewards of all samples "
        "and of the completions each rule keeps (only those that ended with <|end|>): the best "
        "of each prompt (eq. 113) or the best 128 pairs overall (eq. 116), which are nearly all "
        "right answers but cover fewer prompts. Right: what the SFT model and the tuned models "
        "answer to the training questions (fresh samples, same key) and to the rephrased "
        "questions, with the mean gold reward; the title gives the paired gains +- standard error over "
        "prompts.")
def rs_finetune(runs: dict | None = None) -> FigureResult:
    runs = world_runs() if runs is None else runs
    record, top = runs["record"], runs["record_top_k"]
    sampled = np.asarray(record["all_rewards"], np.float64).reshape(-1)
    kept = np.asarray(record["selected_rewards"], np.float64)
    kept_top = np.asarray(top["selected_rewards"], np.float64)
    fig = Figure(figsize=(12, 4.1))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.35]})
    lo = math.floor(min(sampled.min(), kept.min()) * 4) / 4
    bins = np.arange(lo - 0.125, 1.25, 0.25)  # one bin per multiple of 0.25
    for values, colour, label in (
            (sampled, "tab:blue", f"all {sampled.size} samples"),
            (kept, "tab:orange", f"kept per prompt: {kept.size} from "
                                 f"{len(set(record['prompt_idx'].tolist()))} prompts"),
            (kept_top, "tab:green", f"kept top-K: {kept_top.size} from "
                                    f"{len(set(top['prompt_idx'].tolist()))} prompts")):
        left.hist(values, bins=bins, weights=np.full(values.size, 1 / values.size),
                  histtype="step", lw=2, color=colour, label=f"{label} (mean {values.mean():+.3f})")
    finish_axes(left, xlabel="gold reward", ylabel="fraction", title="before and after selection")
    left.legend(fontsize=7, loc="upper center")
    answers = runs["answers"]
    names = list(answers)
    bottom = np.zeros(len(names))
    for kind, colour in zip(ANSWER_KINDS, ("tab:green", "tab:red", "0.7")):
        share = np.array([answers[n][kind] for n in names])
        right.bar(range(len(names)), share, bottom=bottom, color=colour, label=kind, width=0.6)
        for i, (b, s) in enumerate(zip(bottom, share)):
            if s > 0.04:
                right.text(i, b + s / 2, f"{s:.0%}", ha="center", va="center", fontsize=7)
        bottom += share
    means = {"SFT, training": runs["before"], "RS, training": runs["after"],
             "RS top-K, training": runs["after_top_k"], "SFT, rephrased": runs["rephrased_gold"],
             "RS, rephrased": runs["rephrased_after"]}
    gains = {"per prompt": ex.paired_gain(runs["after"], runs["before"]),
             "top-K": ex.paired_gain(runs["after_top_k"], runs["before"]),
             "per prompt, rephrased": ex.paired_gain(runs["rephrased_after"],
                                                     runs["rephrased_gold"])}
    for i, name in enumerate(names):
        right.text(i, 1.02, f"gold {np.mean(means[name]):+.3f}", ha="center", fontsize=7.5)
    right.set_xticks(range(len(names)), [n.replace(", ", "\n") for n in names], fontsize=8)
    title = "gains: " + "; ".join(f"{k} {g:+.3f} +- {s:.3f}" for k, (g, s) in gains.items())
    finish_axes(right, ylabel="fraction of answers", ylim=(0, 1.1), title=title)
    right.title.set_fontsize(8)
    right.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return FigureResult(fig, {
        "sampled_mean": float(sampled.mean()), "kept_mean": float(kept.mean()),
        "kept": int(kept.size), "kept_top_k_mean": float(kept_top.mean()),
        "kept_top_k": int(kept_top.size),
        "top_k_prompts": len(set(top["prompt_idx"].tolist())),
        "prompts": int(record["all_rewards"].shape[0]), "answers": answers,
        "gold": {k: float(np.mean(v)) for k, v in means.items()},
        "gains": {k: {"mean": g, "se": s} for k, (g, s) in gains.items()}})
