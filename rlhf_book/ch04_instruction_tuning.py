"""Chapter 4: instruction fine-tuning (SFT).

The book's chapter 4 in code, in its order:

* §4.1 chat templates: :func:`apply_chat_template` renders the book's ChatML, Zephyr and Tülu
  examples as strings, byte for byte, with the role check the book's Jinja template meant to
  make (:func:`check_roles`). The model itself uses the token-level template of
  :mod:`rlhf_book.lm.tokenizer` (one special token per role).
* §4.3 which tokens are trained: :func:`loss_mask_for` (every assistant turn, or the last one
  only) and :func:`unroll_conversation` (one example per assistant turn);
* the SFT loss, :func:`sft_loss` (book App. A.1, eq. 142 restricted to the loss mask);
* sequence packing, :func:`pack_examples`: several conversations per row, each attending only to
  itself (``segment_ids`` into :func:`rlhf_book.lm.gpt.forward`);
* the training loop, :func:`train_sft`, and the evaluation the pipeline reports,
  :func:`evaluate_answers`: gold reward, answer length and how often the model stops.

Shapes: ``N`` sequences, ``T`` tokens, ``V`` vocabulary; masks are 1 on tokens that count.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_book import data
from rlhf_book.data.world import Question
from rlhf_book.lm import gpt, sampling, tokenizer, train
from rlhf_book.lm.ops import log_probs_from_logits, masked_mean

Message = Mapping[str, str]

# ----------------------------------------------------------------------------------------------
# §4.1 Chat templates (strings, as the book prints them)

# The book's running example (§4.1, L725-L749): a pirate system prompt and a silly question.
PIRATE_SYSTEM = "You are a friendly chatbot who always responds in the style of a pirate"
HELICOPTER_QUESTION = "How many helicopters can a human eat in one sitting?"
BOOK_CONVERSATION: tuple[dict[str, str], ...] = (
    {"role": "system", "content": PIRATE_SYSTEM},
    {"role": "user", "content": HELICOPTER_QUESTION},
    {"role": "assistant", "content": "Oh just 6."},
    {"role": "user", "content": "Are you sure about that?"},
)


# [guide:check-roles]
def check_roles(messages: Sequence[Message]) -> None:
    """Raise ``ValueError`` unless ``messages`` are an optional system message followed by
    alternating user / assistant turns that start with the user.

    Book §4.1 (L675-L713): the book's Jinja ChatML template only checks that *user* messages sit
    at user positions, so ``[user, system]`` or ``[system, user, system]`` slip through although
    the text (L719) says the system message comes first only. We check every position.
    """
    if not messages:
        raise ValueError("messages must hold at least one message, got none")
    offset = 1 if messages[0].get("role") == "system" else 0
    for k, message in enumerate(messages):
        role = message.get("role")
        expected = "system" if k < offset else ("user" if (k - offset) % 2 == 0 else "assistant")
        if role != expected:
            raise ValueError(f"messages[{k}]['role'] must be {expected!r} (an optional system "
                             f"message, then user/assistant alternating), got {role!r}")
        if not isinstance(message.get("content"), str):
            raise ValueError(f"messages[{k}]['content'] must be a str, got "
                             f"{type(message.get('content')).__name__}")
# [/guide]


# [guide:chat-templates]
# Per style: how a turn opens, how it closes, the generation prompt. ChatML puts the role after
# <|im_start|> and ends turns with <|im_end|> (book L725-L749); Zephyr uses role tags and </s>
# (L757-L763); Tülu uses role tags and ends only the assistant's turn, with <|endoftext|> (L767-L776).
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

    ``bos_token`` is emitted first, as the book's Jinja template does; its printed output shows
    no BOS, which matches only ``bos_token=""`` (the default here; an erratum in the guide).
    Contents are stripped, as the template's ``| trim`` does.
    """
    if style not in CHAT_STYLES:
        raise ValueError(f"style must be one of {sorted(CHAT_STYLES)}, got {style!r}")
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
def loss_mask_for(messages: Sequence[Message], mode: str = "all_assistant") -> tuple[list[int], list[int]]:
    """Token ids of a conversation and the loss mask SFT trains with (book §4.3, L798-L800).

    ``mode="all_assistant"`` trains every assistant turn (the book's option 2, "mask the user
    turns"); ``mode="last_turn"`` only the final one (option 1: earlier assistant turns are
    context). Either way the mask covers the assistant's content and its closing ``<|end|>``,
    so the model learns to stop, and never the ``<|assistant|>`` header, which the prompt
    supplies at generation time.
    """
    if mode not in ("all_assistant", "last_turn"):
        raise ValueError(f"mode must be 'all_assistant' or 'last_turn', got {mode!r}")
    check_roles(messages)
    # BEGIN SOLUTION
    ids, mask = tokenizer.render_chat(messages)
    if mode == "last_turn":
        last_header = max(k for k, i in enumerate(ids) if i == tokenizer.ASSISTANT)
        mask = [m if k > last_header else 0 for k, m in enumerate(mask)]
    return ids, mask
    # END SOLUTION


def unroll_conversation(messages: Sequence[Message]) -> list[tuple[list[int], list[int]]]:
    """One training example per assistant turn (book §4.3, L800): example ``k`` holds the
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
    """
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
    example does not fit (book §4.3, L797-L802: packing fills the context with useful tokens).

    Each example keeps its own segment id, so with ``gpt.forward(..., segment_ids=...)`` it
    attends only to itself and its positions restart at 0: its logits, and so the loss, are
    those of the example alone. The first token of an example is never a target (its mask is
    forced to 0), so no example is trained to predict the start of the next.
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


# ----------------------------------------------------------------------------------------------
# Training


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """SFT settings. The learning rate is 20x below pretraining's (book §4.3, L802: SFT uses
    a learning rate 1-2 orders of magnitude smaller; OLMo 2: 3e-4 pretraining vs 1e-5 SFT).

    Measured on the pipeline's pretrained mini GPT, 64 held-out questions: 150 steps at 1e-4
    give gold reward -0.75 (accuracy 11%); 100 steps at 3e-4, -0.90 (5%); 100 at 1e-3, -0.94
    (2%). Longer or hotter SFT memorises the demonstrations' facts and states them for
    held-out questions; every setting learns to answer briefly and stop.
    """

    steps: int = 150
    batch_size: int = 16
    seq_len: int = 128
    learning_rate: float = 1e-4
    warmup_steps: int = 20
    packing: bool = True
    mask_prompt: bool = True
    n_demonstrations: int = 2000
    log_every: int = 25

    def __post_init__(self):
        if not (isinstance(self.steps, int) and isinstance(self.log_every, int)
                and self.log_every > 0 and self.steps > 0 and self.steps % self.log_every == 0):
            raise ValueError("SFTConfig.steps must be a positive multiple of log_every (steps "
                             f"run in compiled chunks of log_every), got steps={self.steps}, "
                             f"log_every={self.log_every}")

    def train_config(self) -> train.TrainConfig:
        return train.TrainConfig(steps=self.steps, batch_size=self.batch_size,
                                 seq_len=self.seq_len, learning_rate=self.learning_rate,
                                 warmup_steps=self.warmup_steps, log_every=self.log_every)


# [guide:sft-train]
def train_sft(model_config: gpt.GPTConfig, params, sft_config: SFTConfig, batch: SFTBatch, *,
              eval_batch: SFTBatch | None = None, seed: int = 0, progress: bool = True):
    """Fine-tune ``params`` on the rows of ``batch`` (random rows per step, inside a jitted
    ``lax.scan`` chunk). Returns ``(params, history)`` with ``step``, ``loss`` (every step) and,
    with an ``eval_batch``, ``eval_step`` and ``eval_loss`` (the SFT loss on all its rows)."""
    rows = jax.tree.map(jnp.asarray, batch)
    if rows.tokens.shape[1] > model_config.max_seq_len:
        raise ValueError(f"batch rows have {rows.tokens.shape[1]} tokens, more than the model's "
                         f"max_seq_len={model_config.max_seq_len}")

    def loss_fn(params, b: SFTBatch):
        logits = gpt.forward(params, b.tokens, model_config, segment_ids=b.segment_ids)
        return sft_loss(logits, b.tokens, b.loss_mask), {}

    def sample_batch(key):
        idx = jax.random.randint(key, (sft_config.batch_size,), 0, rows.tokens.shape[0])
        return jax.tree.map(lambda x: x[idx], rows)

    evaluate = None
    if eval_batch is not None:
        evals = jax.tree.map(jnp.asarray, eval_batch)
        eval_loss = jax.jit(lambda p: loss_fn(p, evals)[0])
        evaluate = lambda state: {"loss": float(eval_loss(state.params))}  # noqa: E731

    tc = sft_config.train_config()
    state, history = train.run_in_chunks(
        train.make_supervised_step(loss_fn, sample_batch),
        train.create_train_state(params, train.make_optimizer(tc)),
        steps=tc.steps, chunk_size=tc.log_every, key=jax.random.PRNGKey(seed), desc="sft",
        progress=progress, evaluate=evaluate,
        postfix=lambda h: {"loss": f"{h['loss'][-1]:.3f}"})
    return state.params, history
# [/guide]


# ----------------------------------------------------------------------------------------------
# Evaluation: answers to held-out questions, scored by the gold reward


def generate_answers(params, model_config: gpt.GPTConfig, questions: Sequence[Question], *,
                     seed: int = 0, temperature: float = 0.0, max_new_tokens: int = 48):
    """Answer each question through the chat template; returns ``(answers, stopped)``: the
    decoded completions and whether each ended with ``<|end|>``."""
    prompts = [tokenizer.render_prompt(q.prompt) for q in questions]
    width = max(map(len, prompts))
    max_new_tokens = min(max_new_tokens, model_config.max_seq_len - width)
    tokens, lengths = tokenizer.pad_batch(prompts, width)
    gen = sampling.generate(params, tokens, jax.random.PRNGKey(seed), model_config,
                            prompt_lengths=lengths, max_new_tokens=max_new_tokens,
                            temperature=temperature, eos_id=tokenizer.END)
    stopped = np.any((np.asarray(gen.tokens) == tokenizer.END) & np.asarray(gen.mask, bool), axis=1)
    return sampling.completions(gen), stopped.tolist()


def evaluate_answers(questions: Sequence[Question], answers: Sequence[str],
                     stopped: Sequence[bool] | None = None) -> dict[str, Any]:
    """Mean gold reward, accuracy (the gold answer stated and correct), mean answer length in
    bytes and the fraction of answers that stopped by themselves."""
    gold = data.gold_reward_batch(questions, answers)
    stated = [data.stated_answer(q, a) for q, a in zip(questions, answers)]
    correct = [s is not None and s.lower() == q.answer.lower() for q, s in zip(questions, stated)]
    return {
        "gold_reward": float(np.mean(gold)),
        "accuracy": float(np.mean(correct)),
        "answer_bytes": float(np.mean([len(a.encode()) for a in answers])),
        "stopped": float(np.mean(stopped)) if stopped is not None else float("nan"),
        "n": len(answers),
    }
