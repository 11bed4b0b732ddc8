"""Chapter 0 figures: the chat template, the causal mask, the parameter count, temperature,
and the pretraining loss curve. ``notebooks/ch00_mini_gpt.ipynb`` draws through these."""

from __future__ import annotations

import functools
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from rlhf_book import data
from rlhf_book.lm import gpt, sampling, tokenizer, train
from rlhf_book.textbook import substrate
from rlhf_book.textbook.figures import FigureResult, figure

TEMPERATURES = (0.5, 1.0, 2.0)

# Chapter 0's pretraining run (notebook §4): the small config, 1,500 steps of 16 x 128 bytes.
PRETRAIN_MODEL = "small"
PRETRAIN_CONFIG = train.TrainConfig(steps=1500, batch_size=16, seq_len=128, learning_rate=3e-3,
                                    warmup_steps=50, log_every=50)
PRETRAIN_DOCUMENTS, PRETRAIN_EVAL_FRACTION = 6000, 0.05


def pretraining_streams(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The chapter's corpus as ``(train_stream, eval_stream)``: 5% of the *documents* held out."""
    docs = data.pretraining_corpus(seed=seed, n_documents=PRETRAIN_DOCUMENTS)
    n_eval = int(PRETRAIN_EVAL_FRACTION * len(docs))
    return train.token_stream(docs[n_eval:]), train.token_stream(docs[:n_eval])


def unigram_entropy(stream: np.ndarray) -> float:
    """Entropy (nats) of the stream's byte frequencies: the best loss without context."""
    counts = np.bincount(stream, minlength=tokenizer.VOCAB_SIZE)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def pretrain_key() -> str:
    """The substrate-cache fingerprint of chapter 0's pretraining run: its settings, the code
    that builds its data, and the library's source (see :mod:`rlhf_book.textbook.substrate`)."""
    return substrate.fingerprint(gpt.get_config(PRETRAIN_MODEL), PRETRAIN_CONFIG,
                                 PRETRAIN_DOCUMENTS, PRETRAIN_EVAL_FRACTION, 0,
                                 inspect.getsource(pretraining_streams))


@functools.lru_cache(maxsize=1)
def pretrained_small():
    """Chapter 0's pretraining run (``PRETRAIN_CONFIG`` on the small model), shared by every
    figure and notebook that needs it: ``(params, history)``. Loaded from the substrate cache
    when chapter 0's notebook (or an earlier call) stored it, else trained (about a minute on a
    laptop CPU) and stored."""
    def compute():
        train_stream, eval_stream = pretraining_streams()
        return train.pretrain(gpt.get_config(PRETRAIN_MODEL), PRETRAIN_CONFIG, train_stream,
                              eval_stream, seed=0, progress=False)
    return substrate.cached("pretrained_small", pretrain_key(), compute)


def store_pretrained_small(params, history) -> None:
    """Store a run of chapter 0's pretraining (the notebook's own) for the later chapters."""
    substrate.save("pretrained_small", pretrain_key(), params, history)


def _token_label(token_id: int) -> str:
    short = {tokenizer.BOS: "bos", tokenizer.SYSTEM: "sys", tokenizer.USER: "user",
             tokenizer.ASSISTANT: "asst", tokenizer.END: "end"}
    return short.get(token_id, {32: "\u2423", 10: "\u21b5"}.get(
        token_id, chr(token_id) if token_id < 256 else "?"))


def draw_token_cells(ax, ids, mask, row0: int, columns: int, face_on: str = "tab:orange") -> int:
    """Draw ``ids`` as a grid of cells from row ``row0``, masked tokens in ``face_on`` and
    special tokens in grey; returns the number of rows used."""
    for n, (token_id, m) in enumerate(zip(ids, mask)):
        r, c = divmod(n, columns)
        special = token_id >= tokenizer.N_BYTES
        face = face_on if m else ("0.82" if special else "white")
        ax.add_patch(Rectangle((c, -row0 - r - 1), 0.95, 0.9, facecolor=face, edgecolor="0.6",
                               lw=0.5))
        ax.text(c + 0.47, -row0 - r - 0.55, _token_label(token_id), ha="center", va="center",
                fontsize=5.5 if special else 8, family="monospace")
    return math.ceil(len(ids) / columns)


@figure("ch00_chat_template", "ch00",
        "A conversation rendered with the chat template, one cell per token; orange cells are "
        "in the assistant mask (what SFT trains on), grey cells are special tokens.")
def chat_template(conversation=None, columns: int = 24) -> FigureResult:
    if conversation is None:  # an SFT demonstration with all three roles
        demos = data.sft_demonstrations(seed=0, n=50)
        conversation = next(c for c in demos if c[0]["role"] == "system")
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
def causal_mask(size: int = 12, text: str = "The capital of France is Paris.",
                edit_at: int = 12) -> FigureResult:
    mask = np.asarray(gpt.causal_mask(size))
    config = gpt.GPTConfig()
    params = gpt.init_params(jax.random.PRNGKey(0), config)
    tokens = jnp.array([[tokenizer.BOS, *tokenizer.encode(text)]])
    edited = tokens.at[0, edit_at].set(tokenizer.encode("X")[0])
    change = np.abs(np.asarray(gpt.forward(params, tokens, config)
                               - gpt.forward(params, edited, config))).max(axis=-1)[0]

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
    shapes = jax.eval_shape(lambda: gpt.init_params(jax.random.PRNGKey(0), config))
    order = ["tok_emb", "pos_emb", "blocks/ln1", "blocks/attn", "blocks/ln2", "blocks/mlp", "ln_f"]
    groups: dict[str, int] = dict.fromkeys(order, 0)
    for path, leaf in jax.tree_util.tree_leaves_with_path(shapes):
        keys = [p.key for p in path]
        name = "/".join(keys[:2]) if keys[0] == "blocks" else keys[0]
        groups[name] += int(np.prod(leaf.shape))
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
def temperature(policy: dict | None = None, temperatures=TEMPERATURES,
                draws: int = 20_000) -> FigureResult:
    policy = policy or data.LESSON_TOKEN_POLICY
    names, p = list(policy), np.array(list(policy.values()))
    logits = jnp.tile(jnp.log(jnp.asarray(p, jnp.float32)), (draws, 1))
    numbers, colours = {}, ("tab:blue", "tab:orange", "tab:green")
    fig = Figure(figsize=(9, 3))
    bars, curve = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(temperatures)
    for k, tau in enumerate(temperatures):
        p_tau = p ** (1 / tau) / np.sum(p ** (1 / tau))
        tokens, _ = sampling.sample_token(jax.random.PRNGKey(k), logits, tau)
        freq = np.bincount(np.asarray(tokens), minlength=len(p)) / draws
        x = np.arange(len(p)) + (k - (len(temperatures) - 1) / 2) * width
        bars.bar(x, p_tau, width, color=colours[k % 3], alpha=0.7, label=f"tau = {tau:g}")
        bars.plot(x, freq, "k.", ms=5)
        numbers[f"tau={tau:g}"] = {"probabilities": p_tau.round(4).tolist(),
                                   "sampled_frequencies": freq.round(4).tolist()}
    bars.set(xticks=range(len(p)), xticklabels=names, ylabel="probability",
             title="softmax(log p / tau); dots: sampled frequencies")
    bars.legend(fontsize=8)
    taus = np.geomspace(0.1, 10, 200)
    entropy = [-(q * np.log(q)).sum() for q in (p ** (1 / t) / np.sum(p ** (1 / t)) for t in taus)]
    curve.semilogx(taus, entropy, color="tab:purple")
    curve.axhline(math.log(len(p)), color="0.5", ls="--", lw=1, label=f"log {len(p)} (uniform)")
    curve.set(xlabel="temperature tau", ylabel="entropy (nats)",
              title="tau -> 0: argmax; tau -> inf: uniform")
    curve.legend(fontsize=8)
    fig.tight_layout()
    return FigureResult(fig, numbers)


@figure("ch00_pretrain_loss", "ch00",
        "Pretraining the small mini GPT on the synthetic world's corpus: train and held-out "
        "next-token loss against a uniform guess and the unigram entropy.")
def pretrain_loss(history: dict | None = None, entropy: float | None = None) -> FigureResult:
    """Draw a pretraining ``history`` (from :func:`rlhf_book.lm.train.pretrain`); without one,
    run chapter 0's pretraining (``PRETRAIN_CONFIG``, about a minute on a laptop CPU)."""
    if history is None or entropy is None:
        entropy = unigram_entropy(pretraining_streams()[0])
        if history is None:
            history = pretrained_small()[1]
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
