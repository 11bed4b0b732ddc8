"""Byte-level tokenizer, special tokens and the chat template (book ch. 4.1).

The mini GPT reads raw UTF-8 bytes: ids ``0..255`` are the bytes themselves, so there is no
vocabulary to learn and nothing to download. A handful of *special tokens* sit above the
bytes. They are atomic (one id each), so no user text can forge them.

The chat template is ChatML's structure (book §4.1, the ``<|im_start|>role ... <|im_end|>``
example) with the role name folded into one special token, because every byte of the
mini GPT's 128-token context counts::

    <|bos|><|system|>You are terse.<|end|><|user|>What is 2 + 3?<|end|><|assistant|>5<|end|>

``<|end|>`` closes every turn and is the stop token for chat generation (ChatML's
``<|im_end|>``). ``<|endoftext|>`` closes a pretraining document. The assistant mask marks
the assistant's content *and* its closing ``<|end|>``: the model must learn to stop, and the
``<|assistant|>`` header is given by the prompt, not predicted (book §4.2, TRL's
``assistant_only_loss`` makes the same choice).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

N_BYTES = 256

PAD = 256  # fills rows of a batch past their length; never trained on
BOS = 257  # first token of every sequence
EOT = 258  # <|endoftext|>: end of a pretraining document
SYSTEM = 259  # turn headers: one token per role
USER = 260
ASSISTANT = 261
END = 262  # <|end|>: end of a chat turn, the stop token for chat generation

SPECIAL_TOKENS: dict[int, str] = {
    PAD: "<|pad|>",
    BOS: "<|bos|>",
    EOT: "<|endoftext|>",
    SYSTEM: "<|system|>",
    USER: "<|user|>",
    ASSISTANT: "<|assistant|>",
    END: "<|end|>",
}
VOCAB_SIZE = N_BYTES + len(SPECIAL_TOKENS)  # 263
ROLE_TOKENS: dict[str, int] = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}


def encode(text: str) -> list[int]:
    """UTF-8 bytes of ``text`` as token ids in ``0..255`` (no special tokens)."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    return list(text.encode("utf-8"))


def decode(ids: Sequence[int] | np.ndarray, *, skip_special: bool = True) -> str:
    """Ids back to text. Special tokens are dropped, or shown by name with ``skip_special=False``.

    Bytes that do not form valid UTF-8 (a sampled model can emit any byte) become U+FFFD
    instead of raising, so decoding a generation never fails.
    """
    out, run = [], bytearray()
    for i in np.asarray(ids).reshape(-1).tolist():
        if 0 <= i < N_BYTES:
            run.append(i)
            continue
        out.append(run.decode("utf-8", errors="replace"))
        run = bytearray()
        if i not in SPECIAL_TOKENS:
            raise ValueError(f"ids must lie in [0, {VOCAB_SIZE}), got {i}")
        if not skip_special:
            out.append(SPECIAL_TOKENS[i])
    out.append(run.decode("utf-8", errors="replace"))
    return "".join(out)


def encode_document(text: str) -> list[int]:
    """A pretraining document: ``<|bos|> bytes <|endoftext|>``."""
    return [BOS, *encode(text), EOT]


# [guide:check-roles]
def check_roles(messages: Sequence[Mapping[str, str]]) -> None:
    """Raise ``ValueError`` unless ``messages`` are an optional system message followed by
    alternating user / assistant turns that start with the user.

    Book §4.1: the system message, when there is one, comes first. Every position is checked
    (the book's Jinja template checks only the user positions; see the guide's errata).
    """
    if not messages:
        raise ValueError("messages must hold at least one message, got none")
    offset = 1 if messages[0].get("role") == "system" else 0
    for k, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        expected = "system" if k < offset else ("user", "assistant")[(k - offset) % 2]
        if role != expected:
            raise ValueError(f"messages[{k}]['role'] must be {expected!r}, got {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"messages[{k}]['content'] must be a str, got {content!r}")
# [/guide]


# [guide:chat-template]
def render_chat(
    messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = False
) -> tuple[list[int], list[int]]:
    """Render a conversation with the chat template and mark the assistant's tokens.

    Book §4.1 (chat templates). Each message is ``{"role": "system"|"user"|"assistant",
    "content": str}`` and becomes ``<|role|> content <|end|>``; the whole conversation starts
    with ``<|bos|>``. With ``add_generation_prompt`` an ``<|assistant|>`` header is appended,
    so a model continues with the assistant's answer.

    Returns:
        ``(ids, assistant_mask)``: two lists of equal length; the mask is 1 on the content
        of assistant turns and on their closing ``<|end|>`` (the tokens SFT trains on), 0
        elsewhere.
    """
    check_roles(messages)
    ids, mask = [BOS], [0]
    for message in messages:
        role, content = message["role"], message["content"]
        body = encode(content) + [END]
        trained = 1 if role == "assistant" else 0
        ids += [ROLE_TOKENS[role], *body]
        mask += [0] + [trained] * len(body)
    if add_generation_prompt:
        ids.append(ASSISTANT)
        mask.append(0)
    return ids, mask
# [/guide]


def render_prompt(user: str, system: str | None = None) -> list[int]:
    """Token ids of a single-turn prompt, ending in the ``<|assistant|>`` generation header."""
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}
    ]
    return render_chat(messages, add_generation_prompt=True)[0]


def pad_batch(
    sequences: Sequence[Sequence[int]], length: int, *, pad_id: int = PAD
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad variable-length id lists into a ``[N, length]`` int32 batch.

    Returns ``(tokens [N, length], lengths [N])``. A sequence longer than ``length`` raises
    ``ValueError`` rather than being cut silently (a cut answer teaches the model to stop
    mid-word; the seeds' reward-model lesson truncates 6 of its 12 sequences that way).
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    tokens = np.full((len(sequences), length), pad_id, dtype=np.int32)
    lengths = np.zeros(len(sequences), dtype=np.int32)
    for n, seq in enumerate(sequences):
        if len(seq) > length:
            raise ValueError(
                f"sequences[{n}] has {len(seq)} tokens, more than length={length}"
            )
        tokens[n, : len(seq)] = seq
        lengths[n] = len(seq)
    return tokens, lengths
