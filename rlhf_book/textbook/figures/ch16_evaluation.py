"""Chapter 16 figures: one model scored eight ways (§16.1), evaluation variance against Table 7
(§16.2, Appendix C.2 and C.3), contamination planted and detected (§16.4), and a leaderboard
rated by Elo and by Bradley-Terry (§16.3).

This module only draws; the numbers come from :mod:`rlhf_book.ch16_evaluation.experiments`.
``notebooks/ch16_evaluation.ipynb`` passes its own results; with no arguments (``rlhf-book
figures ch16``) the figures recompute them from the shared models, each once per process.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
from matplotlib.figure import Figure

from rlhf_book.ch16_evaluation import experiments, leaderboard, variance
from rlhf_book.lm.eval import mean_se
from rlhf_book.textbook import substrate
from rlhf_book.textbook.figures import FigureResult, figure, finish_axes

# How the notebook names each way of scoring (experiments.format_scores' keys), in plot order.
FORMAT_LABELS = {
    "full": "full answer, log-lik.",
    "full_token": "full answer, per token",
    "full_char": "full answer, per char",
    "letter": "letter (A)-(D), log-lik.",
    "generate_parser": "generate, world's parser",
    "generate_lenient": "generate, 'The answer is X'",
    "generate_strict": "generate, 'The answer is: X'",
    "generate_mc_letter": "generate after (A)-(D), '(X)'",
}
CATEGORY = {"high": ("GPQA", "AlpacaEval 3", "IFEval"),
            "very stable": ("LiveCodeBench (Avg@10)", "MBPPPlus", "MATH", "MMLU", "PopQA")}
CATEGORY_COLOURS = {"high": "tab:red", "stable": "tab:orange", "very stable": "tab:green"}


@functools.lru_cache(maxsize=1)
def format_scores() -> dict:
    return experiments.format_scores(substrate.sft_small(), experiments.mc_items())


@functools.lru_cache(maxsize=1)
def rerun_matrix() -> dict:
    return experiments.rerun_matrix(substrate.sft_small(), experiments.rerun_questions())


@functools.lru_cache(maxsize=1)
def contamination_runs() -> dict:
    split = experiments.leak_split()
    params, conversations = experiments.contaminated_sft(substrate.sft_small(), split)
    return {"detected": experiments.detection(conversations, split),
            "before": experiments.group_accuracy(substrate.sft_small(), split),
            "after": experiments.group_accuracy(params, split)}


@functools.lru_cache(maxsize=1)
def arena() -> dict:
    answers = experiments.arena_answers(substrate.sft_small(), substrate.pretrained_small()[0],
                                        experiments.RM_JUDGE(substrate.reward_model_small()))
    return {"answers": answers, "battles": experiments.battles(answers)}


@figure("ch16_formats", "ch16",
        "One model, one set of 200 questions, eight scores (book §16.1). Chapter 4's SFT model "
        "answers the world's rephrased fact questions as four-way multiple choice. Scoring the "
        "full answers' log-likelihood reads its knowledge; the letters (a format it never saw) "
        "are at chance with a strong letter preference; its own greedy answers score by how "
        "they are read back: the world's parser, a lenient 'The answer is X', the strict "
        "'The answer is: X' (0). Bars: accuracy +- 1 standard error over questions.")
def formats_figure(scores: dict | None = None) -> FigureResult:
    scores = format_scores() if scores is None else scores
    fig = Figure(figsize=(11, 3.8))
    ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})
    names = list(FORMAT_LABELS)
    stats = [mean_se(np.asarray(scores[n], float)) for n in names]
    means = [float(m) for m, _ in stats]
    ax.barh(range(len(names)), means, xerr=[float(s) for _, s in stats], color=[
        "tab:blue"] * 3 + ["tab:orange"] + ["tab:green"] * 3 + ["tab:orange"])
    ax.set_yticks(range(len(names)), [FORMAT_LABELS[n] for n in names], fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0.25, color="0.3", ls=":", lw=1, label="chance (1 in 4)")
    ax.legend(fontsize=7, loc="lower right")
    finish_axes(ax, xlabel="accuracy", xlim=(0, 1), title="the same model, scored eight ways")
    shares = np.bincount(np.asarray(scores["letter_pred"]), minlength=4) / len(scores["letter_pred"])
    ax2.bar(list("ABCD"), shares, color="tab:orange")
    ax2.axhline(0.25, color="0.3", ls=":", lw=1)
    finish_axes(ax2, ylabel="share of predictions", title="which letter it picks")
    fig.tight_layout()
    return FigureResult(fig, {**{n: round(m, 4) for n, m in zip(names, means)},
                              "letter_shares": [round(float(s), 3) for s in shares]})


@figure("ch16_variance", "ch16",
        "Evaluation variance (book §16.2, Appendix C.2 and C.3). Left: Table 7, the standard "
        "deviation of each benchmark over re-runs (Olmo 3). Middle: 32 sampled re-runs (T = 1) "
        "of a 60-question evaluation per topic of this world, measured standard deviation "
        "(+- 1 standard error) against the binomial prediction sqrt(sum p_i (1 - p_i)) / N. "
        "Right: averaging k re-runs (avg@k) divides it by sqrt(k); the winner's curse, the "
        "expected spurious gain of the best of N equal seeds in units of sigma.")
def variance_figure(matrix: dict | None = None) -> FigureResult:
    matrix = rerun_matrix() if matrix is None else matrix
    rows = experiments.variance_table(matrix)
    fig = Figure(figsize=(13, 3.8))
    axes = fig.subplots(1, 3)
    names = list(variance.TABLE7)
    colours = [CATEGORY_COLOURS["high" if n in CATEGORY["high"] else
                                "very stable" if n in CATEGORY["very stable"] else "stable"]
               for n in names]
    axes[0].barh(range(len(names)), [variance.TABLE7[n] for n in names], color=colours)
    axes[0].set_yticks(range(len(names)), names, fontsize=7)
    axes[0].invert_yaxis()
    finish_axes(axes[0], xlabel="std over re-runs (points)", title="Table 7 (Olmo 3)")
    topics = [r for r in rows if r["topic"] != "all"]
    x = np.arange(len(topics))
    axes[1].errorbar(x - 0.1, [100 * r["measured"] for r in topics],
                     [100 * r["measured_se"] for r in topics], fmt="o", label="measured")
    axes[1].plot(x + 0.1, [100 * r["predicted"] for r in topics], "s", color="tab:red",
                 label="binomial prediction")
    axes[1].set_xticks(x, [f"{r['topic']}\nacc {r['accuracy']:.2f}" for r in topics], fontsize=7)
    axes[1].legend(fontsize=7)
    finish_axes(axes[1], ylabel="std over re-runs (points)", ylim=(0, None),
                title="this world, N = 60 per topic")
    right = matrix["right"]
    ks = [1, 2, 4, 8]
    spread = [100 * variance.avg_at_k(right, k).std(ddof=1) for k in ks]
    axes[2].plot(ks, spread, "o-", label="avg@k over all topics, measured")
    axes[2].plot(ks, spread[0] / np.sqrt(ks), "k--", lw=1, label="sigma_1 / sqrt(k)")
    ns = [1, 2, 3, 5, 10, 20]
    curse = [spread[0] * variance.expected_max_normal(n) for n in ns]
    axes[2].plot(ns, curse, "^-", color="tab:purple",
                 label="best of N equal seeds: sigma_1 E[max]")
    axes[2].set_xscale("log", base=2)
    axes[2].legend(fontsize=7)
    finish_axes(axes[2], xlabel="k re-runs averaged / N seeds", ylabel="points",
                title="averaging shrinks it; picking inflates")
    fig.tight_layout()
    return FigureResult(fig, {"rows": [{k: (round(float(v), 4) if k != "topic" else str(v))
                                        for k, v in r.items()} for r in rows],
                              "avg_at_k_std": [round(float(s), 3) for s in spread]})


@figure("ch16_contamination", "ch16",
        "Contamination planted and measured (book §16.4). Six phrasings of each of eight unseen "
        "facts leak, with their answers, into a short SFT continuation. Bars: accuracy (8 "
        "samples per question, T = 1, +- 1 standard error over facts) before and after, on "
        "the leaked questions, on the other phrasings of the same facts, and on clean facts; "
        "the labels give the share each group's questions an 8-gram check flags.")
def contamination_figure(runs: dict | None = None) -> FigureResult:
    runs = contamination_runs() if runs is None else runs
    groups = ("leaked", "paraphrased", "clean")
    fig = Figure(figsize=(6.5, 3.8))
    ax = fig.subplots()
    x = np.arange(len(groups))
    for offset, when, colour in ((-0.18, "before", "0.6"), (0.18, "after", "tab:red")):
        ax.bar(x + offset, [runs[when][g][0] for g in groups], 0.36,
               yerr=[runs[when][g][1] for g in groups], color=colour,
               label=f"{when} the contaminated SFT")
    ax.set_xticks(x, [f"{g}\n8-gram flags {np.mean(runs['detected'][g]):.0%}" for g in groups])
    ax.legend(fontsize=8)
    finish_axes(ax, ylabel="accuracy", ylim=(0, 1), title="leaked items inflate; paraphrases hide")
    fig.tight_layout()
    return FigureResult(fig, {f"{when}_{g}": round(runs[when][g][0], 4)
                              for when in ("before", "after") for g in groups}
                        | {f"flagged_{g}": round(float(np.mean(runs["detected"][g])), 4)
                           for g in groups})


@figure("ch16_leaderboard", "ch16",
        "A leaderboard from 2,000 battles between five policies (book §16.3). Left: Elo "
        "ratings (K = 32) of the same battles in 64 random orders (dots) and the Bradley-Terry "
        "ratings, one fit of all battles, with 95% bootstrap intervals. Right: the share of "
        "battles the row player wins, judged by the gold reward with annotator noise against "
        "judged by chapter 5's reward model: the proxy judge crowns the policy optimised "
        "against it.")
def leaderboard_figure(result: dict | None = None) -> FigureResult:
    result = arena() if result is None else result
    players = list(result["answers"])
    b = result["battles"]
    n = len(players)
    elo = experiments.elo_in_orders(b["pairs"], b["outcomes"], n)
    bt = np.asarray(leaderboard.bt_ratings(b["pairs"], b["outcomes"], n))
    boot = leaderboard.bootstrap_ratings(jax.random.PRNGKey(0), b["pairs"], b["outcomes"], n)
    low, high = np.percentile(boot, [2.5, 97.5], axis=0)
    fig = Figure(figsize=(12, 4))
    ax, ax2 = fig.subplots(1, 2)
    y = np.arange(n)
    rng = np.random.default_rng(0)
    for i in range(n):
        ax.plot(elo[:, i], y[i] + 0.15 + 0.1 * rng.uniform(-1, 1, len(elo)), ".",
                color="tab:blue", alpha=0.4, ms=4, label="Elo, one order" if i == 0 else None)
    ax.errorbar(bt, y - 0.15, xerr=[bt - low, high - bt], fmt="s", color="k", capsize=3,
                label="Bradley-Terry, 95% bootstrap")
    ax.set_yticks(y, players, fontsize=8)
    ax.invert_yaxis()
    ax.legend(fontsize=7)
    finish_axes(ax, xlabel="rating (Elo scale)", title="Elo depends on the order; BT does not")
    gold = experiments.win_matrix(b["pairs"], b["outcomes"], n)
    judge = experiments.win_matrix(b["pairs"], b["rm_outcomes"], n)
    off = ~np.eye(n, dtype=bool)
    for i in range(n):
        mask = off[i]
        ax2.plot(gold[i][mask], judge[i][mask], "o", label=players[i])
    ax2.plot([0, 1], [0, 1], "k:", lw=1)
    ax2.legend(fontsize=7, title="row player")
    finish_axes(ax2, xlabel="win rate, gold judge", ylabel="win rate, reward-model judge",
                xlim=(0, 1), ylim=(0, 1), title="a proxy judge against the truth")
    fig.tight_layout()
    return FigureResult(fig, {"players": players,
                              "elo_mean": [round(float(v), 1) for v in elo.mean(0)],
                              "elo_std_over_orders": [round(float(v), 1) for v in elo.std(0)],
                              "bt": [round(float(v), 1) for v in bt],
                              "bt_low": [round(float(v), 1) for v in low],
                              "bt_high": [round(float(v), 1) for v in high]})
