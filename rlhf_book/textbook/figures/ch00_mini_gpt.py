"""Chapter 0 figures: the chat template, the causal mask, the parameter count, temperature,
and the pretraining loss curve. ``notebooks/ch00_mini_gpt.ipynb`` draws through these, passing
its own results; with no arguments (``rlhf-book figures ch00``) each figure runs the chapter's
experiment (:mod:`rlhf_book.ch00_mini_gpt`) itself, the pretraining run through the substrate
cache (:func:`rlhf_book.textbook.substrate.pretrained_small`)."""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure

from rlhf_book import ch00_mini_gpt as ch00
from rlhf_book import data
from rlhf_book.lm import gpt, tokenizer
from rlhf_book.textbook import substrate
from rlhf_book.textbook.figures import FigureResult, draw_token_cells, figure

@figure("ch00_chat_template", "ch00",
        "A conversation rendered with the chat template, one cell per token; orange cells are "
        "in the assistant mask (what SFT trains on), grey cells are special tokens.")
def chat_template(conversation=None, columns: int = 24) -> FigureResult:
    conversation = ch00.chat_example() if conversation is None else conversation
    ids, mask = tokenizer.render_chat(conversation)
    rows = math.ceil(len(ids) / columns)
    fig = Figure(figsize=(columns * 0.32, rows * 0.42 + 0.4))
    ax = fig.add_subplot()
    draw_token_cells(ax, ids, mask, 0, columns)
    ax.set(xlim=(0, columns), ylim=(-rows - 0.1, 0.1), aspect="equal")
    ax.axis("off")
    ax.set_title("chat template, one cell per token (orange: assistant mask = 1; grey: special)",
                 fontsize=9)
    return FigureResult(fig, {"tokens": len(ids), "assistant_mask_tokens": int(sum(mask)),
                              "special_tokens": int(sum(i >= tokenizer.N_BYTES for i in ids))})


@figure("ch00_causal_mask", "ch00",
        "Left: the causal mask, query i may attend to key j <= i. Right: editing one token of "
        "the input changes the logits at that position and after it, never before.")
def causal_mask(size: int = 12, text: str = ch00.CAUSAL_TEXT,
                edit_at: int = ch00.CAUSAL_EDIT_AT, change=None) -> FigureResult:
    """Draw ``gpt.causal_mask(size)`` and ``change``, the per-position logit change of
    :func:`rlhf_book.ch00_mini_gpt.causal_edit` (computed for ``text`` and ``edit_at`` when not
    given)."""
    mask = np.asarray(gpt.causal_mask(size))
    change = ch00.causal_edit(text, edit_at) if change is None else np.asarray(change)

    fig = Figure(figsize=(9, 3.2))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 2]})
    left.imshow(mask, cmap="Blues", vmin=0, vmax=1.3)
    left.set(xlabel="key position j", ylabel="query position i",
             title=f"causal_mask({size})", xticks=range(0, size, 2), yticks=range(0, size, 2))
    right.bar(range(len(change)), change,
              color=["0.6"] * edit_at + ["tab:red"] * (len(change) - edit_at))
    right.axvline(edit_at - 0.5, color="k", ls=":", lw=1)
    right.set(xlabel="position", ylabel="max |logit change|",
              title=f"editing token {edit_at} changes positions >= {edit_at} only")
    fig.tight_layout()
    return FigureResult(fig, {"size": size, "allowed_pairs": int(mask.sum()),
                              "max_change_before_edit": float(change[:edit_at].max()),
                              "min_change_from_edit": float(change[edit_at:].min())})


@figure("ch00_parameter_count", "ch00",
        "Where the mini GPT's parameters sit (default shape: d 128, 4 heads, 4 layers, "
        "context 128, d_ff 512, tied head).")
def parameter_count(config: gpt.GPTConfig | None = None) -> FigureResult:
    config = config or gpt.GPTConfig()
    groups = ch00.parameter_groups(config)
    order = list(ch00.PARAMETER_GROUPS)
    total = sum(groups.values())
    lesson = total - (config.vocab_size - tokenizer.N_BYTES) * config.d_model

    fig = Figure(figsize=(6.5, 3))
    ax = fig.add_subplot()
    names = order[::-1]  # the model's order, top to bottom
    labels = [f"{n} (x{config.n_layers} layers)" if n.startswith("blocks") else n for n in names]
    ax.barh(labels, [groups[n] for n in names], color="tab:blue")
    for i, n in enumerate(names):
        ax.text(groups[n], i, f" {groups[n]:,}", va="center", fontsize=8)
    ax.set(xlabel="parameters", xlim=(0, max(groups.values()) * 1.25),
           title=f"{total:,} parameters (vocab {config.vocab_size}); "
                 f"{lesson:,} with the lesson's 256 bytes")
    fig.tight_layout()
    return FigureResult(fig, {"total": total, "with_vocab_256": lesson, **groups})


@figure("ch00_temperature", "ch00",
        "The lectures' next-token policy {0.6, 0.3, 0.1} at three temperatures: bars are "
        "softmax(log p / tau), dots are frequencies of 20,000 draws of sampling.sample_token.")
def temperature(sweep: dict | None = None, policy: dict | None = None) -> FigureResult:
    """Draw a :func:`rlhf_book.ch00_mini_gpt.temperature_sweep` (run with its defaults when not
    given) of ``policy`` (default: the lectures' policy) and its entropy against temperature."""
    policy = policy or data.LESSON_TOKEN_POLICY
    sweep = ch00.temperature_sweep(policy) if sweep is None else sweep
    names, n = list(policy), len(policy)
    numbers, colours = {}, ("tab:blue", "tab:orange", "tab:green")
    fig = Figure(figsize=(9, 3))
    bars, curve = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(sweep)
    for k, (tau, run) in enumerate(sweep.items()):
        p_tau, freq = run["probabilities"], run["frequencies"]
        x = np.arange(n) + (k - (len(sweep) - 1) / 2) * width
        bars.bar(x, p_tau, width, color=colours[k % 3], alpha=0.7, label=f"tau = {tau:g}")
        bars.plot(x, freq, "k.", ms=5)
        numbers[f"tau={tau:g}"] = {"probabilities": p_tau.round(4).tolist(),
                                   "sampled_frequencies": freq.round(4).tolist()}
    bars.set(xticks=range(n), xticklabels=names, ylabel="probability",
             title="softmax(log p / tau); dots: sampled frequencies")
    bars.legend(fontsize=8)
    taus, entropy = ch00.temperature_entropy(policy)
    curve.semilogx(taus, entropy, color="tab:purple")
    curve.axhline(math.log(n), color="0.5", ls="--", lw=1, label=f"log {n} (uniform)")
    curve.set(xlabel="temperature tau", ylabel="entropy (nats)",
              title="tau -> 0: argmax; tau -> inf: uniform")
    curve.legend(fontsize=8)
    fig.tight_layout()
    return FigureResult(fig, numbers)


@figure("ch00_pretrain_loss", "ch00",
        "Pretraining the small mini GPT on the synthetic world's corpus: train and held-out "
        "next-token loss against a uniform guess and the unigram entropy.")
def pretrain_loss(history: dict | None = None, entropy: float | None = None) -> FigureResult:
    """Draw a pretraining ``history`` (from :func:`rlhf_book.lm.train.pretrain`) against the
    ``entropy`` of the training stream; without them, chapter 0's run from the substrate cache
    (trained, about a minute on a laptop CPU, when the cache does not hold it)."""
    if entropy is None:
        entropy = ch00.unigram_entropy(ch00.pretraining_streams()[0])
    if history is None:
        history = substrate.pretrained_small()[1]
    uniform = math.log(tokenizer.VOCAB_SIZE)
    fig = Figure(figsize=(6.5, 3.4))
    ax = fig.add_subplot()
    ax.plot(history["step"], history["loss"], lw=0.7, alpha=0.6, label="train (per step)")
    ax.plot(history["eval_step"], history["eval_loss"], "o-", ms=3, label="held-out")
    ax.axhline(uniform, color="0.4", ls="--", lw=1, label=f"uniform guess, log {tokenizer.VOCAB_SIZE}")
    ax.axhline(entropy, color="tab:red", ls=":", lw=1.2, label="unigram entropy")
    ax.set(xlabel="step", ylabel="next-token loss (nats)", ylim=(0, 6),
           title="Pretraining the small mini GPT")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return FigureResult(fig, {
        "first_loss": float(history["loss"][0]),
        "final_train_loss": float(np.mean(history["loss"][-50:])),
        "final_eval_loss": float(history["eval_loss"][-1]),
        "uniform_loss": uniform,
        "unigram_entropy": entropy,
        "steps": int(history["step"][-1]),
    })
