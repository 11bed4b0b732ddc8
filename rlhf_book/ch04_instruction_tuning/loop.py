"""Chapter 4's loop: supervised fine-tuning of the mini GPT.

* :class:`SFTConfig`, the settings (book §4.3: a learning rate one to two orders of magnitude
  below pretraining's, a short warm-up);
* :func:`sft_step`, the step every SFT loop takes (exercise 4.5): the loss of a batch of packed
  rows and its gradient, which :func:`sft_train_step` hands to the optimizer;
* :func:`make_sft_train` ``-> train(key)``: every step in one ``lax.scan``, pure, so
  ``jax.jit(jax.vmap(train, (0, None)))(keys, params)`` fine-tunes one model per seed;
* :func:`train_sft`, the same steps in jitted chunks with a progress bar and a held-out loss
  per chunk (the driver :func:`rlhf_book.lm.train.run_in_chunks`).

A fine-tuned policy is measured like every other policy of the book, by
:func:`rlhf_book.lm.eval.answer_samples` (answers sampled, or greedy at temperature 0, through
the chat template and scored by the gold reward): book §4.3's held-out evaluation.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from rlhf_book.ch04_instruction_tuning.losses import SFTBatch, sft_loss
from rlhf_book.lm import gpt, train
from rlhf_book.lm.checks import check_positive_ints

__all__ = ["SFTConfig", "sft_step", "sft_loss_fn", "sft_train_step", "make_sft_train",
           "train_sft"]


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """SFT settings. The learning rate is 20x below pretraining's (book §4.3: SFT uses a
    learning rate one to two orders of magnitude smaller; OLMo 2: 3e-4 pretraining vs 1e-5 SFT).

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
        check_positive_ints(self, "steps", "log_every")
        if self.steps % self.log_every:
            raise ValueError("SFTConfig.steps must be a positive multiple of log_every (steps "
                             f"run in compiled chunks of log_every), got steps={self.steps}, "
                             f"log_every={self.log_every}")

    def train_config(self) -> train.TrainConfig:
        return train.TrainConfig(steps=self.steps, batch_size=self.batch_size,
                                 seq_len=self.seq_len, learning_rate=self.learning_rate,
                                 warmup_steps=self.warmup_steps, log_every=self.log_every)


# [guide:sft-train]
def sft_step(params, batch: SFTBatch, config: gpt.GPTConfig):
    """The loss of one batch of SFT rows and its gradient: the step the SFT loop takes
    (book §4.3; App. A.1, eq. 142).

    ``params`` is the mini GPT's parameter tree; ``batch`` an :class:`SFTBatch` of rows
    ``[R, T]``: ``tokens``, ``loss_mask`` (1 on the tokens to predict) and ``segment_ids``
    (1, 2, ... for the examples packed in a row by :func:`pack_examples`, 0 on padding; one
    example per row from :func:`pad_examples`); ``config`` the model's
    :class:`~rlhf_book.lm.gpt.GPTConfig`. Returns ``(loss, grads)``: the SFT loss of exercise
    4.3 (the mean negative log-likelihood over every token the loss mask selects in the whole
    batch, a scalar) of the model's logits, and its gradient with respect to every parameter,
    a tree shaped like ``params``.

    Every packed example is scored as if it were alone: it attends only to its own tokens and
    its positions restart at 0. So the loss of a packed batch equals the loss of the same
    examples padded one per row (the mean runs over tokens, not rows or examples), and changing
    one example's tokens never changes another example's loss.

    How: a function of the parameters alone runs ``gpt.forward(p, batch.tokens, config,
    segment_ids=batch.segment_ids)`` (the segment ids give the block-diagonal causal mask and
    the restarted positions) and :func:`sft_loss` on its logits; ``jax.value_and_grad`` of it,
    at ``params``, gives both outputs.
    """
    # BEGIN SOLUTION
    def packed_loss(p):
        logits = gpt.forward(p, batch.tokens, config, segment_ids=batch.segment_ids)
        return sft_loss(logits, batch.tokens, batch.loss_mask)

    return jax.value_and_grad(packed_loss)(params)
    # END SOLUTION


def sft_loss_fn(model_config: gpt.GPTConfig):
    """``loss_fn(params, batch) -> (loss, {})``: the loss :func:`sft_step` differentiates, on
    the rows of an :class:`SFTBatch` (each packed example attending only to itself), for the
    held-out evaluation."""

    def loss_fn(params, b: SFTBatch):
        logits = gpt.forward(params, b.tokens, model_config, segment_ids=b.segment_ids)
        return sft_loss(logits, b.tokens, b.loss_mask), {}

    return loss_fn


def sft_train_step(model_config: gpt.GPTConfig, sample_batch):
    """``step(state, key) -> (state, metrics)``: draw rows with ``sample_batch(key)``, take
    their loss and gradient from :func:`sft_step`, and let the state's optimizer (AdamW) apply
    the gradient; ``metrics`` holds ``loss`` and ``grad_norm``, as every supervised step of the
    library (:func:`rlhf_book.lm.train.make_supervised_step`)."""

    def step(state, key):
        loss, grads = sft_step(state.params, sample_batch(key), model_config)
        return state.apply_gradients(grads=grads), {"loss": loss,
                                                    "grad_norm": optax.tree.norm(grads)}

    return step


def _rows(model_config: gpt.GPTConfig, batch: SFTBatch) -> SFTBatch:
    rows = jax.tree.map(jnp.asarray, batch)
    if rows.tokens.shape[1] > model_config.max_seq_len:
        raise ValueError(f"batch rows have {rows.tokens.shape[1]} tokens, more than the model's "
                         f"max_seq_len={model_config.max_seq_len}")
    return rows


def make_sft_train(model_config: gpt.GPTConfig, sft_config: SFTConfig, batch: SFTBatch,
                   params):
    """``train(key) -> (state, metrics)``: ``sft_config.steps`` AdamW steps from ``params`` on
    random rows of ``batch`` in one ``lax.scan`` of :func:`sft_train_step` (the pattern of
    :func:`rlhf_book.lm.train.make_train`); ``metrics`` holds ``loss`` and ``grad_norm`` per
    step. Pure, so ``jax.jit(jax.vmap(train))(
    keys)`` fine-tunes one model per seed from the same start."""
    rows = _rows(model_config, batch)
    tc = sft_config.train_config()
    step = sft_train_step(model_config, train.random_rows(rows, tc.batch_size))
    optimizer = train.make_optimizer(tc)

    def run(key):
        state = train.create_train_state(params, optimizer)
        return jax.lax.scan(step, state, jax.random.split(key, tc.steps))

    return run


def train_sft(model_config: gpt.GPTConfig, params, sft_config: SFTConfig, batch: SFTBatch, *,
              eval_batch: SFTBatch | None = None, seed: int = 0, progress: bool = True):
    """Fine-tune ``params`` on the rows of ``batch`` (random rows per step, inside a jitted
    ``lax.scan`` chunk). Returns ``(params, history)`` with ``step``, ``loss`` (every step) and,
    with an ``eval_batch``, ``eval_step`` and ``eval_loss`` (the SFT loss on all its rows)."""
    rows = _rows(model_config, batch)
    loss_fn = sft_loss_fn(model_config)

    evaluate = None
    if eval_batch is not None:
        evals = jax.tree.map(jnp.asarray, eval_batch)
        eval_loss = jax.jit(lambda p: loss_fn(p, evals)[0])
        evaluate = lambda state: {"loss": float(eval_loss(state.params))}  # noqa: E731

    tc = sft_config.train_config()
    state, history = train.run_in_chunks(
        sft_train_step(model_config, train.random_rows(rows, sft_config.batch_size)),
        train.create_train_state(params, train.make_optimizer(tc)),
        steps=tc.steps, chunk_size=tc.log_every, key=jax.random.PRNGKey(seed), desc="sft",
        progress=progress, evaluate=evaluate,
        postfix=lambda h: {"loss": f"{h['loss'][-1]:.3f}"})
    return state.params, history
# [/guide]
