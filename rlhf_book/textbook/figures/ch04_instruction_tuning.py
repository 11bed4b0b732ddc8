"""Chapter 4 figures: the loss mask of a two-turn conversation in both modes, sequence packing
(rows and the block-diagonal attention mask), SFT loss curves with and without prompt masking,
and answers to held-out questions before and after SFT.

``notebooks/ch04_instruction_tuning.ipynb`` runs the chapter's experiments
(:mod:`rlhf_book.ch04_instruction_tuning.experiments`) and draws their results through these;
with no arguments (``rlhf-book figures ch04``) the figures run them: chapter 0's pretrained
small model from the substrate cache, then the two SFT runs, done once and shared.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from rlhf_book import ch04_instruction_tuning as ch04
from rlhf_book.ch04_instruction_tuning import experiments
from rlhf_book.lm import gpt
from rlhf_book.textbook import substrate
from rlhf_book.textbook.figures import FigureResult, draw_token_cells, figure

@functools.lru_cache(maxsize=1)
def sft_runs():
    """Both SFT runs of the chapter from chapter 0's pretrained model, run once per process
    when a figure is drawn without results; the prompt-masked model is stored for the later
    chapters."""
    runs = experiments.sft_runs(substrate.pretrained_small()[0])
    substrate.store_sft_small(runs[True][0])
    return runs


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
        "SFT of the pretrained small model with and without prompt masking. Left: the training "
        "loss each run optimises (assistant tokens only, or every token). Right: both runs "
        "measured the same way, the loss on the assistant tokens of demonstrations about "
        "held-out facts.")
def sft_loss_curves(histories: dict | None = None) -> FigureResult:
    """``histories`` maps a label to a :func:`~rlhf_book.ch04_instruction_tuning.train_sft`
    history; without it, run both SFT runs of the chapter's experiments."""
    if histories is None:
        histories = {experiments.RUN_LABELS[m]: h for m, (_, h) in sft_runs().items()}
    fig = Figure(figsize=(10, 3.4))
    left, right = fig.subplots(1, 2)
    numbers = {}
    for k, (label, history) in enumerate(histories.items()):
        colour = ("tab:orange", "tab:blue", "tab:green")[k % 3]
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
              title="held-out facts, assistant tokens only")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return FigureResult(fig, numbers)


@figure("ch04_before_after", "ch04",
        "Greedy answers to the held-out questions before SFT (the pretrained base model) and "
        "after it: mean gold reward, accuracy, answer length in bytes (48 is the generation "
        "limit) and the fraction of answers that end with <|end|>.")
def before_after(metrics: dict | None = None) -> FigureResult:
    """``metrics`` maps a label to an :func:`~rlhf_book.ch04_instruction_tuning.evaluate_answers`
    dict; without it, evaluate the base model and both SFT runs."""
    if metrics is None:
        runs = sft_runs()
        metrics = experiments.evaluate_models({"base (pretrained)": substrate.pretrained_small()[0],
                                               "SFT, prompt masked": runs[True][0],
                                               "SFT, no mask": runs[False][0]})
    panels = (("gold_reward", "mean gold reward"), ("accuracy", "accuracy"),
              ("answer_bytes", "answer length (bytes)"), ("stopped", "stopped with <|end|>"))
    fig = Figure(figsize=(11, 3))
    axes = fig.subplots(1, len(panels))
    labels = list(metrics)
    colours = ["0.55", "tab:orange", "tab:blue", "tab:green"][:len(labels)]
    for ax, (key, title) in zip(axes, panels):
        values = [metrics[label][key] for label in labels]
        ax.bar(range(len(labels)), values, color=colours)
        for x, v in enumerate(values):
            ax.text(x, v, f"{v:.2f}" if key != "answer_bytes" else f"{v:.0f}", ha="center",
                    va="bottom" if v >= 0 else "top", fontsize=8)
        ax.axhline(0, color="k", lw=0.6)
        ax.set(title=title, xticks=range(len(labels)))
        ax.set_xticklabels([label.replace(", ", ",\n").replace(" (", "\n(") for label in labels],
                           fontsize=7)
        if key in ("accuracy", "stopped"):  # fractions: always on the full 0..1 scale
            ax.set_ylim(0, 1.12)
        else:
            lo, hi = min(0.0, *values), max(0.0, *values)
            ax.set_ylim(lo - 0.15 * (hi - lo + 1e-9), hi + 0.15 * (hi - lo + 1e-9))
    fig.suptitle(f"{metrics[labels[0]]['n']} held-out questions, greedy decoding", fontsize=9)
    fig.tight_layout()
    return FigureResult(fig, {label: {k: v for k, v in m.items()} for label, m in metrics.items()})
