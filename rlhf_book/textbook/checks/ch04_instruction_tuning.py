"""Grading checks for chapter 4 (instruction tuning).

Oracles: the book's rendered chat-template strings (§4.1) byte for byte; a token-by-
token scan of the rendered conversation for the loss masks; a float64 NumPy loop and optax for
the SFT loss, with the invariance to logits at unselected positions; and, for packing, the
examples read back out of the packed rows.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import optax

from rlhf_book.lm import tokenizer
from rlhf_book.textbook.checks import (Mismatch, expect, expect_close, expect_finite, expect_shape,
                                       grad_of, jit, require)

PIRATE = "You are a friendly chatbot who always responds in the style of a pirate"
HELICOPTERS = "How many helicopters can a human eat in one sitting?"

# The book's rendered examples (§4.1), as the book prints them.
BOOK_CHATML_SINGLE = (
    f"<|im_start|>system\n{PIRATE}<|im_end|>\n<|im_start|>user\n{HELICOPTERS}<|im_end|>\n"
    "<|im_start|>assistant\n")
BOOK_CHATML_MULTI = (
    BOOK_CHATML_SINGLE + "Oh just 6.<|im_end|>\n<|im_start|>user\nAre you sure about that?"
    "<|im_end|>\n<|im_start|>assistant\n")
BOOK_ZEPHYR = f"<|system|>\n{PIRATE}</s>\n<|user|>\n{HELICOPTERS}</s>\n<|assistant|>\n"
TULU_ANSWER = ("I'm just a computer program, so I don't have feelings, but I'm functioning as "
               "expected. How can I assist you today?")
BOOK_TULU = f"<|user|>\nHow are you doing?\n<|assistant|>\n{TULU_ANSWER}<|endoftext|>"


def _first_difference(got: str, expected: str) -> str:
    k = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
    return (f"first difference at character {k}: got {got[k:k + 24]!r}, "
            f"expected {expected[k:k + 24]!r}")


def _expect_text(got, expected: str, what: str) -> None:
    require(isinstance(got, str), f"{what} returned {type(got).__name__}, not a str")
    if got != expected:
        raise Mismatch(f"{what}: {_first_difference(got, expected)}")


# ----------------------------------------------------------------------------------------------
# 4.1 the book's chat templates


def apply_chat_template(fn):
    system_user = [{"role": "system", "content": PIRATE}, {"role": "user", "content": HELICOPTERS}]
    multi = system_user + [{"role": "assistant", "content": "Oh just 6."},
                           {"role": "user", "content": "Are you sure about that?"}]
    _expect_text(fn(system_user, "chatml", add_generation_prompt=True), BOOK_CHATML_SINGLE,
                 "apply_chat_template(book single turn, 'chatml', add_generation_prompt=True)")
    _expect_text(fn(multi, "chatml", add_generation_prompt=True), BOOK_CHATML_MULTI,
                 "apply_chat_template(book multi-turn, 'chatml', add_generation_prompt=True)")
    _expect_text(fn(system_user, "zephyr", add_generation_prompt=True), BOOK_ZEPHYR,
                 "apply_chat_template(book example, 'zephyr', add_generation_prompt=True)")
    tulu = [{"role": "user", "content": "How are you doing?"},
            {"role": "assistant", "content": TULU_ANSWER}]
    _expect_text(fn(tulu, "tulu"), BOOK_TULU, "apply_chat_template(book example, 'tulu')")
    padded = [{"role": "user", "content": "  hi \n"}]
    _expect_text(fn(padded, "chatml", bos_token="<s>"), "<s><|im_start|>user\nhi<|im_end|>\n",
                 "apply_chat_template(content '  hi \\n', bos_token='<s>') (contents are trimmed)")
    _expect_text(fn(padded, "chatml"), "<|im_start|>user\nhi<|im_end|>\n",
                 "apply_chat_template(..., add_generation_prompt=False) (no assistant header)")


# ----------------------------------------------------------------------------------------------
# 4.2 which tokens SFT trains on


def loss_mask_loop(ids, last_turn_only):
    """1 from just after each <|assistant|> header through its closing <|end|> (inclusive)."""
    headers = [k for k, i in enumerate(ids) if i == tokenizer.ASSISTANT]
    if last_turn_only:
        headers = headers[-1:]
    mask = [0] * len(ids)
    for h in headers:
        k = h + 1
        while k < len(ids):
            mask[k] = 1
            if ids[k] == tokenizer.END:
                break
            k += 1
    return mask


def loss_mask_for(fn):
    conversation = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "5"},
        {"role": "user", "content": "And 2 + 4?"},
        {"role": "assistant", "content": "6"},
    ]
    expected_ids, _ = tokenizer.render_chat(conversation)
    for mode, last in (("all_assistant", False), ("last_turn", True)):
        what = f"loss_mask_for(two-turn conversation, mode={mode!r})"
        out = fn(conversation, mode)
        require(isinstance(out, tuple) and len(out) == 2,
                f"{what} must return a pair (ids, mask), got {type(out).__name__}")
        ids, mask = out
        expect_close(np.asarray(ids), np.asarray(expected_ids), what + " ids (the chat template)")
        expected = loss_mask_loop(expected_ids, last)
        expect_close(np.asarray(mask), np.asarray(expected), what + " mask")
    ids, mask = fn(conversation[1:3], "last_turn")
    expect_close(np.asarray(mask), np.asarray(loss_mask_loop(ids, True)),
                 "loss_mask_for(one-turn conversation, 'last_turn')")


# ----------------------------------------------------------------------------------------------
# 4.3 the SFT loss


def masked_nll_loop(logits, tokens, mask):
    logits = np.asarray(logits, np.float64)
    total, count = 0.0, 0.0
    N, T, _ = logits.shape
    for n in range(N):
        for t in range(T - 1):
            if mask[n, t + 1]:
                row = logits[n, t]
                m = row.max()
                logz = m + math.log(np.exp(row - m).sum())
                total += logz - row[tokens[n, t + 1]]
                count += 1
    return total / count if count else 0.0


def _nll64(logits, targets) -> np.ndarray:
    """``-log softmax(logits)[targets]`` per position, in float64."""
    z = np.asarray(logits, np.float64)
    m = z.max(axis=-1, keepdims=True)
    logz = m[..., 0] + np.log(np.exp(z - m).sum(axis=-1))
    return logz - np.take_along_axis(z, np.asarray(targets)[..., None], axis=-1)[..., 0]


def _sft_diagnosis(out, logits, tokens, mask) -> str:
    """A hint naming the common bug that ``out`` reproduces, or '' (each alternative computed
    here in float64 from its own description, never from the library)."""
    mask = np.asarray(mask, np.float64)
    nll = _nll64(np.asarray(logits)[:, :-1], np.asarray(tokens)[:, 1:])  # [N, T-1], shifted
    shifted, unshifted = mask[:, 1:], mask[:, :-1]
    no_shift = _nll64(logits, tokens)  # logits[:, t] scoring tokens[:, t]: [N, T]
    wrong = {
        "no mask: the mean runs over every position, prompt and padding included; average "
        "only the tokens whose loss_mask is 1": nll.mean(),
        "the mask is not shifted: logits[:, t] predicts tokens[:, t + 1], so it pairs with "
        "loss_mask[:, t + 1], i.e. loss_mask[:, 1:], not loss_mask[:, :-1]":
            (nll * unshifted).sum() / unshifted.sum(),
        "nothing is shifted: logits[:, t] predicts tokens[:, t + 1], so score logits[:, :-1] "
        "against tokens[:, 1:] and mask with loss_mask[:, 1:]":
            (no_shift * mask).sum() / mask.sum(),
        "a sum, not a mean: divide by the number of selected tokens": (nll * shifted).sum(),
    }
    value = float(np.asarray(out, np.float64))
    for hint, candidate in wrong.items():
        if abs(value - float(candidate)) <= 1e-4 * max(1.0, abs(float(candidate))):
            return f" (looks like {hint})"
    return ""


def sft_loss(fn):
    rng = np.random.default_rng(0)
    N, T, V = 3, 7, 11
    logits = jnp.asarray(2 * rng.standard_normal((N, T, V)), jnp.float32)
    tokens = jnp.asarray(rng.integers(0, V, (N, T)), jnp.int32)
    mask = np.zeros((N, T), np.float32)
    mask[0, 3:6] = 1  # a response in the middle
    mask[1, 1:] = 1   # everything after the first token
    # row 2: nothing selected (a prompt-only row)
    mask = jnp.asarray(mask)
    what = "sft_loss(logits [3,7,11], tokens, loss_mask)"
    out = expect_finite(expect_shape(fn(logits, tokens, mask), (), what), what)
    expected = masked_nll_loop(logits, tokens, np.asarray(mask))
    hint = "" if abs(float(out) - expected) <= 1e-5 else _sft_diagnosis(out, logits, tokens, mask)
    expect_close(out, expected, what + hint, atol=1e-5)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:])
    expect_close(out, float((ce * mask[:, 1:]).sum() / mask[:, 1:].sum()),
                 what + " vs optax.softmax_cross_entropy_with_integer_labels", atol=1e-5)

    # logits that predict unselected tokens do not matter, and get no gradient
    used = np.zeros((N, T), bool)
    used[:, :-1] = np.asarray(mask[:, 1:]) > 0
    noise = jnp.asarray(100 * rng.standard_normal((N, T, V)), jnp.float32)
    perturbed = jnp.where(jnp.asarray(used)[..., None], logits, noise)
    expect_close(fn(perturbed, tokens, mask), out,
                 "sft_loss after changing the logits of unselected positions (should not change)",
                 atol=1e-5)
    grad = np.asarray(grad_of(fn)(logits, tokens, mask))
    expect_close(np.abs(grad[~used]).max(), 0.0,
                 "max |gradient| at logits of unselected positions (should be exactly 0)", atol=0)
    expect_close(fn(logits, tokens, jnp.zeros((N, T))), 0.0, "sft_loss with an all-zero mask")
    expect_close(jit(fn)(logits, tokens, mask), out, "jax.jit(sft_loss)(...)", atol=1e-6)


# ----------------------------------------------------------------------------------------------
# 4.4 sequence packing


def pack_examples(fn):
    rng = np.random.default_rng(0)
    examples = []
    for _ in range(9):
        n = int(rng.integers(3, 12))
        ids = [tokenizer.BOS] + rng.integers(0, 256, n - 1).tolist()
        mask = [0] + rng.integers(0, 2, n - 1).tolist()
        examples.append((ids, mask))
    length = 20
    out = fn(examples, length)
    require(hasattr(out, "tokens") and hasattr(out, "loss_mask") and hasattr(out, "segment_ids"),
            "pack_examples must return an SFTBatch(tokens, loss_mask, segment_ids)")
    tokens, mask, seg = (np.asarray(a) for a in (out.tokens, out.loss_mask, out.segment_ids))
    R = tokens.shape[0]
    what = f"pack_examples(9 examples of 3-11 tokens, length={length})"
    expect_shape(mask, (R, length), what + " loss_mask")
    expect_shape(seg, (R, length), what + " segment_ids")
    require(tokens.shape == (R, length), f"{what} tokens have shape {tokens.shape}, expected (R, {length})")

    # read the examples back: row by row, segment by segment, in order
    recovered = []
    for r in range(R):
        ids_r = [s for s in np.unique(seg[r]) if s != 0]
        for s in sorted(ids_r):
            where = np.flatnonzero(seg[r] == s)
            expect(np.all(np.diff(where) == 1), f"{what}: segment {s} of row {r} is not contiguous")
            recovered.append((tokens[r, where].tolist(), mask[r, where].tolist()))
        pad = seg[r] == 0
        expect(np.all(tokens[r, pad] == tokenizer.PAD) and np.all(mask[r, pad] == 0),
               f"{what}: row {r} has padding (segment 0) that is not <|pad|> with loss mask 0")
    expect(len(recovered) == len(examples),
           f"{what}: found {len(recovered)} segments, expected {len(examples)} (one per example)")
    for k, ((ids, m), (got_ids, got_m)) in enumerate(zip(examples, recovered)):
        expect(got_ids == ids, f"{what}: example {k} comes back as {got_ids[:6]}..., expected "
                               f"{ids[:6]}... (examples must stay whole and in order)")
        expected_mask = [0.0] + [float(x) for x in m[1:]]
        expect_close(np.asarray(got_m), np.asarray(expected_mask),
                     f"{what}: loss mask of example {k} (first token never a target)")
    # greedy: a new row starts only when the next example does not fit
    lengths = [len(i) for i, _ in examples]
    rows, used = 1, 0
    for n in lengths:
        if used + n > length:
            rows, used = rows + 1, 0
        used += n
    expect(R == rows, f"{what}: {R} rows, expected {rows} (fill each row in order before "
                      "starting the next)")
    try:
        fn([([tokenizer.BOS] * 30, [0] * 30)], length)
    except ValueError:
        pass
    else:
        raise Mismatch(f"pack_examples(an example of 30 tokens, length={length}) must raise "
                       "ValueError, not cut the example")
