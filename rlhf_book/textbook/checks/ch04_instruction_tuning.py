"""Grading checks for chapter 4 (instruction tuning).

Oracles: the book's rendered chat-template strings (§4.1) byte for byte; a token-by-
token scan of the rendered conversation for the loss masks; a float64 NumPy loop and optax for
the SFT loss, with the invariance to logits at unselected positions; for packing, the
examples read back out of the packed rows; and, for the packed SFT step, every example run
alone through the model (its loss as a float64 NumPy loop, its gradient as ``jax.grad`` of the
same loss written here), the same examples padded one per row, and the invariance of the loss
to the tokens of an example that trains on nothing.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlhf_book.ch04_instruction_tuning.losses import SFTBatch
from rlhf_book.lm import gpt, tokenizer
from rlhf_book.textbook.checks import (Mismatch, call, expect, expect_close, expect_finite,
                                       expect_shape, grad_of, jit, probe, require)

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


# ----------------------------------------------------------------------------------------------
# 4.5 a packed SFT step: the loss and its gradient through the model

# Six examples of 4-10 tokens, packed three rows of 16 tokens (two examples a row, greedily);
# example 0 trains on nothing (a prompt-only example), so no other example may depend on it.
STEP_LENGTHS = (6, 9, 4, 7, 10, 5)
STEP_ROWS = ((0, 1), (2, 3), (4, 5))
STEP_WIDTH = 16


def _step_examples(rng, lengths=STEP_LENGTHS):
    """``[(ids, mask)]``: ``<|bos|>`` and random bytes; a random loss mask (never on the first
    token), all 0 for example 0 and at least one 1 for every other."""
    examples = []
    for k, n in enumerate(lengths):
        ids = [tokenizer.BOS] + rng.integers(0, 256, n - 1).tolist()
        mask = [0] + rng.integers(0, 2, n - 1).tolist()
        if k == 0:
            mask = [0] * n
        elif not any(mask):
            mask[-1] = 1
        examples.append((ids, mask))
    return examples


def _packed_rows(examples, layout=STEP_ROWS, width=STEP_WIDTH) -> SFTBatch:
    """The packed batch, built here: examples ``layout[r]`` side by side in row ``r`` with
    segment ids 1, 2, ...; padding is ``<|pad|>``, loss mask 0, segment 0. The first token of
    every example is never a target."""
    tokens = np.full((len(layout), width), tokenizer.PAD, np.int32)
    mask = np.zeros((len(layout), width), np.float32)
    seg = np.zeros((len(layout), width), np.int32)
    for r, members in enumerate(layout):
        t = 0
        for s, k in enumerate(members, start=1):
            ids, m = examples[k]
            tokens[r, t:t + len(ids)] = ids
            mask[r, t + 1:t + len(ids)] = m[1:]
            seg[r, t:t + len(ids)] = s
            t += len(ids)
    return SFTBatch(jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(seg))


_forward = jax.jit(gpt.forward, static_argnums=2)


def _one_per_row(examples):
    """The examples without packing: ``tokens [K, L]``, one example per row, right-padded
    with ``<|pad|>`` (under causal attention an example's tokens never see the padding after
    them, so their logits are those of the example alone), and ``weights [K, L - 1]``, the
    loss mask of each target ``tokens[:, 1:]``."""
    width = max(len(ids) for ids, _ in examples)
    tokens = np.full((len(examples), width), tokenizer.PAD, np.int32)
    weights = np.zeros((len(examples), width - 1), np.float32)
    for r, (ids, m) in enumerate(examples):
        tokens[r, :len(ids)] = ids
        weights[r, :len(ids) - 1] = m[1:]
    return tokens, weights


def _alone_nll(params, config, examples):
    """Per example, ``-log p(token t+1)`` at each of its positions, in float64, each example
    run alone (:func:`_one_per_row`)."""
    tokens, _ = _one_per_row(examples)
    logits = np.asarray(_forward(params, jnp.asarray(tokens), config))
    return [_nll64(logits[r, :len(ids) - 1], np.asarray(ids[1:]))
            for r, (ids, _) in enumerate(examples)]


def _alone_loss(params, config, examples) -> float:
    """The token-weighted SFT loss of the examples, each run alone: the oracle of 4.5."""
    nll = _alone_nll(params, config, examples)
    total = sum(float(np.dot(n, np.asarray(m[1:], np.float64))) for n, (_, m) in zip(nll, examples))
    return total / sum(sum(m[1:]) for _, m in examples)


def _alone_grads(params, config, examples):
    """``jax.grad`` of the same loss written in JAX: the examples one per row, right-padded,
    without segment ids; the selected tokens' ``-log softmax`` summed and divided by the
    number of selected tokens."""
    tokens, weights = _one_per_row(examples)
    return _independent_grad(params, jnp.asarray(tokens), jnp.asarray(weights), config)


@functools.partial(jax.jit, static_argnums=3)
def _independent_grad(params, tokens, weights, config):
    def loss(p):
        logp = jax.nn.log_softmax(gpt.forward(p, tokens, config)[:, :-1], axis=-1)
        picked = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
        return -jnp.sum(picked * weights) / jnp.sum(weights)

    return jax.grad(loss)(params)


def param_leaves(tree) -> dict:
    """``{"['blocks']['attn']['wq']": array}`` for every leaf of a parameter tree."""
    return {jax.tree_util.keystr(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def expect_tree_close(got, expected, what: str, *, atol: float, rtol: float, hint=""):
    """One sub-check: the tree ``got`` has the leaves of ``expected`` (a dict of dicts of
    arrays), each with its shape and values within ``atol + rtol * |expected|``; the message
    names how many leaves differ and the first, with ``hint`` (a string, or a callable that
    returns one, called only on failure)."""
    want = param_leaves(expected)
    try:
        have = param_leaves(got)
    except Exception as err:  # a student's function may return anything at all
        raise Mismatch(f"{what} is not a tree of arrays like params "
                       f"({type(err).__name__})") from None
    missing = sorted(set(want) - set(have))
    require(not missing, f"{what} lacks the parameters {missing[:3]} (a tree shaped like params)")
    bad = []
    for key, e in want.items():
        a = have[key]
        require(a.shape == e.shape, f"{what}{key} has shape {a.shape}, expected {e.shape}")
        wrong = ~(np.abs(a.astype(np.float64) - e) <= atol + rtol * np.abs(e))
        if wrong.any():
            index = tuple(int(i) for i in np.argwhere(wrong)[0])
            bad.append(f"{key}{list(index)}: got {a[index]:.6g}, expected {e[index]:.6g}")

    def message():
        note = hint() if callable(hint) else hint
        return (f"{what}: {len(bad)} of {len(want)} parameter arrays differ, the first "
                f"{bad[0]}{note}")

    expect(not bad, message)


def _step_diagnosis(loss, params, config, batch, examples) -> str:
    """A hint naming the common bug that ``loss`` reproduces, or '' (each alternative computed
    here in float64 from its own description)."""
    tokens, mask = np.asarray(batch.tokens), np.asarray(batch.loss_mask, np.float64)
    value = float(np.asarray(loss, np.float64))

    def near(candidate):
        return abs(value - float(candidate)) <= 1e-4 * max(1.0, abs(float(candidate)))

    # the packed rows run as plain sequences: every example sees the ones before it in its row
    # and its positions go on counting from theirs
    mixed = np.asarray(_forward(params, batch.tokens, config))
    nll_mixed = _nll64(mixed[:, :-1], tokens[:, 1:])
    if near((nll_mixed * mask[:, 1:]).sum() / mask[:, 1:].sum()):
        return (" (looks like the packed examples see each other: pass the batch's segment_ids "
                "to gpt.forward, so that each example attends only to itself and its positions "
                "restart at 0)")
    nll = [n * np.asarray(m[1:], np.float64) for n, (_, m) in zip(_alone_nll(params, config,
                                                                              examples), examples)]
    counts = [sum(m[1:]) for _, m in examples]
    per_example = [n.sum() / c for n, c in zip(nll, counts) if c]
    rows = [[k for k in members if counts[k]] for members in STEP_ROWS]
    per_row = [sum(nll[k].sum() for k in r) / sum(counts[k] for k in r) for r in rows if r]
    for candidate, what in ((np.mean(per_example), "example"), (np.mean(per_row), "row")):
        if near(candidate):
            return (f" (looks like a mean per {what} first: the SFT loss is one mean over every "
                    "selected token of the batch, so a long answer weighs more than a short one)")
    logits = np.asarray(gpt.forward(params, batch.tokens, config, segment_ids=batch.segment_ids))
    return _sft_diagnosis(loss, logits, tokens, mask)


@probe
def jitted_sft_step(fn, params, tokens, loss_mask, segment_ids, config):
    """``jax.jit(fn, static_argnums=2)(params, SFTBatch(tokens, loss_mask, segment_ids),
    config)``: the step compiled, as the library's loop runs it (the batch is rebuilt here: a
    batch sent between processes arrives as a record, which cannot be an argument of jit)."""
    return jax.jit(fn, static_argnums=2)(params, SFTBatch(tokens, loss_mask, segment_ids), config)


def _run_step(fn, params, batch, config):
    return call(fn, jitted_sft_step, params, batch.tokens, batch.loss_mask, batch.segment_ids,
                config)


def sft_step(fn):
    config = gpt.get_config("tiny")
    params = gpt.init_params(jax.random.PRNGKey(0), config)
    rng = np.random.default_rng(45)
    examples = _step_examples(rng)
    packed = _packed_rows(examples)
    what = (f"jax.jit(sft_step)(tiny GPT params, {len(examples)} examples packed in "
            f"{len(STEP_ROWS)} rows of {STEP_WIDTH}, config)")
    out = _run_step(fn, params, packed, config)
    require(isinstance(out, tuple) and len(out) == 2,
            f"{what} must return a pair (loss, grads), got {type(out).__name__}")
    loss, grads = out
    loss = expect_finite(expect_shape(loss, (), what + " loss (a scalar)"), what + " loss")
    expected = _alone_loss(params, config, examples)
    hint = "" if abs(float(loss) - expected) <= 1e-5 else _step_diagnosis(
        loss, params, config, packed, examples)
    expect_close(loss, expected, what + " loss (the SFT loss of the same examples padded one "
                 "per row, each seen alone)" + hint, atol=1e-5)

    expected_grads = _alone_grads(params, config, examples)

    def grad_hint():
        got, want = param_leaves(grads), param_leaves(expected_grads)
        ratio = [float(np.vdot(got[k], want[k]) / max(np.vdot(want[k], want[k]), 1e-30))
                 for k in want]
        n = sum(sum(m[1:]) for _, m in examples)
        if np.allclose(ratio, n, rtol=1e-2):
            return (f" (looks like the gradient of the sum over the {n} selected tokens, not of "
                    "the mean loss)")
        if np.allclose(ratio, -1.0, rtol=1e-2):
            return " (looks like the gradient of minus the loss: differentiate the loss you return)"
        return ""

    expect_tree_close(grads, expected_grads, what + " grads (jax.grad of the loss of the examples "
                      "padded one per row)", atol=1e-6, rtol=1e-3, hint=grad_hint)

    # example 0 trains on nothing: changing its tokens must leave the loss unchanged, since
    # example 1, packed after it in row 0, may not see it
    changed = list(examples)
    changed[0] = ([tokenizer.BOS] + rng.integers(0, 256, STEP_LENGTHS[0] - 1).tolist(),
                  examples[0][1])
    loss_changed, _ = _run_step(fn, params, _packed_rows(changed), config)
    expect_close(loss_changed, loss, "sft_step after changing the tokens of example 0, which "
                 "trains on nothing (example 1, after it in row 0, must not see it: the loss may "
                 "not change)", atol=1e-6)
