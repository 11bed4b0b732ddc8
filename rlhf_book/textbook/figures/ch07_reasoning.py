"""Chapter 7 figures: the book's Figure 25 (RLVR as a feedback loop) redrawn with this chapter's
settings; the share of groups of binary rewards that carry no signal, ``p^G + (1 - p)^G``
(§7.2.3), beside the SFT model's pass rates on the training sums; RLVR on the world's
arithmetic with three verifiers (the reward curves); pass@k before and after RL ("sharpen or
expand?"); majority vote against best-of-N with the verifier and their cost in tokens
(§7.1.2, §7.2.3 parallel test-time compute); §7.2.3's common practices switched on one at
a time; and, for the sequel notebook, reasoning length on two-digit sums (accuracy of direct
and worked replies, RLVR growing the replies, pass@k to k = 64) and best-of-N judged by the
verifier, by chapter 5's reward model and by majority vote.

The experiments live in :mod:`rlhf_book.ch07_reasoning.experiments`; these functions only
draw (and, with no arguments, run the experiments once per process from chapter 4's SFT model
of the small GPT, :func:`rlhf_book.textbook.substrate.sft_small`).
``notebooks/ch07_reasoning.ipynb`` and ``notebooks/ch07_reasoning_length.ipynb`` pass their own
results.

Shapes: ``S`` policies (seeds), ``n`` samples per question, ``Q`` questions. ``stats``
arguments map a policy name (``"sft"`` or a verifier of ``experiments.VERIFIER_NAMES``) to
``{set: experiments.answer_stats(...)}`` for the sets ``"rephrased"`` and ``"unseen"``.
"""

from __future__ import annotations

import functools

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

from rlhf_book import ch07_reasoning as ch07
from rlhf_book.ch07_reasoning import experiments as ex
from rlhf_book.lm.eval import mean_se
from rlhf_book.textbook import substrate
from rlhf_book.textbook.figures import FigureResult, figure, finish_axes

SETS = ("rephrased", "unseen")
VERIFIER_COLOURS = {"last_integer": "tab:blue", "any_integer": "tab:red",
                    "strict_format": "tab:green"}
VERIFIER_LABELS = {"last_integer": "last integer (the book's rule)",
                   "any_integer": "any integer (lax)", "strict_format": "strict format"}
PASS_KS = tuple(range(1, ex.EVAL_SAMPLES + 1))
VOTE_NS = (1, 2, 4, 8, 16)
BOOK_GROUPS = (4, 8, 16)
TRAIN_SAMPLES = 16  # samples per training sum for the pass-rate histogram (§7.2.3's N = 16)


# ----------------------------------------------------------------------------------------------
# The data behind the figures, computed once per process when no argument is given


def evaluate(sft_params, lm_params, verifiers=ex.VERIFIER_NAMES,
             samples: int = ex.EVAL_SAMPLES) -> dict:
    """``{policy: {set: answer_stats}}`` for the SFT model (``"sft"``) and each verifier's
    policies of a :func:`experiments.run_rlvr` run (``lm_params`` with a leading axis of
    ``len(verifiers) * N_SEEDS``), ``samples`` coupled samples per question and seed on the
    rephrased and unseen sums."""
    sets = ex.arithmetic_sets()
    policies = {"sft": sft_params}
    policies.update({v: ex.runs_of(lm_params, len(verifiers), i) for i, v in enumerate(verifiers)})
    return {name: {s: ex.answer_stats(sets[s], ex.sample_answers(params, sets[s], samples))
                   for s in SETS}
            for name, params in policies.items()}


@functools.lru_cache(maxsize=1)
def world_runs() -> dict:
    """The notebook's main run from the substrate's SFT model: ``{"metrics": [12, steps],
    "stats": evaluate(...)}``."""
    sft = substrate.sft_small()
    metrics, params = ex.run_rlvr(sft, verifiers=ex.VERIFIER_NAMES)
    return {"metrics": metrics, "stats": evaluate(sft, params)}


@functools.lru_cache(maxsize=1)
def train_pass_rates() -> np.ndarray:
    """``[Q]``: the SFT model's pass rate on each training sum from ``TRAIN_SAMPLES`` samples
    (the last-integer verifier)."""
    train = ex.arithmetic_sets()["train"]
    texts = ex.sample_answers(substrate.sft_small(), train, TRAIN_SAMPLES, n_seeds=1)[0]
    return ex.answer_stats(train, texts)["correct"].mean(axis=0)


@functools.lru_cache(maxsize=1)
def length_runs() -> dict:
    """The reasoning-length experiment from the substrate's SFT model: the mid-trained model's
    ``history``, RLVR's ``metrics`` [seeds, steps], and ``"before"`` / ``"after"``:
    ``{"texts", "stats", "work"}`` of ``PASS_SAMPLES`` samples per held-out sum (before: one
    model ``[1, n, Q]``; after: every seed ``[S, n, Q]``)."""
    params, history = ex.scratchpad_model(substrate.sft_small())
    sets = ex.sum_sets()
    metrics, policies = ex.run_rlvr(params, questions=sets["train"], config=ex.SCRATCHPAD_RLVR)
    out = {"history": history, "metrics": metrics}
    for name, lm, n_seeds in (("before", params, 1), ("after", policies, ex.N_SEEDS)):
        texts = ex.sample_answers(lm, sets["heldout"], ex.PASS_SAMPLES, n_seeds,
                                  max_new_tokens=ex.SCRATCHPAD_RLVR.max_new_tokens)
        out[name] = {"texts": texts, "stats": ex.answer_stats(sets["heldout"], texts),
                     "work": ex.shows_work(texts)}
    return out


@functools.lru_cache(maxsize=1)
def best_of_n_samples() -> dict:
    """``{set: (stats [n, Q], reward-model scores [n, Q])}``: ``BON_SAMPLES`` samples of the
    substrate's SFT model per rephrased and unseen sum, scored by chapter 5's reward model
    (:func:`rlhf_book.textbook.substrate.reward_model_small`)."""
    reward = ex.reward_model(substrate.reward_model_small())
    sets, out = ex.arithmetic_sets(), {}
    for name in SETS:
        texts, scores = ex.sample_answers(substrate.sft_small(), sets[name], ex.BON_SAMPLES,
                                          n_seeds=1, seed=ex.BON_SEED, reward=reward)
        out[name] = (ex.answer_stats(sets[name], texts[0]), scores[0])
    return out


@functools.lru_cache(maxsize=1)
def practice_runs() -> dict:
    """:func:`experiments.practice_runs` from the substrate's SFT model (minutes)."""
    return ex.practice_runs(substrate.sft_small())


# ----------------------------------------------------------------------------------------------
# Small statistics shared by the figures


def reply_tokens(stats) -> np.ndarray:
    """Tokens per reply from :func:`experiments.answer_stats`: the byte-level tokenizer spends
    one token per character, plus the stop token, at most ``max_new_tokens``."""
    return np.minimum(np.asarray(stats["chars"]) + 1, ex.RLVR_CONFIG.max_new_tokens)


def _box_row(ax, boxes, y: float, width: float = 1.9, gap: float = 0.55) -> list[float]:
    centres = []
    for i, (title, detail, colour) in enumerate(boxes):
        x = i * (width + gap)
        ax.add_patch(FancyBboxPatch((x, y), width, 1.3, boxstyle="round,pad=0.05",
                                    facecolor=colour, edgecolor="0.3"))
        ax.text(x + width / 2, y + 0.95, title, ha="center", va="center", fontsize=9,
                fontweight="bold")
        ax.text(x + width / 2, y + 0.38, detail, ha="center", va="center", fontsize=7.5)
        if i:
            ax.annotate("", (x - 0.04, y + 0.65), (x - gap + 0.04, y + 0.65),
                        arrowprops=dict(arrowstyle="->", lw=1.5))
        centres.append(x + width / 2)
    return centres


# ----------------------------------------------------------------------------------------------
# Figures


@figure("ch07_rlvr_loop", "ch07",
        "Figure 25 redrawn with this chapter's settings: RLVR is RL's loop with a verification "
        "function where the reward model was. The policy (chapter 4's SFT model of the small "
        "GPT) samples G = 8 answers to each of 16 arithmetic questions; a verifier reads the "
        "final answer and returns 1 if it is right, else 0 (no learned model, nothing to "
        "over-optimise but the verifier's own loopholes); group advantages (GRPO, or MaxRL) "
        "turn the 0/1 rewards into a policy-gradient step; repeat for 40 steps.")
def rlvr_loop() -> FigureResult:
    config = ex.RLVR_CONFIG
    fig = Figure(figsize=(11, 2.9))
    ax = fig.add_subplot()
    boxes = (("questions", f"{len(ex.arithmetic_sets()['train'])} training sums,\n"
                           f"{config.prompts_per_step} per step", "0.85"),
             ("policy samples", f"G = {config.group_size} answers each,\nT = "
                                f"{config.temperature:g}, <= {config.max_new_tokens} tokens",
              "#cfe2f3"),
             ("verifier", "last integer == answer?\n1 or 0 (where RLHF\nhas a reward model)",
              "#fce5cd"),
             ("group advantages", "GRPO (r - mean) / std\nMaxRL (r - mean) / mean",
              "#d9ead3"),
             ("policy-gradient step", f"clipped loss + {config.beta:g} KL,\nAdam at "
                                      f"{config.learning_rate:g}", "#ead1dc"))
    centres = _box_row(ax, boxes, 0.2)
    ax.annotate("", (centres[1], 1.62), (centres[-1], 1.62),
                arrowprops=dict(arrowstyle="->", lw=1.3, ls="--", connectionstyle="arc3,rad=0.2"))
    ax.text((centres[1] + centres[-1]) / 2, 2.5,
            f"updated policy: the next step ({config.steps} steps in all)", ha="center",
            fontsize=8, style="italic")
    ax.set(xlim=(-0.2, centres[-1] + 1.2), ylim=(-0.1, 2.75))
    ax.axis("off")
    fig.tight_layout()
    return FigureResult(fig, {"prompts_per_step": config.prompts_per_step,
                              "group_size": config.group_size, "steps": config.steps,
                              "max_new_tokens": config.max_new_tokens, "beta": config.beta,
                              "learning_rate": config.learning_rate})


@figure("ch07_zero_signal", "ch07",
        "Why filter prompts (§7.2.3). Left: the probability p^G + (1 - p)^G that all G binary "
        "rewards of a prompt with pass rate p are equal, so that group-relative advantages are "
        "all zero and the group teaches nothing, for G = 4, 8, 16 (dots: the values computed "
        "in the notebook). Right: the pass rates of chapter 4's SFT model on the training sums, "
        "16 samples each (the last-integer verifier), with the 20-80% band that the offline "
        "difficulty filter keeps.")
def zero_signal(pass_rates=None) -> FigureResult:
    rates = train_pass_rates() if pass_rates is None else np.asarray(pass_rates, np.float64)
    p = np.linspace(0.0, 1.0, 401)
    fig = Figure(figsize=(11, 3.8))
    left, right = fig.subplots(1, 2)
    marks = {4: (0.2, 0.5), 8: (0.2, 0.5), 16: (0.1, 0.2, 0.5)}
    numbers = {}
    for G, colour in zip(BOOK_GROUPS, ("tab:orange", "tab:green", "tab:blue")):
        left.plot(p, np.asarray(ch07.zero_signal_probability(p, G)), color=colour, lw=2,
                  label=f"G = {G}")
        values = np.asarray(ch07.zero_signal_probability(np.asarray(marks[G]), G), np.float64)
        left.plot(marks[G], values, "o", color=colour, ms=5)
        numbers[f"G={G}"] = {f"p={q:g}": float(v) for q, v in zip(marks[G], values)}
    left.set_yscale("log")
    left.axvspan(0.2, 0.8, color="0.9", zorder=0)
    finish_axes(left, xlabel="pass rate p", ylabel="P(all G rewards equal)", ylim=(1e-5, 1.2),
                title="groups with no signal: p^G + (1 - p)^G")
    left.legend(fontsize=8, loc="lower left")
    n = TRAIN_SAMPLES if pass_rates is None else None
    bins = np.linspace(-1 / 32, 1 + 1 / 32, 18)
    right.hist(rates, bins=bins, color="tab:blue", alpha=0.8)
    right.axvspan(0.2, 0.8, color="tab:green", alpha=0.15, label="kept: 20-80%")
    keep = np.asarray(ch07.difficulty_filter(rates))
    finish_axes(right, xlabel="pass rate of the SFT model (16 samples)", ylabel="training sums",
                title=f"{keep.mean():.0%} of {rates.size} sums kept; "
                      f"{np.mean(rates == 0):.0%} never solved")
    right.legend(fontsize=8)
    fig.tight_layout()
    numbers.update({"questions": int(rates.size), "kept_share": float(keep.mean()),
                    "never_solved": float(np.mean(rates == 0)),
                    "always_solved": float(np.mean(rates == 1)),
                    "mean_pass_rate": float(rates.mean())})
    if n:
        numbers["samples"] = n
    return FigureResult(fig, numbers)


@figure("ch07_rlvr_curves", "ch07",
        "RLVR on the world's arithmetic: chapter 4's SFT model trained with GRPO for 40 steps "
        "of 16 training sums x 8 answers, each of three verifiers with 4 seeds in one vmapped "
        "run (mean +- standard error over seeds). Left: the training reward, each under its "
        "own verifier (the lax any-integer verifier climbs fastest: it is being gamed). "
        "Middle: completion length in tokens. Right: the KL to the SFT model per completion "
        "(summed k3 estimate on the step's samples; log scale: one seed of the any-integer "
        "run spikes to hundreds of nats).")
def rlvr_curves(metrics=None) -> FigureResult:
    metrics = world_runs()["metrics"] if metrics is None else metrics
    verifiers = ex.VERIFIER_NAMES
    fig = Figure(figsize=(13, 3.6))
    axes = fig.subplots(1, 3)
    numbers = {}
    for i, name in enumerate(verifiers):
        colour = VERIFIER_COLOURS.get(name)
        run = {k: np.asarray(v).reshape(len(verifiers), -1, np.shape(v)[-1])[i]
               for k, v in metrics.items()}
        steps = np.arange(1, run["score"].shape[1] + 1)
        for ax, key in zip(axes, ("score", "length", "kl")):
            mean, se = mean_se(run[key])
            ax.plot(steps, mean, color=colour, lw=1.6, label=VERIFIER_LABELS.get(name, name))
            ax.fill_between(steps, mean - se, mean + se, color=colour, alpha=0.2)
        first, last = run["score"][:, :5].mean(1), run["score"][:, -5:].mean(1)
        numbers[name] = {"score_first5": float(first.mean()), "score_last5": float(last.mean()),
                         "score_change_se": float(mean_se(last - first)[1]),
                         "length_first": float(run["length"][:, 0].mean()),
                         "length_last": float(run["length"][:, -1].mean()),
                         "kl_last": float(run["kl"][:, -1].mean()),
                         "seeds": int(run["score"].shape[0])}
    finish_axes(axes[0], xlabel="RL step", ylabel="mean verifier reward of the step's samples",
                title="training reward (each its own verifier)")
    finish_axes(axes[1], xlabel="RL step", ylabel="tokens", title="completion length")
    axes[2].set_yscale("log")
    axes[2].set_ylim(bottom=1e-2)  # step 1 samples the SFT model itself: KL 0
    finish_axes(axes[2], xlabel="RL step", ylabel="KL(pi || pi_SFT) per completion (nats)",
                title="KL to the SFT model (log scale)")
    axes[0].legend(fontsize=7.5)
    fig.tight_layout()
    return FigureResult(fig, numbers)


def _pass_curves(correct, ks=PASS_KS) -> np.ndarray:
    return ex.pass_at_k_curve(correct, ks)


@figure("ch07_pass_at_k", "ch07",
        "Sharpen or expand? The unbiased pass@k (Chen et al. 2021) for k = 1..16 from 16 "
        "samples per question, before (chapter 4's SFT model) and after RLVR with the "
        "last-integer verifier, on rephrased training sums (left) and sums no demonstration "
        "showed (right); 4 seeds, coupled samples, mean +- standard error over seeds. The "
        "title gives the paired changes at k = 1 and k = 16.")
def pass_at_k(stats=None, policy: str = "last_integer") -> FigureResult:
    stats = world_runs()["stats"] if stats is None else stats
    ks = np.asarray(PASS_KS)
    fig = Figure(figsize=(11, 3.8))
    axes = fig.subplots(1, 2)
    numbers = {"k": ks.tolist()}
    for ax, name in zip(axes, SETS):
        before = _pass_curves(stats["sft"][name]["correct"])
        after = _pass_curves(stats[policy][name]["correct"])
        for curve, colour, label in ((before, "0.4", "SFT (before)"),
                                     (after, "tab:blue", "after RLVR (last integer)")):
            mean, se = mean_se(curve)
            ax.errorbar(ks, mean, yerr=se, fmt="o-", ms=3, capsize=2, color=colour, label=label)
        d1, d16 = mean_se(after[:, 0] - before[:, 0]), mean_se(after[:, -1] - before[:, -1])
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 2, 4, 8, 16], ["1", "2", "4", "8", "16"])
        finish_axes(ax, xlabel="k", ylabel="pass@k", ylim=(0, 1),
                    title=f"{name} sums: pass@1 {d1[0]:+.3f} +- {d1[1]:.3f}, "
                          f"pass@16 {d16[0]:+.3f} +- {d16[1]:.3f}")
        ax.title.set_fontsize(8.5)
        ax.legend(fontsize=8, loc="lower right")
        numbers[name] = {"before": mean_se(before)[0].tolist(),
                         "before_se": mean_se(before)[1].tolist(),
                         "after": mean_se(after)[0].tolist(),
                         "after_se": mean_se(after)[1].tolist(),
                         "change_pass1": list(map(float, d1)),
                         "change_pass16": list(map(float, d16)),
                         "questions": int(np.shape(stats["sft"][name]["correct"])[-1])}
    fig.tight_layout()
    return FigureResult(fig, numbers)


@figure("ch07_inference_scaling", "ch07",
        "Inference-time scaling (§7.1.2; §7.2.3, parallel test-time compute) on the world's "
        "sums, 16 samples per question, before (dashed, SFT) and after RLVR (solid, last-integer "
        "verifier), 4 seeds. Left and middle: majority vote (self-consistency) over N samples "
        "(dots: disjoint votes cut from the 16, mean +- standard error over seeds; thin line: "
        "the exact vote accuracy from each question's answer distribution in seed 0's 16 samples) "
        "against best-of-N "
        "with the verifier as the judge (= pass@N: an oracle that picks any right sample). "
        "Right: vote accuracy on the rephrased sums against the tokens spent per question, N x "
        "the mean reply length.")
def inference_scaling(stats=None, policy: str = "last_integer", ns=VOTE_NS) -> FigureResult:
    stats = world_runs()["stats"] if stats is None else stats
    sets = ex.arithmetic_sets()
    ns = np.asarray(ns)
    fig = Figure(figsize=(14, 3.9))
    axes = fig.subplots(1, 3)
    numbers = {"N": ns.tolist()}
    for ax, name in zip(axes[:2], SETS):
        gold = np.asarray([int(q.answer) for q in sets[name]])
        numbers[name] = {}
        for who, ls, colour_vote in (("sft", "--", "tab:orange"), (policy, "-", "tab:purple")):
            s = stats[who][name]
            vote = ex.vote_curve(s["answer"], gold, ns)
            exact = ex.exact_vote_curve(s["answer"][0], gold, ns)  # seed 0 (a DP per question)
            best = ex.pass_at_k_curve(s["correct"], ns)
            tokens = float(reply_tokens(s).mean())
            label = "SFT" if who == "sft" else "after RLVR"
            (v_mean, v_se), (b_mean, b_se) = mean_se(vote), mean_se(best)
            ax.errorbar(ns, v_mean, yerr=v_se, fmt="o" + ls, ms=3, capsize=2, color=colour_vote,
                        label=f"{label}: majority vote")
            ax.plot(ns, exact, ls, color=colour_vote, lw=0.8, alpha=0.7)
            ax.errorbar(ns, b_mean, yerr=b_se, fmt="s" + ls, ms=3, capsize=2, color="tab:green"
                        if who != "sft" else "tab:olive", label=f"{label}: best-of-N by verifier")
            numbers[name][who] = {"vote": v_mean.tolist(), "vote_se": v_se.tolist(),
                                  "exact_vote_seed0": exact.tolist(),
                                  "vote_seed0": vote[0].tolist(),
                                  "best_of_n": b_mean.tolist(), "best_of_n_se": b_se.tolist(),
                                  "tokens_per_reply": tokens}
            if name == "rephrased":
                axes[2].errorbar(ns * tokens, v_mean, yerr=v_se, fmt="o" + ls, ms=3, capsize=2,
                                 color=colour_vote, label=f"{label} ({tokens:.1f} tokens/reply)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        finish_axes(ax, xlabel="N (samples per question)", ylabel="accuracy", ylim=(0, 1),
                    title=f"{name} sums")
        ax.legend(fontsize=7, loc="upper left")
    axes[2].set_xscale("log", base=2)
    finish_axes(axes[2], xlabel="tokens per question (N x mean reply)", ylabel="vote accuracy",
                title="rephrased sums: accuracy per token spent")
    axes[2].legend(fontsize=7.5, loc="upper left")
    fig.tight_layout()
    return FigureResult(fig, numbers)


@figure("ch07_practices", "ch07",
        "The common practices of §7.2.3, each switched on against the same RLVR run (GRPO, the "
        "last-integer verifier, 40 steps of 16 sums x 8 answers from chapter 4's SFT model, 4 "
        "seeds each, 8 coupled samples per question and seed for evaluation). Left: the change "
        "in pass@1 against the SFT model on the rephrased and the unseen sums (mean +- standard "
        "error over seeds). Right: the training reward (mean over seeds). Clip-higher is inert "
        "here: with one on-policy update per batch every importance ratio is 1.")
def practices(runs=None) -> FigureResult:
    runs = practice_runs() if runs is None else runs
    names = [n for n in runs if n != "sft"]
    fig = Figure(figsize=(13, 4.2))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.25, 1]})
    numbers = {"sft": {s: {"pass1": float(ex.per_seed(runs["sft"][s]["correct"]).mean()),
                           "none": float(ex.per_seed(runs["sft"][s]["none"]).mean())}
                       for s in SETS}}
    width = 0.38
    y = np.arange(len(names))
    for j, (s, colour) in enumerate(zip(SETS, ("tab:blue", "tab:orange"))):
        changes = [ex.change(runs[n]["stats"][s]["correct"], runs["sft"][s]["correct"])
                   for n in names]
        left.barh(y + (j - 0.5) * width, [c[0] for c in changes], height=width,
                  xerr=[c[1] for c in changes], color=colour, capsize=2, label=f"{s} sums")
        for n, (m, se) in zip(names, changes):
            numbers.setdefault(n, {})[s] = {
                "pass1": float(ex.per_seed(runs[n]["stats"][s]["correct"]).mean()),
                "change": m, "change_se": se,
                "none": float(ex.per_seed(runs[n]["stats"][s]["none"]).mean())}
    left.axvline(0, color="0.3", lw=0.8)
    left.set_yticks(y, names, fontsize=8)
    left.invert_yaxis()
    finish_axes(left, xlabel="change in pass@1 against the SFT model", title="held-out pass@1")
    left.legend(fontsize=8, loc="lower right")
    for n in names:
        metrics = runs[n]["metrics"]
        score = np.asarray(metrics["score"]).mean(0)
        right.plot(np.arange(1, score.size + 1), score, lw=1.4, label=n)
        numbers[n].update({"score_last5": float(np.asarray(metrics["score"])[:, -5:].mean()),
                           "length_last": float(np.asarray(metrics["length"])[:, -1].mean()),
                           "kept_first": float(np.asarray(metrics["kept"])[:, 0].mean()),
                           "kl_last": float(np.asarray(metrics["kl"])[:, -1].mean()),
                           "prompts": int(runs[n]["prompts"])})
    finish_axes(right, xlabel="RL step", ylabel="training reward (last integer)",
                title="training reward, mean over seeds")
    right.legend(fontsize=7)
    fig.tight_layout()
    return FigureResult(fig, numbers)


@figure("ch07_reasoning_length", "ch07",
        "When longer reasoning pays (§7.1.2: performance must grow with the tokens generated). "
        "Chapter 4's SFT model, mid-trained on two-digit sums answered half directly and half "
        "with the column addition written out, then RLVR (GRPO, last-integer verifier, 40 steps "
        "of 16 training sums x 8, 4 seeds); 64 samples per held-out sum. Left: accuracy of the "
        "direct and the worked replies, per sum (standard errors over sums), and each kind's "
        "share before and after. Middle: training reward and reply length over RL steps (mean "
        "+- standard error over seeds). Right: pass@k for k = 1..64 before and after "
        "(sharpen or expand?).")
def reasoning_length(runs=None) -> FigureResult:
    runs = length_runs() if runs is None else runs
    fig = Figure(figsize=(14, 3.9))
    left, middle, right = fig.subplots(1, 3)
    kinds = ("direct", "worked")
    by_work = {name: ex.accuracy_by_work(r["stats"], r["work"]) for name, r in runs.items()
               if name in ("before", "after")}
    x = np.arange(2)
    for j, (name, colour) in enumerate((("before", "0.5"), ("after", "tab:blue"))):
        acc = [by_work[name][k][0] for k in kinds]
        se = [by_work[name][k][1] for k in kinds]
        bars = left.bar(x + (j - 0.5) * 0.38, np.nan_to_num(acc), 0.38, yerr=np.nan_to_num(se),
                        capsize=3, color=colour, label=f"{name} RL")
        for bar, k in zip(bars, kinds):
            left.annotate(f"{by_work[name][k][2]:.0%} of replies", (bar.get_x() + 0.19,
                          bar.get_height() + 0.04), ha="center", fontsize=7.5)
    left.set_xticks(x, ["direct answer", "column addition written out"])
    finish_axes(left, ylabel="accuracy on held-out sums", ylim=(0, 1),
                title="accuracy by kind of reply")
    left.legend(fontsize=8, loc="upper left")
    metrics = runs["metrics"]
    steps = np.arange(1, np.shape(metrics["score"])[1] + 1)
    twin = middle.twinx()
    for ax, key, colour, label in ((middle, "score", "tab:green", "training reward"),
                                   (twin, "length", "tab:purple", "reply length (tokens)")):
        mean, se = mean_se(np.asarray(metrics[key]))
        ax.plot(steps, mean, color=colour, lw=1.6, label=label)
        ax.fill_between(steps, mean - se, mean + se, color=colour, alpha=0.2)
        ax.set_ylabel(label, color=colour)
    finish_axes(middle, xlabel="RL step", title="RLVR: reward and length rise together")
    ks = np.asarray(ex.PASS_KS)
    curves = {name: ex.pass_at_k_curve(runs[name]["stats"]["correct"], ks)
              for name in ("before", "after")}
    for name, colour in (("before", "0.4"), ("after", "tab:blue")):
        mean, se = mean_se(curves[name]) if len(curves[name]) > 1 else (curves[name][0], None)
        right.errorbar(ks, mean, yerr=se, fmt="o-", ms=3, capsize=2, color=colour,
                       label=f"{name} RL")
    right.set_xscale("log", base=2)
    right.set_xticks(ks, [str(k) for k in ks])
    finish_axes(right, xlabel="k", ylabel="pass@k", ylim=(0, 1.02),
                title="pass@k on held-out sums")
    right.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    numbers = {"by_work": {name: {k: list(map(float, v)) for k, v in d.items()}
                           for name, d in by_work.items()},
               "pass_at_k": {"k": ks.tolist(),
                             **{name: mean_se(c)[0].tolist() for name, c in curves.items()}},
               "score_first_last": [float(np.mean(np.asarray(metrics["score"])[:, 0])),
                                    float(np.mean(np.asarray(metrics["score"])[:, -1]))],
               "length_first_last": [float(np.mean(np.asarray(metrics["length"])[:, 0])),
                                     float(np.mean(np.asarray(metrics["length"])[:, -1]))]}
    for key in ("correct", "chars"):  # per held-out sum, before and after, paired by sum
        per_sum = {name: np.asarray(runs[name]["stats"][key], np.float64).mean(axis=(0, 1))
                   for name in curves}
        numbers[key] = {**{name: list(map(float, mean_se(v))) for name, v in per_sum.items()},
                        "change": list(map(float, mean_se(per_sum["after"] - per_sum["before"])))}
    return FigureResult(fig, numbers)


@figure("ch07_best_of_n", "ch07",
        "Best-of-N with a verifier against best-of-N with chapter 5's reward model (§7.2.3, "
        "parallel test-time compute: 'a scoring model selects the best answer'; chapter 9), "
        "beside majority vote, on the world's sums: 32 samples of chapter 4's SFT model per "
        "question cut into disjoint groups of N; mean +- standard error over questions. The "
        "verifier's pick is right whenever any sample is (pass@N); the reward model learned "
        "style from its preference pairs, not arithmetic. Right: accuracy against the "
        "characters generated per question.")
def best_of_n(samples=None, ns=ex.BON_NS) -> FigureResult:
    samples = best_of_n_samples() if samples is None else samples
    sets = ex.arithmetic_sets()
    ns = np.asarray(ns)
    fig = Figure(figsize=(14, 3.9))
    axes = fig.subplots(1, 3)
    colours = {"verifier": "tab:green", "reward model": "tab:red", "majority vote": "tab:orange"}
    numbers = {"N": ns.tolist()}
    for ax, name in zip(axes[:2], SETS):
        stats, scores = samples[name]
        curves = ex.best_of_n_curves(sets[name], stats, scores, ns)
        numbers[name] = {"chars": curves["chars"].tolist()}
        for who, colour in colours.items():
            mean, se = mean_se(curves[who], axis=1)
            ax.errorbar(ns, mean, yerr=se, fmt="o-", ms=3, capsize=2, color=colour,
                        label=f"best-of-N by {who}" if who != "majority vote" else who)
            numbers[name][who] = mean.tolist()
            numbers[name][who + "_se"] = se.tolist()
            if name == "rephrased":
                axes[2].errorbar(curves["chars"], mean, yerr=se, fmt="o-", ms=3, capsize=2,
                                 color=colour, label=who)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ns, [str(n) for n in ns])
        finish_axes(ax, xlabel="N (samples per question)", ylabel="accuracy of the pick",
                    ylim=(0, 1), title=f"{name} sums")
        ax.legend(fontsize=7.5, loc="upper left")
    axes[2].set_xscale("log", base=2)
    finish_axes(axes[2], xlabel="characters generated per question", ylabel="accuracy",
                ylim=(0, 1), title="rephrased sums: accuracy per character spent")
    axes[2].legend(fontsize=7.5, loc="upper left")
    fig.tight_layout()
    return FigureResult(fig, numbers)
