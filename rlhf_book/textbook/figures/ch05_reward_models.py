"""Chapter 5 figures: the Bradley-Terry probability and loss (with Llama 2's margin), the
Plackett-Luce ranking model (its six rankings of three items, and fitting scores from sampled
rankings), a reward model's accuracy on style and on correctness pairs against their ceilings,
the rewards of held-out chosen and rejected responses by answer style, what the reward model
prefers where the annotators' biases and the gold reward part ways, the lecture notes' six-pair
lesson done right, and what each kind of reward model is trained on.

``notebooks/ch05_reward_models.ipynb`` runs the chapter's experiments
(:mod:`rlhf_book.ch05_reward_models.experiments`) and draws their results through these; with
no arguments (``rlhf-book figures ch05``) the figures run them: chapter 4's SFT model of the
small GPT from the substrate cache, then the reward model, done once per process and shared by
the figures that need it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from rlhf_book import ch05_reward_models as ch05
from rlhf_book import data
from rlhf_book.ch05_reward_models import experiments as ex
from rlhf_book.textbook import substrate
from rlhf_book.textbook.figures import FigureResult, figure, finish_axes


@functools.lru_cache(maxsize=1)
def rm_run() -> ex.RMRun:
    """The reward model of notebook section 5 from chapter 4's SFT model, trained once per
    process when a figure is drawn without results."""
    return ex.rm_run(substrate.sft_small(), ex.rm_datasets())


@functools.lru_cache(maxsize=1)
def policy_knows() -> float:
    """The share of rephrased correctness pairs whose right answer the SFT model itself finds
    more likely (:func:`~rlhf_book.ch05_reward_models.experiments.policy_prefers_right`)."""
    return float(ex.policy_prefers_right(substrate.sft_small(), ex.rm_datasets()["rephrased"]).mean())


@functools.lru_cache(maxsize=1)
def lesson_runs() -> dict[str, dict]:
    """The lesson's reward models (notebook section 6), trained once per process."""
    return ex.lesson_runs()


# ----------------------------------------------------------------------------------------------
# Figures


@figure("ch05_bradley_terry", "ch05",
        "The Bradley-Terry model (eqs. 13, 14, 15, 16, 17). Left: P(chosen beats rejected) = "
        "sigmoid(r_c - r_r) against the reward gap, with the lecture notes' two examples. Right: the loss "
        "-log sigmoid(r_c - r_r - m) for Llama 2's margins m = 0, 1, 3 (eq. 18): the loss stays "
        "high until the gap exceeds the margin.")
def bradley_terry(deltas=ex.DELTAS, margins=ex.MARGINS) -> FigureResult:
    p = np.asarray(ch05.bradley_terry_probability(jnp.asarray(deltas), 0.0))
    fig = Figure(figsize=(10, 3.4))
    left, right = fig.subplots(1, 2)
    left.plot(deltas, p, color="tab:blue")
    marks = {3.0: ("rewards 2.0 vs -1.0", (8, -14), "left"), 1.5: ("2.0 vs 0.5", (-6, 6), "right"),
             0.1: ("1.0 vs 0.9", (8, -10), "left")}
    for d, (label, offset, ha) in marks.items():
        pd = float(ch05.bradley_terry_probability(d, 0.0))
        left.plot(d, pd, "o", ms=5, color="tab:red")
        left.annotate(f"{label}: {pd:.4f}", (d, pd), xytext=offset, textcoords="offset points",
                      ha=ha, fontsize=7)
    finish_axes(left, xlabel="reward gap r_c - r_r", ylabel="P(chosen beats rejected)",
                title="sigmoid(r_c - r_r): only the gap matters", ylim=(0, 1))
    numbers = {"sigmoid(3.0)": float(ch05.bradley_terry_probability(3.0, 0.0)),
               "sigmoid(0.1)": float(ch05.bradley_terry_probability(0.1, 0.0)),
               "P(2.0 beats 0.5)": float(ch05.bradley_terry_probability(2.0, 0.5))}
    for m, colour in zip(margins, ("tab:blue", "tab:orange", "tab:green")):
        right.plot(deltas, ex.per_pair_bt_loss(deltas, m), color=colour, label=f"margin m = {m:g}")
        right.axvline(m, color=colour, ls=":", lw=0.8)
        numbers[f"loss(gap 1.5, m={m:g})"] = float(ex.per_pair_bt_loss([1.5], m)[0])
    numbers["loss(gap 0)"] = float(ex.per_pair_bt_loss([0.0])[0])
    grad = jax.grad(lambda r_c: ch05.bradley_terry_loss(r_c, jnp.array([0.5])))(jnp.array([2.0]))
    numbers["dloss/dr_c at 2.0 vs 0.5"] = float(grad[0])  # = sigmoid(1.5) - 1
    finish_axes(right, xlabel="reward gap r_c - r_r", ylabel="-log sigmoid(gap - m)  (nats)",
                title="Bradley-Terry loss with a margin (eq. 18)", ylim=(0, 9.5))
    right.legend(fontsize=8)
    fig.tight_layout()
    return FigureResult(fig, numbers)


@figure("ch05_plackett_luce", "ch05",
        "The Plackett-Luce model (eq. 20). Left: the probability of each of the 3! rankings of "
        "three completions scored (2, 1, 0), bars from eq. 20, dots from 20,000 Gumbel-max "
        "samples. Right: scores of 8 items fitted from 300 sampled rankings of 4, against the "
        "true scores (both centred): the Plackett-Luce likelihood and Bradley-Terry on all pairs "
        "recover them; one pair per ranking throws most of the information away.")
def plackett_luce(scores=ex.PL_SCORES, draws: int = ex.PL_DRAWS, seed: int = 0) -> FigureResult:
    exact = ex.ranking_probabilities(scores)
    sampled = ex.sampled_rankings(jax.random.PRNGKey(seed), scores, draws)
    true, ranked = ex.ranking_dataset(seed)
    fits = ex.fit_estimators(true, ranked)
    true_c = true - true.mean()

    fig = Figure(figsize=(10.5, 3.6))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.2, 1]})
    orders = list(exact)
    x = np.arange(len(orders))
    left.bar(x, [exact[o] for o in orders], color="tab:blue", alpha=0.75, label="eq. 20")
    left.plot(x, [sampled[o] for o in orders], "k.", ms=8, label=f"{draws:,} Gumbel-max samples")
    for k, o in enumerate(orders):
        left.text(k, exact[o] + 0.01, f"{exact[o]:.4f}", ha="center", fontsize=7)
    left.set_xticks(x, [" > ".join(f"s={scores[i]:g}" for i in o) for o in orders], fontsize=6.5,
                    rotation=20)
    finish_axes(left, ylabel="P(ranking)", title=f"rankings of scores {tuple(scores)}: sum = "
                f"{sum(exact.values()):.6f}")
    left.legend(fontsize=8)

    numbers = {"rankings": {" > ".join(map(str, o)): exact[o] for o in orders},
               "sum": sum(exact.values()),
               "max_sampling_error": max(abs(exact[o] - sampled[o]) for o in orders)}
    lim = np.abs(true_c).max() * 1.3
    right.plot([-lim, lim], [-lim, lim], color="0.6", lw=1)
    for (label, fitted), marker in zip(fits.items(), ("o", "s", "^")):
        rmse = float(np.sqrt(np.mean((fitted - true_c) ** 2)))
        right.plot(true_c, fitted, marker, ms=5, alpha=0.8, label=f"{label}: RMSE {rmse:.2f}")
        numbers[f"rmse {label}"] = rmse
    finish_axes(right, xlabel="true score r* (centred)", ylabel="fitted score (centred)",
                title=f"{ex.FIT_RANKINGS} rankings of {ex.FIT_K} of {ex.FIT_ITEMS} items")
    right.legend(fontsize=7)
    fig.tight_layout()
    return FigureResult(fig, numbers)


@figure("ch05_accuracy_by_kind", "ch05",
        "A reward model on chapter 4's SFT model of the small GPT, the pipeline's recipe (6,400 "
        "pairs of the biased annotators, three in four right-vs-wrong, 200 steps of 32). Left: "
        "accuracy on 500 pairs about the rephrased questions during training, style pairs and "
        "correctness pairs apart, with each kind's ceiling and the share of correctness pairs "
        "the SFT model's own log-probabilities rank right. Right: final accuracy with its "
        "standard error on the rephrased questions and on the unseen facts, against the "
        "annotators' label and the gold reward.")
def accuracy_by_kind(run: ex.RMRun | None = None, datasets: dict | None = None,
                     knows: float | None = None) -> FigureResult:
    """``run``: the chapter's :class:`~rlhf_book.ch05_reward_models.experiments.RMRun`
    (trained when not given); ``datasets``: the pairs it was scored on (``rm_datasets()``);
    ``knows``: the SFT model's own share (``policy_prefers_right(...).mean()``)."""
    run = rm_run() if run is None else run
    datasets = ex.rm_datasets() if datasets is None else datasets
    knows = policy_knows() if knows is None else knows
    table = {name: ex.accuracy_by_kind(datasets[name], *run.scores[name])
             for name in ("rephrased", "unseen")}
    h = run.history
    colors = {"style": "tab:blue", "correctness": "tab:orange"}

    fig = Figure(figsize=(11, 3.9))
    left, right = fig.subplots(1, 2)
    for kind, color in colors.items():
        left.plot(h["eval_step"], h[f"eval_{kind}"], "o-", color=color, label=f"{kind} pairs")
        left.axhline(table["rephrased"][kind]["ceiling"], color=color, ls="--", lw=1,
                     label=f"{kind} ceiling {table['rephrased'][kind]['ceiling']:.3f}")
    left.axhline(knows, color="tab:green", ls=":", lw=1.5,
                 label=f"SFT log-probs rank right > wrong: {knows:.3f}")
    left.axhline(0.5, color="0.5", lw=0.8)
    finish_axes(left, xlabel="training step (32 pairs each)", ylabel="held-out accuracy",
                ylim=(0.4, 1.02), title="rephrased questions, during training")
    left.legend(fontsize=7, loc="center right")

    groups = [(name, kind) for name in table for kind in ("style", "correctness")]
    x = np.arange(len(groups))
    acc = [table[n][k]["accuracy"] for n, k in groups]
    right.bar(x - 0.2, acc, 0.4, yerr=[table[n][k]["se"] for n, k in groups],
              color=[colors[k] for _, k in groups], alpha=0.8, capsize=3,
              label="accuracy vs the annotators (+- 1 SE)")
    right.bar(x + 0.2, [table[n][k]["gold_accuracy"] for n, k in groups], 0.4,
              color=[colors[k] for _, k in groups], alpha=0.35, hatch="//",
              label="accuracy vs the gold reward")
    right.plot(x, [table[n][k]["ceiling"] for n, k in groups], "_", color="tab:red", ms=28,
               mew=2, label="ceiling")
    for xi, a in zip(x, acc):
        right.annotate(f"{a:.2f}", (xi - 0.2, a), xytext=(0, 8), textcoords="offset points",
                       ha="center", fontsize=7)
    right.axhline(0.5, color="0.5", lw=0.8)
    right.set_xticks(x, [f"{n}\n{k} ({table[n][k]['n']})" for n, k in groups], fontsize=7)
    finish_axes(right, ylabel="accuracy", ylim=(0, 1.1), title="after training")
    right.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return FigureResult(fig, {"by_kind": table, "policy_knows": knows,
                              "curve": {kind: np.asarray(h[f"eval_{kind}"]).tolist()
                                        for kind in colors}})


@figure("ch05_reward_histograms", "ch05",
        "The reward model on 500 pairs about the rephrased questions. Left: rewards of the "
        "chosen and the rejected responses; only their difference is identified. Right: "
        "accuracy for each pair of answer styles (a correctness pair is '<style> vs wrong'), "
        "against the annotators' label and the gold reward, with the ceiling of each group.")
def reward_histograms(run: ex.RMRun | None = None, heldout=None) -> FigureResult:
    run = rm_run() if run is None else run
    heldout = ex.rm_datasets()["rephrased"] if heldout is None else heldout
    r_c, r_r = (np.asarray(r) for r in run.scores["rephrased"])
    groups = ex.accuracy_by_style(heldout, r_c, r_r)

    fig = Figure(figsize=(11, 3.9))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.35]})
    bins = np.linspace(min(r_c.min(), r_r.min()), max(r_c.max(), r_r.max()), 36)
    left.hist(r_c, bins=bins, alpha=0.6, color="tab:blue", label=f"chosen (mean {r_c.mean():+.2f})")
    left.hist(r_r, bins=bins, alpha=0.6, color="tab:orange",
              label=f"rejected (mean {r_r.mean():+.2f})")
    margins = ch05.reward_margins(r_c, r_r)
    finish_axes(left, xlabel="reward r(x, y)", ylabel="responses",
                title=f"accuracy {margins['accuracy']:.3f}, mean margin {margins['margin']:.2f}")
    left.legend(fontsize=8)

    names = list(groups)
    y = np.arange(len(names))
    right.barh(y, [groups[n]["accuracy"] for n in names], color="tab:blue", alpha=0.75,
               label="accuracy vs the annotators")
    right.plot([groups[n]["gold_accuracy"] for n in names], y, "D", color="tab:purple", ms=4,
               label="accuracy vs the gold reward")
    right.plot([groups[n]["ceiling"] for n in names], y, "|", color="tab:red", ms=14, mew=2,
               label="ceiling")
    right.axvline(0.5, color="0.5", lw=0.8)
    right.set_yticks(y, [f"{n} ({groups[n]['n']})" for n in names], fontsize=7)
    right.invert_yaxis()
    finish_axes(right, xlabel="held-out accuracy", xlim=(0, 1.05), title="by pair of answer styles")
    right.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return FigureResult(fig, {**margins, "by_style": groups})


@figure("ch05_annotator_biases", "ch05",
        "What the reward model prefers where the annotators' biases and the gold reward part "
        "ways, on the 520 rephrased fact questions: the score gap r(biased) - r(plain) between "
        "a correct answer padded with pleasantries and the same answer plain (verbosity), and "
        "between 'It is definitely X.' and 'The answer is X.' (confidence). The dashed line is "
        "the gap that fits the annotators' majority exactly; the gold reward ranks the padded "
        "answer lower and is indifferent to 'definitely'.")
def annotator_biases(results: dict | None = None) -> FigureResult:
    """``results``: ``{probe: probe_scores(...)}`` (computed with the chapter's reward model
    when not given)."""
    if results is None:
        params = rm_run().params
        results = {name: ex.probe_scores(params, probes)
                   for name, probes in ex.bias_probes().items()}
    fig = Figure(figsize=(10, 3.4))
    axes = fig.subplots(1, len(results))
    for ax, (name, r) in zip(np.atleast_1d(axes), results.items()):
        ax.hist(r["gaps"], bins=30, color="tab:blue", alpha=0.75)
        ax.axvline(0, color="0.3", lw=0.8)
        ax.axvline(r["label_gap"], color="tab:green", ls="--", lw=1.5,
                   label=f"fits the labels: {r['label_gap']:+.2f}")
        ax.axvline(r["score_gap"], color="tab:blue", lw=1.5,
                   label=f"reward model: {r['score_gap']:+.2f} +- {r['score_gap_se']:.2f}")
        finish_axes(ax, xlabel="r(biased) - r(plain)", ylabel="questions",
                    title=f"{name}: RM prefers the biased answer {r['prefers_biased']:.0%}, "
                          f"annotators {r['annotators_prefer_biased']:.0%}, gold gap "
                          f"{r['gold_gap']:+.2f}")
        ax.title.set_fontsize(8)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return FigureResult(fig, {name: {k: v for k, v in r.items() if k != "gaps"}
                              for name, r in results.items()})


@figure("ch05_lesson", "ch05",
        "The lecture notes' reward-model lesson done right: its six pairs, a randomly "
        "initialised mini GPT with a 160-token context (nothing truncated), the gradient through "
        "the whole network, last-token and mean pooling. Left: training loss. Right: reward "
        "margins r_c - r_r on the six seen pairs and four unseen ones; hatched pairs prefer the "
        "longer answer.")
def lesson(runs: dict | None = None) -> FigureResult:
    runs = lesson_runs() if runs is None else runs
    pairs = data.LESSON_PREFERENCE_PAIRS + data.LESSON_UNSEEN_PAIRS
    lengths = ex.lesson_lengths(pairs)
    longer_preferred = lengths[:, 0] > lengths[:, 1]
    n_seen = len(data.LESSON_PREFERENCE_PAIRS)

    fig = Figure(figsize=(11, 3.6))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2]})
    numbers = {"truncated_at_128": int((lengths[:n_seen] > ex.LESSON_TRUNCATION).sum()),
               "longest_sequence": int(lengths.max()),
               "shorter_wins_seen": int((~longer_preferred[:n_seen]).sum()),
               "shorter_wins_unseen": int((~longer_preferred[n_seen:]).sum())}
    width = 0.38
    x = np.arange(len(pairs))
    for k, (pooling, run) in enumerate(runs.items()):
        colour = ("tab:blue", "tab:orange")[k % 2]
        left.plot(run["history"]["step"], run["history"]["loss"], color=colour,
                  label=f"{pooling} pooling")
        margins = np.concatenate([np.asarray(run["seen"][0]) - np.asarray(run["seen"][1]),
                                  np.asarray(run["unseen"][0]) - np.asarray(run["unseen"][1])])
        bars = right.bar(x + (k - 0.5) * width, margins, width, color=colour,
                         label=f"{pooling} pooling")
        for xi in np.flatnonzero(longer_preferred):
            bars[xi].set(hatch="///", edgecolor="k", lw=0.4)
        numbers[pooling] = {"seen": ch05.reward_margins(*run["seen"]),
                            "unseen": ch05.reward_margins(*run["unseen"]),
                            "margins": margins.round(3).tolist(),
                            "final_loss": float(run["history"]["loss"][-1])}
    finish_axes(left, xlabel="step", ylabel="Bradley-Terry loss (6 pairs)", yscale="log",
                title=f"training, {ex.LESSON_RM.steps} steps at {ex.LESSON_RM.learning_rate:g}")
    left.legend(fontsize=8)
    top = 1.3 * max(np.abs(numbers[p]["margins"]).max() for p in runs)
    right.set_ylim(-top, top)
    right.axhline(0, color="k", lw=0.6)
    right.axvline(n_seen - 0.5, color="0.4", ls="--", lw=1)
    right.text(n_seen / 2 - 0.5, 0.9 * top, "seen (the six training pairs)", ha="center",
               fontsize=8)
    right.text(n_seen + 1.5, 0.9 * top, "unseen", ha="center", fontsize=8)
    right.set_xticks(x, [f"{'S' if i < n_seen else 'U'}{(i if i < n_seen else i - n_seen) + 1}\n"
                         f"{lengths[i, 0]}/{lengths[i, 1]}" for i in x], fontsize=7)
    finish_axes(right, xlabel="pair (tokens: preferred / rejected)", ylabel="margin r_c - r_r",
                title="margins: positive = the preferred answer scores higher")
    right.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return FigureResult(fig, numbers)


def _cell(ax, x, y, text, face, fontsize=8):
    ax.add_patch(Rectangle((x, y), 0.92, 0.8, facecolor=face, edgecolor="0.6", lw=0.6))
    ax.text(x + 0.46, y + 0.4, text, ha="center", va="center", fontsize=fontsize)


@figure("ch05_rm_types", "ch05",
        "What each kind of model of §5.7 is trained on, over two prompt tokens and a four-token "
        "completion (orange: a trained position and its target; grey: not trained). A "
        "Bradley-Terry reward model reads the last token, through pairs; an outcome RM repeats "
        "the outcome label on every completion token; a process RM is labelled at the end of "
        "each step; a value function regresses on the return-to-go (gamma = 1). Right: reading "
        "an ORM's per-token probabilities at inference (§5.7.1).")
def rm_types(rewards: dict | None = None, probs=ex.ORM_PROBS) -> FigureResult:
    rewards = ex.RM_TYPE_REWARDS if rewards is None else rewards
    n_prompt, T = 2, len(next(iter(rewards.values())))
    values = ex.value_targets(rewards)
    outcome = {name: int(r[-1] > 0) for name, r in rewards.items()}
    rows = [("Bradley-Terry RM (via pairs)", [""] * (T - 1) + ["r"], {T - 1})]
    first = next(iter(rewards))
    rows.append((f"ORM, outcome {outcome[first]}", [str(outcome[first])] * T, set(range(T))))
    prm = [""] * T
    for end, label in zip(ex.PRM_STEP_ENDS, ex.PRM_STEP_LABELS):
        prm[end - 1] = f"{label:+d}"
    rows.append(("PRM, steps end at 2, 4", prm, {e - 1 for e in ex.PRM_STEP_ENDS}))
    for name, v in values.items():
        rows.append((f"value, {name}", [f"{x:g}" for x in v], set(range(T))))

    fig = Figure(figsize=(10, 3.2))
    ax, agg_ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.5, 1]})
    for j in range(n_prompt + T):
        label = f"x{j + 1}" if j < n_prompt else f"y{j - n_prompt + 1}"
        ax.text(j + 0.46, 0.35, label, ha="center", fontsize=8, family="monospace")
    for i, (name, targets, trained) in enumerate(rows):
        y = -(i + 1)
        ax.text(-0.15, y + 0.4, name, ha="right", va="center", fontsize=8)
        for j in range(n_prompt):
            _cell(ax, j, y, "", "0.85")
        for t in range(T):
            _cell(ax, n_prompt + t, y, targets[t] if t in trained else "",
                  "tab:orange" if t in trained else "0.85")
    ax.set(xlim=(-4.2, n_prompt + T), ylim=(-len(rows) - 0.2, 0.9), aspect="equal",
           title="trained positions and their targets")
    ax.axis("off")

    aggregates = ex.orm_aggregates(probs)
    names = list(aggregates)
    agg_ax.barh(names, [aggregates[n] for n in names], color="tab:blue", alpha=0.75)
    for k, n in enumerate(names):
        v = aggregates[n]
        agg_ax.text(v, k, f" {v:.4f}", va="center", ha="left" if v >= 0 else "right", fontsize=8)
    agg_ax.axvline(0, color="k", lw=0.6)
    agg_ax.invert_yaxis()
    finish_axes(agg_ax, xlabel="sequence score", xlim=(-1.6, 1.4),
                title=f"ORM p_t = {tuple(probs)} aggregated")
    fig.tight_layout()
    return FigureResult(fig, {"value_targets": {k: v.tolist() for k, v in values.items()},
                              "orm_targets": {k: [outcome[k]] * T for k in rewards},
                              "prm_labelled_positions": list(ex.PRM_STEP_ENDS),
                              "aggregates": aggregates})
