"""Chapter 4 figures: the loss mask of a two-turn conversation in both modes, sequence packing
(rows and the block-diagonal attention mask), SFT loss curves (the chapter's run and two short
runs with and without prompt masking), answers to the rephrased questions before and after
SFT, and the answer styles of the SFT model's samples next to the demonstrators'.

``notebooks/ch04_instruction_tuning.ipynb`` runs the chapter's experiments
(:mod:`rlhf_book.ch04_instruction_tuning.experiments`) and draws their results through these;
with no arguments (``rlhf-book figures ch04``) the figures run them: chapter 0's pretrained
small model from the substrate cache, then the chapter's SFT runs and the samples of the
prompt-masked model, done once and shared.
"""

from __future__ import annotations

import functools
import math
import textwrap

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from rlhf_book import ch04_instruction_tuning as ch04
from rlhf_book import data
from rlhf_book.ch04_instruction_tuning import experiments
from rlhf_book.lm import gpt
from rlhf_book.textbook import substrate
from rlhf_book.textbook.figures import FigureResult, draw_token_cells, figure

# The notebook's names for the two models it evaluates.
BASE_LABEL = "base (pretrained)"
SFT_LABEL = "SFT"


@functools.lru_cache(maxsize=1)
def sft_runs():
    """The chapter's SFT runs from chapter 0's pretrained model, run once per process when a
    figure is drawn without results: ``{label: (params, history)}`` for the
    :data:`~rlhf_book.ch04_instruction_tuning.experiments.SFT_CONFIG` run (stored for the later
    chapters) and both :data:`~rlhf_book.ch04_instruction_tuning.experiments.MASK_CONFIG`
    runs."""
    base = substrate.pretrained_small()[0]
    main = experiments.run_sft(base, True)
    substrate.store_sft_small(main[0])
    return {experiments.SFT_LABEL: main,
            **{experiments.RUN_LABELS[m]: run for m, run in experiments.mask_runs(base).items()}}


@functools.lru_cache(maxsize=1)
def sampled_answers():
    """``{label: answer_samples}`` of the base model and the SFT model on the rephrased
    questions at temperature 1
    (:func:`~rlhf_book.ch04_instruction_tuning.experiments.sample_models`)."""
    models = {BASE_LABEL: substrate.pretrained_small()[0],
              SFT_LABEL: sft_runs()[experiments.SFT_LABEL][0]}
    return experiments.sample_models(models, experiments.eval_questions("rephrased"))


@figure("ch04_loss_mask", "ch04",
        "A two-turn conversation in the token-level chat template, one cell per token, with "
        "the loss mask of each mode in orange: every assistant turn (top) or only the last "
        "(bottom). Grey cells are special tokens; the <|end|> closing each trained turn is "
        "trained, the <|assistant|> header never is.")
def loss_mask(conversation=None, columns: int = 30) -> FigureResult:
    conversation = list(conversation or experiments.TWO_TURN)
    modes = ("all_assistant", "last_turn")
    rendered = {mode: ch04.loss_mask_for(conversation, mode) for mode in modes}
    ids = rendered[modes[0]][0]
    rows = math.ceil(len(ids) / columns)
    fig = Figure(figsize=(columns * 0.32, 2 * (rows + 1) * 0.42 + 0.4))
    ax = fig.add_subplot()
    row = 0
    for mode in modes:
        ids_m, mask_m = rendered[mode]
        ax.text(0, -row - 0.45, f'mode="{mode}": {sum(mask_m)} of {len(ids_m)} tokens trained',
                fontsize=9, va="center")
        row += 1 + draw_token_cells(ax, ids_m, mask_m, row + 1, columns)
    ax.set(xlim=(0, columns), ylim=(-row - 0.1, 0.1), aspect="equal")
    ax.axis("off")
    fig.tight_layout()
    return FigureResult(fig, {"tokens": len(ids),
                              **{f"trained_{m}": int(sum(rendered[m][1])) for m in modes},
                              "assistant_turns": sum(m["role"] == "assistant"
                                                     for m in conversation)})


@figure("ch04_packing", "ch04",
        "Sequence packing of the 2,000 SFT demonstrations into rows of 128 tokens. Left and "
        "middle: the first rows, one colour per example (white: padding), padded (one example "
        "per row) and packed. Right: the attention mask of the first packed row, block-diagonal "
        "and causal, so no example sees another.")
def packing(demos=None, length: int = experiments.SFT_CONFIG.seq_len,
            show_rows: int = 16) -> FigureResult:
    demos = demos if demos is not None else experiments.sft_datasets()[0]
    examples, padded, packed = experiments.packing_stats(demos, length)
    n_tokens = sum(len(ids) for ids, _ in examples)
    seg0 = packed.segment_ids[:1]
    attention = np.asarray(gpt.segment_mask(seg0))[0]
    n_used = int((seg0 > 0).sum())

    fig = Figure(figsize=(12, 3.6))
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.4, 1.4, 1]})
    cmap = colormaps["tab20"]
    for ax, (name, batch) in zip(axes[:2], (("padded", padded), ("packed", packed))):
        seg = np.asarray(batch.segment_ids[:show_rows])
        # colour = example index (global), so the same example has the same colour in both
        if name == "padded":
            example_index = np.where(seg > 0, np.arange(len(seg))[:, None] + 1, 0)
        else:
            offsets = np.concatenate([[0], np.cumsum(np.asarray(batch.segment_ids).max(1))])
            example_index = np.where(seg > 0, seg + offsets[:len(seg), None], 0)
        image = np.ones(seg.shape + (3,))
        used = example_index > 0
        image[used] = np.array([cmap((k - 1) % 20)[:3] for k in example_index[used]])
        ax.imshow(image, aspect="auto", interpolation="nearest")
        rows = batch.tokens.shape[0]
        fill = experiments.row_fill(batch)
        ax.set(xlabel="position", ylabel="row",
               title=f"{name}: {rows:,} rows, {fill:.0%} of positions used")
    axes[2].imshow(attention, cmap="Blues", vmin=0, vmax=1.3, interpolation="nearest")
    axes[2].set(xlim=(-0.5, n_used - 0.5), ylim=(n_used - 0.5, -0.5), xlabel="key position j",
                ylabel="query position i",
                title=f"packed row 0: {int(seg0.max())} examples, segment_mask")
    fig.tight_layout()
    return FigureResult(fig, {
        "examples": len(examples),
        "tokens": n_tokens,
        "padded_rows": int(padded.tokens.shape[0]),
        "packed_rows": int(packed.tokens.shape[0]),
        "padded_fill": n_tokens / padded.tokens.size,
        "packed_fill": n_tokens / packed.tokens.size,
        "examples_per_packed_row": len(examples) / packed.tokens.shape[0],
        "row0_examples": int(seg0.max()),
        "row0_allowed_pairs": int(attention.sum()),
    })


@figure("ch04_sft_loss", "ch04",
        "SFT of the pretrained small model: the chapter's prompt-masked run (1,000 steps at "
        "1e-3) and two short runs (200 steps at 3e-4) with and without prompt masking. Left: "
        "the training loss each run optimises (assistant tokens only, or every token). Right: "
        "all runs measured the same way, the loss on the assistant tokens of demonstrations "
        "that answer the rephrased questions.")
def sft_loss_curves(histories: dict | None = None) -> FigureResult:
    """``histories`` maps a label to a :func:`~rlhf_book.ch04_instruction_tuning.train_sft`
    history; without it, run the chapter's SFT runs."""
    if histories is None:
        histories = {label: h for label, (_, h) in sft_runs().items()}
    fig = Figure(figsize=(10, 3.4))
    left, right = fig.subplots(1, 2)
    numbers = {}
    for k, (label, history) in enumerate(histories.items()):
        colour = ("tab:green", "tab:orange", "tab:blue")[k % 3]
        left.plot(history["step"], history["loss"], lw=0.7, alpha=0.8, color=colour, label=label)
        right.plot(history["eval_step"], history["eval_loss"], "o-", ms=3, color=colour,
                   label=label)
        numbers[label] = {"final_train_loss": float(np.mean(history["loss"][-25:])),
                          "first_heldout_loss": float(history["eval_loss"][0]),
                          "final_heldout_loss": float(history["eval_loss"][-1]),
                          "min_heldout_loss": float(np.min(history["eval_loss"])),
                          "steps": int(history["step"][-1])}
    left.set(xlabel="step", ylabel="training loss (nats per trained token)", ylim=(0, None),
             title="what each run minimises")
    right.set(xlabel="step", ylabel="loss on assistant tokens (nats)", ylim=(0, None),
              title="rephrased questions, assistant tokens only")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return FigureResult(fig, numbers)


def _short(label: str) -> str:
    return textwrap.fill(label, 12)


@figure("ch04_before_after", "ch04",
        "Answers to the 520 rephrased questions (training facts in phrasings no training data "
        "contains), 4 samples each at temperature 1, before SFT (the pretrained base model) and "
        "after it: mean gold reward with its standard error over the questions, the shares of "
        "right, wrong and missing answers, answer length in bytes (at most 64 tokens are "
        "generated) and the fraction of answers that end with <|end|>.")
def before_after(metrics: dict | None = None) -> FigureResult:
    """``metrics`` maps a label to a :func:`~rlhf_book.ch04_instruction_tuning.experiments.
    summarize` dict; without it, sample the base model and the SFT model."""
    if metrics is None:
        metrics = {label: experiments.summarize(a) for label, a in sampled_answers().items()}
    labels = list(metrics)
    x = np.arange(len(labels))
    colours = ["0.55", "tab:green", "tab:orange", "tab:blue"][:len(labels)]
    fig = Figure(figsize=(12, 3.2))
    gold_ax, kind_ax, bytes_ax, stop_ax = fig.subplots(1, 4)
    gold = [metrics[k]["gold"] for k in labels]
    gold_ax.bar(x, gold, yerr=[metrics[k]["gold_se"] for k in labels], color=colours, capsize=3)
    for i, v in enumerate(gold):
        gold_ax.text(i, v, f"{v:+.2f}", ha="center", va="bottom" if v >= 0 else "top", fontsize=8)
    gold_ax.axhline(0, color="k", lw=0.6)
    lo, hi = min(0.0, *gold), max(0.0, *gold)
    gold_ax.set(title="mean gold reward (± SE)", ylim=(lo - 0.2 * (hi - lo + 0.1), hi + 0.2))
    bottom = np.zeros(len(labels))
    for kind, colour in (("right", "tab:green"), ("wrong", "tab:red"), ("none", "0.75")):
        share = np.array([metrics[k][kind] for k in labels])
        kind_ax.bar(x, share, bottom=bottom, color=colour, label=kind)
        bottom += share
    kind_ax.set(title="answers: right / wrong / none", ylim=(0, 1.0))
    kind_ax.legend(fontsize=7, loc="upper right")
    for ax, key, title in ((bytes_ax, "bytes", "answer length (bytes)"),
                           (stop_ax, "stopped", "stopped with <|end|>")):
        values = [metrics[k][key] for k in labels]
        ax.bar(x, values, color=colours)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.0f}" if key == "bytes" else f"{v:.2f}", ha="center",
                    va="bottom", fontsize=8)
        ax.set(title=title, ylim=(0, 1.12) if key == "stopped" else (0, 1.15 * max(values)))
    for ax in (gold_ax, kind_ax, bytes_ax, stop_ax):
        ax.set_xticks(x)
        ax.set_xticklabels([_short(k) for k in labels], fontsize=7)
    first = metrics[labels[0]]
    fig.suptitle(f"{first['n']} rephrased questions, {first['samples']} samples each",
                 fontsize=9)
    fig.tight_layout()
    return FigureResult(fig, {label: dict(m) for label, m in metrics.items()})


@figure("ch04_styles", "ch04",
        "Who SFT imitates: the share of each answer style among the demonstrators' answers "
        "(their mixture, and the 2,000 demonstrations as read back from their text) and among "
        "the SFT model's samples at temperature 1 on the rephrased questions (± SE over the "
        "questions). A style is read from the text as the gold reward reads it: wrong, no "
        "answer (off topic), or right and hedged, padded past 48 bytes, or concise.")
def styles(shares: dict | None = None) -> FigureResult:
    """``shares`` maps a label to ``{style: share}`` or ``{style: (share, se)}`` over
    :data:`rlhf_book.data.STYLES`; without it, the demonstrators' mixture, the demonstrations
    and the samples of the SFT model."""
    if shares is None:
        questions = experiments.eval_questions("rephrased")
        shares = {"demonstrators (DEMONSTRATOR_STYLES)": dict(data.DEMONSTRATOR_STYLES),
                  "2,000 demonstrations, as read": experiments.demonstration_styles(
                      experiments.sft_datasets()[0])}
        shares.update({label: experiments.style_shares(questions, a["texts"])
                       for label, a in sampled_answers().items() if label != BASE_LABEL})
    labels = list(shares)
    width = 0.8 / len(labels)
    fig = Figure(figsize=(10, 3.4))
    ax = fig.add_subplot()
    x = np.arange(len(data.STYLES))
    numbers = {}
    for k, label in enumerate(labels):
        values = [shares[label].get(s, 0.0) for s in data.STYLES]
        mean = np.array([v[0] if isinstance(v, tuple) else v for v in values])
        se = np.array([v[1] if isinstance(v, tuple) else 0.0 for v in values])
        ax.bar(x + (k - (len(labels) - 1) / 2) * width, mean, width, yerr=se, capsize=2,
               color=("0.3", "0.6", "tab:orange", "tab:blue", "tab:green", "tab:purple")[k % 6],
               label=label)
        numbers[label] = dict(zip(data.STYLES, mean.tolist()))
    ax.set_xticks(x)
    ax.set_xticklabels([s.replace("_", " ") for s in data.STYLES])
    ax.set(ylabel="share of answers", ylim=(0, 1), title="answer styles")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return FigureResult(fig, numbers)
