"""Chapter 4's math: chat templates, loss masks, the SFT loss and sequence packing.

The book's chapter 4 in code, in its order:

* §4.1 chat templates: :func:`apply_chat_template` renders the book's ChatML, Zephyr and Tülu
  examples as strings, byte for byte, with a role check on every position
  (:func:`check_roles`). The model itself uses the token-level template of
  :mod:`rlhf_book.lm.tokenizer` (one special token per role).
* §4.3 which tokens are trained: :func:`loss_mask_for` (every assistant turn, or the last one
  only) and :func:`unroll_conversation` (one example per assistant turn);
* the SFT loss, :func:`sft_loss` (book App. A.1, eq. 142 restricted to the loss mask);
* sequence packing, :func:`pack_examples`: several conversations per row, each attending only to
  itself (``segment_ids`` into :func:`rlhf_book.lm.gpt.forward`).

Shapes: ``N`` sequences, ``T`` tokens, ``V`` vocabulary; masks are 1 on tokens that count.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import jax
import numpy as np

from rlhf_book.lm import tokenizer
# The role rule of book §4.1 lives with the token-level chat template, which enforces it too.
from rlhf_book.lm.tokenizer import check_roles
from rlhf_book.lm.checks import as_float_array, as_like, check_choice
from rlhf_book.lm.ops import log_probs_from_logits, masked_mean

__all__ = ["Message", "PIRATE_SYSTEM", "HELICOPTER_QUESTION", "BOOK_CONVERSATION", "check_roles",
           "CHAT_STYLES", "apply_chat_template", "loss_mask_for", "unroll_conversation",
           "sft_loss", "SFTBatch", "pad_examples", "pack_examples", "sft_examples"]

Message = Mapping[str, str]

# ----------------------------------------------------------------------------------------------
# §4.1 Chat templates (strings, as the book prints them)

# The book's running example (§4.1): a pirate system prompt and a silly question.
PIRATE_SYSTEM = "You are a friendly chatbot who always responds in the style of a pirate"
HELICOPTER_QUESTION = "How many helicopters can a human eat in one sitting?"
BOOK_CONVERSATION: tuple[dict[str, str], ...] = (
    {"role": "system", "content": PIRATE_SYSTEM},
    {"role": "user", "content": HELICOPTER_QUESTION},
    {"role": "assistant", "content": "Oh just 6."},
    {"role": "user", "content": "Are you sure about that?"},
)


# [guide:chat-templates]
# Per style: how a turn opens, how it closes, the generation prompt. ChatML puts the role after
# <|im_start|> and ends turns with <|im_end|>; Zephyr uses role tags and </s>; Tülu uses role
# tags and ends only the assistant's turn, with <|endoftext|> (book §4.1's three examples).
CHAT_STYLES = {
    "chatml": {"open": "<|im_start|>{role}\n", "close": "<|im_end|>\n",
               "generation": "<|im_start|>assistant\n"},
    "zephyr": {"open": "<|{role}|>\n", "close": "</s>\n", "generation": "<|assistant|>\n"},
    "tulu": {"open": "<|{role}|>\n", "close": "\n", "close_assistant": "<|endoftext|>",
             "generation": "<|assistant|>\n"},
}


def apply_chat_template(messages: Sequence[Message], style: str = "chatml", *,
                        add_generation_prompt: bool = False, bos_token: str = "") -> str:
    """Render ``messages`` as a string in one of the book's chat formats (book §4.1).

    ``messages`` is a list ``[M]`` of ``{"role", "content"}`` dicts; returns one ``str``. Each
    turn is the style's opening (``fmt["open"]`` with the role filled in), the content, and the
    style's closing (``fmt["close_<role>"]`` where the role has its own, else ``fmt["close"]``),
    with ``fmt = CHAT_STYLES[style]``; ``add_generation_prompt`` appends ``fmt["generation"]``,
    the header that opens the assistant's reply. ``bos_token`` is emitted first, as the book's
    Jinja template does; its printed output shows no BOS, which matches only ``bos_token=""``
    (the default here; an erratum in the guide). Contents are stripped, as the template's
    ``| trim`` does.

    How: one loop over the messages concatenating ``open.format(role=role) +
    content.strip() + close``, after ``bos_token`` and before the generation prompt.
    """
    check_choice(style, "style", CHAT_STYLES)
    check_roles(messages)
    fmt = CHAT_STYLES[style]
    # BEGIN SOLUTION
    text = bos_token
    for message in messages:
        role = message["role"]
        close = fmt.get(f"close_{role}", fmt["close"])
        text += fmt["open"].format(role=role) + message["content"].strip() + close
    if add_generation_prompt:
        text += fmt["generation"]
    return text
    # END SOLUTION
# [/guide]


# ----------------------------------------------------------------------------------------------
# §4.3 Which tokens are trained


# [guide:loss-mask]
def loss_mask_for(messages: Sequence[Message],
                  mode: str = "all_assistant") -> tuple[list[int], list[int]]:
    """Token ids of a conversation and the loss mask SFT trains with (book §4.3).

    Returns ``(ids, mask)``, two lists ``[L]`` of ints: ``ids`` the conversation as the
    project's chat tokenizer renders it (:func:`rlhf_book.lm.tokenizer.render_chat`), ``mask``
    1 on the tokens to train on. ``mode="all_assistant"`` trains every assistant turn (the
    book's option 2, "mask the user turns"); ``mode="last_turn"`` only the final one (option 1:
    earlier assistant turns are context). Either way the mask covers the assistant's content
    and its closing ``<|end|>``, so the model learns to stop, and never the ``<|assistant|>``
    header, which the prompt supplies at generation time.

    How: ``tokenizer.render_chat`` already returns the ids with the all-assistant mask; for
    ``"last_turn"`` zero the mask up to and including the last ``<|assistant|>`` header.
    """
    check_choice(mode, "mode", ("all_assistant", "last_turn"))
    check_roles(messages)
    # BEGIN SOLUTION
    ids, mask = tokenizer.render_chat(messages)
    if mode == "last_turn":
        last_header = max(k for k, i in enumerate(ids) if i == tokenizer.ASSISTANT)
        mask = [m if k > last_header else 0 for k, m in enumerate(mask)]
    return ids, mask
    # END SOLUTION


def unroll_conversation(messages: Sequence[Message]) -> list[tuple[list[int], list[int]]]:
    """One training example per assistant turn (book §4.3): example ``k`` holds the
    conversation up to assistant turn ``k`` and trains on that turn only."""
    check_roles(messages)
    ends = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    return [loss_mask_for(messages[:k + 1], "last_turn") for k in ends]
# [/guide]


# ----------------------------------------------------------------------------------------------
# The SFT loss


# [guide:sft-loss]
def sft_loss(logits: jax.Array, tokens: jax.Array, loss_mask: jax.Array) -> jax.Array:
    """Mean negative log-likelihood of the tokens the loss mask selects (book §4.3; App. A.1,
    eq. 142 restricted to the mask).

    Shapes: ``logits [N, T, V]``, ``tokens [N, T]``, ``loss_mask [N, T]`` (1 on the tokens to
    predict, aligned with ``tokens``). ``logits[:, t]`` predicts ``tokens[:, t + 1]``, so
    ``loss_mask[:, 0]`` is never used. The mean runs over every selected token of the batch
    (not per sequence first; chapter 6 compares the choices) and is 0 when nothing is selected.
    Returns a scalar.

    How: the log-probabilities of ``tokens[:, 1:]`` under ``logits[:, :-1]``
    (:func:`~rlhf_book.lm.ops.log_probs_from_logits`), then minus their ``masked_mean`` under
    ``loss_mask[:, 1:]``.
    """
    logits = as_float_array(logits, "logits", "[N, T, V]", values="logits")
    loss_mask = as_like(loss_mask, "loss_mask", logits[..., 0], "tokens [N, T]")
    # BEGIN SOLUTION
    logp = log_probs_from_logits(logits[:, :-1], tokens[:, 1:])  # [N, T-1]: scores token t+1
    return -masked_mean(logp, loss_mask[:, 1:])
    # END SOLUTION
# [/guide]


# ----------------------------------------------------------------------------------------------
# Batches: padding or packing


class SFTBatch(NamedTuple):
    """Rows of training examples, all ``[R, T]``. ``segment_ids`` numbers the examples packed
    in a row (1, 2, ...; 0 on padding); padded batches have one example per row."""

    tokens: np.ndarray
    loss_mask: np.ndarray
    segment_ids: np.ndarray


def pad_examples(examples: Sequence[tuple[Sequence[int], Sequence[int]]], length: int) -> SFTBatch:
    """One example per row, right-padded with ``<|pad|>`` (loss mask 0 on padding)."""
    tokens, lengths = tokenizer.pad_batch([ids for ids, _ in examples], length)
    mask = np.zeros_like(tokens, dtype=np.float32)
    for r, (_, m) in enumerate(examples):
        mask[r, :len(m)] = m
    segments = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
    return SFTBatch(tokens, mask, segments)


# [guide:packing]
def pack_examples(examples: Sequence[tuple[Sequence[int], Sequence[int]]], length: int) -> SFTBatch:
    """Pack examples into rows of ``length`` tokens, in order, starting a new row when the next
    example does not fit (book §4.3: packing fills the context with useful tokens).

    ``examples`` is a list of ``(ids, mask)`` pairs of equal lengths ``[L_k]``; one longer than
    ``length`` raises ``ValueError`` (it is never cut). Returns ``SFTBatch(tokens, loss_mask,
    segment_ids)``, each ``[R, length]``: every example whole and contiguous, in order, with
    its own segment id (1, 2, ... within a row); the rest of a row is padding, ``<|pad|>`` with
    loss mask 0 and segment id 0. With ``gpt.forward(..., segment_ids=...)`` an example attends
    only to itself and its positions restart at 0: its logits, and so the loss, are those of the
    example alone. The first token of an example is never a target (its mask is forced to 0),
    so no example is trained to predict the start of the next.

    How: greedy, in Python: keep a list of rows, append each example to the last row or to a
    new one, then copy the rows into NumPy arrays filled with ``tokenizer.PAD``, 0 and 0.
    """
    # BEGIN SOLUTION
    rows: list[tuple[list[int], list[float], list[int]]] = []
    for k, (ids, mask) in enumerate(examples):
        if len(ids) > length:
            raise ValueError(f"examples[{k}] has {len(ids)} tokens, more than length={length}")
        if not rows or len(rows[-1][0]) + len(ids) > length:
            rows.append(([], [], []))
        row_ids, row_mask, row_seg = rows[-1]
        row_seg += [max(row_seg, default=0) + 1] * len(ids)
        row_ids += list(ids)
        row_mask += [0.0] + [float(m) for m in mask[1:]]
    tokens = np.full((len(rows), length), tokenizer.PAD, np.int32)
    loss_mask = np.zeros((len(rows), length), np.float32)
    segment_ids = np.zeros((len(rows), length), np.int32)
    for r, (ids, mask, seg) in enumerate(rows):
        tokens[r, :len(ids)], loss_mask[r, :len(ids)], segment_ids[r, :len(ids)] = ids, mask, seg
    return SFTBatch(tokens, loss_mask, segment_ids)
    # END SOLUTION
# [/guide]


def sft_examples(conversations: Sequence[Sequence[Message]], *, mask_prompt: bool = True):
    """Token ids and loss masks of conversations. ``mask_prompt=False`` trains on every token
    (prompt included), the ablation the chapter's notebook plots against prompt masking."""
    examples = []
    for messages in conversations:
        ids, mask = loss_mask_for(messages)
        examples.append((ids, mask if mask_prompt else [0] + [1] * (len(ids) - 1)))
    return examples
