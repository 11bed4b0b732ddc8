"""Chapter 5's loop: preference pairs as token batches, training the reward model, evaluating it.

* :class:`PairBatch`, :func:`encode_pairs`: the simulated annotators' pairs (chapter 11 of the
  book) in the chat template, checked at this boundary (non-empty, within the width, margins
  of shape ``[N]``);
* :func:`reward_model_step` (exercise 5.7), the step every reward-model loop takes: the
  Bradley-Terry loss of a batch of pairs and its gradient, which :func:`rm_train_step` hands
  to the optimizer;
* :class:`RMConfig`; :func:`make_rm_train` ``-> train(key)``: every step in one
  ``lax.scan``, pure, so ``jax.jit(jax.vmap(train, (0, None)))(keys, params)`` trains one reward
  model per seed; :func:`train_reward_model`, the same steps in jitted chunks with a progress
  bar and a held-out evaluation per chunk (the driver :func:`rlhf_book.lm.train.run_in_chunks`);
* :func:`score_pairs`, :func:`evaluate_reward_model`, :func:`gold_pair_accuracy` and the
  calibration numbers :func:`reward_margins`;
* the lecture notes' reward-model lesson on its own data: :data:`LESSON_CONFIG`,
  :func:`lesson_tokenize`, :func:`lesson_batch`.

The book trains reward models for about one epoch (§5.3); the loss is the Bradley-Terry loss
of :mod:`.losses` on the scores of the whole network (gradients reach every layer).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlhf_book import data
from rlhf_book.ch05_reward_models.losses import (POOLINGS, bradley_terry_loss,
                                                 preference_accuracy, reward_scores)
from rlhf_book.lm import gpt, tokenizer, train
from rlhf_book.lm.checks import check_choice, check_positive_ints

__all__ = ["PairBatch", "encode_conversation", "encode_pairs", "RMConfig", "pair_rewards",
           "reward_model_loss", "reward_model_step", "rm_train_step", "make_rm_train",
           "train_reward_model", "score_pairs",
           "evaluate_reward_model", "gold_pair_accuracy", "LESSON_CONFIG", "LESSON_SEPARATOR",
           "lesson_tokenize", "lesson_batch", "reward_margins"]


class PairBatch(NamedTuple):
    """Tokenised preference pairs, all arrays with leading axis ``N``: chosen and rejected
    sequences (prompt + response in the chat template) ``[N, T]`` with their masks (1 on real
    tokens), and ``margin [N]`` (0 unless the data carries rating gaps)."""

    chosen: np.ndarray
    chosen_mask: np.ndarray
    rejected: np.ndarray
    rejected_mask: np.ndarray
    margin: np.ndarray


def encode_conversation(prompt: str, response: str) -> list[int]:
    """``<|bos|><|user|>prompt<|end|><|assistant|>response<|end|>``: what a reward model reads."""
    return tokenizer.render_chat([{"role": "user", "content": prompt},
                                  {"role": "assistant", "content": response}])[0]


def encode_pairs(pairs: Sequence[data.PreferencePair], length: int,
                 margins: Sequence[float] | None = None) -> PairBatch:
    """Tokenise preference pairs into a :class:`PairBatch` of width ``length`` (right padding;
    a pair longer than ``length`` raises ``ValueError``)."""
    if not pairs:
        raise ValueError("pairs must be a non-empty sequence of PreferencePair, got an empty one")
    chosen, c_len = tokenizer.pad_batch([encode_conversation(p.prompt, p.chosen) for p in pairs],
                                        length)
    rejected, r_len = tokenizer.pad_batch(
        [encode_conversation(p.prompt, p.rejected) for p in pairs], length)
    t = np.arange(length)
    margin = np.zeros(len(pairs), np.float32) if margins is None else np.asarray(margins,
                                                                                  np.float32)
    if margin.shape != (len(pairs),):
        raise ValueError(f"margins must have shape ({len(pairs)},), got {margin.shape}")
    return PairBatch(chosen, (t < c_len[:, None]).astype(np.int32), rejected,
                     (t < r_len[:, None]).astype(np.int32), margin)


@dataclasses.dataclass(frozen=True)
class RMConfig:
    """Reward-model training: ``steps`` optimizer steps of ``batch_size`` pairs (sampled with
    replacement). The book trains reward models for about one epoch (§5.3) to avoid over-fitting;
    the pipeline's 100 steps of 32 pairs see its 3,200 pairs about once (measured on the mini
    GPT: held-out accuracy 0.72 after 50 steps already, no better after 300 steps at 1e-4)."""

    steps: int = 100
    batch_size: int = 32
    seq_len: int = 128
    learning_rate: float = 3e-4
    warmup_steps: int = 30
    weight_decay: float = 0.0
    pooling: str = "last"
    use_margin: bool = False
    n_pairs: int = 3200
    log_every: int = 50

    def __post_init__(self):
        check_choice(self.pooling, "RMConfig.pooling", POOLINGS)
        check_positive_ints(self, "steps", "batch_size", "seq_len", "log_every", "n_pairs")
        if self.steps % self.log_every:
            raise ValueError(f"RMConfig.steps must be a multiple of log_every={self.log_every}, "
                             f"got {self.steps}")

    def train_config(self) -> train.TrainConfig:
        return train.TrainConfig(steps=self.steps, batch_size=self.batch_size,
                                 seq_len=self.seq_len, learning_rate=self.learning_rate,
                                 warmup_steps=self.warmup_steps, weight_decay=self.weight_decay,
                                 log_every=self.log_every)


def pair_rewards(params, batch: PairBatch, config: gpt.GPTConfig, pooling: str = "last"):
    """``(r_chosen [N], r_rejected [N])``: both halves of every pair scored in one forward pass."""
    n = batch.chosen.shape[0]
    tokens = jnp.concatenate([batch.chosen, batch.rejected])
    mask = jnp.concatenate([batch.chosen_mask, batch.rejected_mask])
    r = reward_scores(params, tokens, mask, config, pooling)
    return r[:n], r[n:]


# [guide:rm-train]
def reward_model_loss(params, batch: PairBatch, config: gpt.GPTConfig, pooling: str = "last",
                      use_margin: bool = False):
    """``(loss, metrics)`` of one batch: the Bradley-Terry loss (with the batch's margins when
    ``use_margin``) and the batch's preference accuracy; the loss that
    :func:`reward_model_step` differentiates. Gradients flow through the whole network, not
    only the head."""
    r_c, r_r = pair_rewards(params, batch, config, pooling)
    loss = bradley_terry_loss(r_c, r_r, batch.margin if use_margin else None)
    return loss, {"accuracy": preference_accuracy(r_c, r_r)}


def reward_model_step(params, batch: PairBatch, config: gpt.GPTConfig, pooling: str = "last",
                      use_margin: bool = False):
    """One training step of a reward model on a batch of preference pairs: the Bradley-Terry
    loss and its gradient through the whole network (book §5.1, eqs. 16, 17; §5.4.1, eq. 18;
    §5.3). The optimizer (AdamW in :func:`rm_train_step`) then applies the gradient.

    ``params`` is the reward model's tree ``{"lm": <the mini GPT's parameters>, "head": {"w"
    [D], "b" []}}`` (:func:`init_reward_model`); ``batch`` a :class:`PairBatch` of ``N``
    pairs: ``chosen``, ``rejected`` ``[N, T]`` token ids with ``chosen_mask``,
    ``rejected_mask`` ``[N, T]`` (1 on real tokens; the padding may sit on either side) and
    ``margin [N]``; ``config`` the backbone's :class:`~rlhf_book.lm.gpt.GPTConfig`;
    ``pooling`` ``"last"`` or ``"mean"`` and the reward of a sequence as :func:`reward_scores`
    defines it (the head ``w . h + b`` on the backbone's final hidden state at the last real
    token, or on the mean over real tokens); ``use_margin`` subtracts the batch's margins
    (Llama 2, eq. 18), which are ignored otherwise.

    Returns ``(loss, accuracy, grads)``: the scalar Bradley-Terry loss, the mean over pairs of
    ``-log sigmoid(r_c - r_r [- m])`` (exercise 5.1); the batch's :func:`preference_accuracy`
    (a tie counts 1/2); and the gradient of the loss with respect to every parameter,
    backbone and head, a tree shaped like ``params``. Swapping chosen and rejected turns each
    pair's probability ``p`` into ``1 - p``.

    How: one function of the parameters alone scores both halves of every pair
    (:func:`pair_rewards`) and returns the loss (:func:`bradley_terry_loss`), with the
    accuracy as auxiliary output; ``jax.value_and_grad(..., has_aux=True)`` of it at
    ``params``.
    """
    # BEGIN SOLUTION
    def pair_loss(p):
        r_c, r_r = pair_rewards(p, batch, config, pooling)
        margin = batch.margin if use_margin else None
        return bradley_terry_loss(r_c, r_r, margin), preference_accuracy(r_c, r_r)

    (loss, accuracy), grads = jax.value_and_grad(pair_loss, has_aux=True)(params)
    return loss, accuracy, grads
    # END SOLUTION


def _pairs(model_config: gpt.GPTConfig, batch: PairBatch) -> PairBatch:
    pairs = jax.tree.map(jnp.asarray, batch)
    if pairs.chosen.shape[1] > model_config.max_seq_len:
        raise ValueError(f"pairs have {pairs.chosen.shape[1]} tokens, more than the model's "
                         f"max_seq_len={model_config.max_seq_len}")
    return pairs


def rm_train_step(model_config: gpt.GPTConfig, rm_config: RMConfig, sample_batch):
    """``step(state, key) -> (state, metrics)``: draw pairs with ``sample_batch(key)``, take the
    loss, accuracy and gradient of :func:`reward_model_step`, and let the state's optimizer
    (AdamW) apply the gradient; ``metrics`` holds ``loss``, ``grad_norm`` and ``accuracy``."""

    def step(state, key):
        loss, accuracy, grads = reward_model_step(state.params, sample_batch(key), model_config,
                                                  rm_config.pooling, rm_config.use_margin)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "accuracy": accuracy}
        return state.apply_gradients(grads=grads), metrics

    return step


def make_rm_train(model_config: gpt.GPTConfig, rm_config: RMConfig, batch: PairBatch, params):
    """``train(key) -> (state, metrics)``: ``rm_config.steps`` AdamW steps from the reward-model
    ``params`` (:func:`init_reward_model`) on random pairs of ``batch`` in one ``lax.scan`` of
    :func:`rm_train_step` (the pattern of :func:`rlhf_book.lm.train.make_train`); ``metrics``
    holds ``loss``, ``accuracy`` and ``grad_norm`` per step. Pure, so
    ``jax.jit(jax.vmap(train))(keys)`` trains one reward model per seed from the same start."""
    pairs = _pairs(model_config, batch)
    tc = rm_config.train_config()
    step = rm_train_step(model_config, rm_config, train.random_rows(pairs, tc.batch_size))
    optimizer = train.make_optimizer(tc)

    def run(key):
        state = train.create_train_state(params, optimizer)
        return jax.lax.scan(step, state, jax.random.split(key, tc.steps))

    return run


def train_reward_model(model_config: gpt.GPTConfig, params, rm_config: RMConfig,
                       batch: PairBatch, *, eval_batch: PairBatch | None = None, seed: int = 0,
                       progress: bool = True, desc: str = "reward model"):
    """Train reward-model ``params`` (from :func:`init_reward_model`) on ``batch``: random pairs
    each step inside a jitted ``lax.scan`` chunk of ``log_every`` steps. Returns ``(params,
    history)`` with ``loss`` and ``accuracy`` per step and, with an ``eval_batch``,
    ``eval_step``, ``eval_loss`` and ``eval_accuracy`` after every chunk."""
    pairs = _pairs(model_config, batch)

    def evaluate(state):
        ev = evaluate_reward_model(state.params, model_config, eval_batch, rm_config.pooling)
        return {"loss": ev["loss"], "accuracy": ev["accuracy"]}

    tc = rm_config.train_config()
    state, history = train.run_in_chunks(
        rm_train_step(model_config, rm_config, train.random_rows(pairs, rm_config.batch_size)),
        train.create_train_state(params, train.make_optimizer(tc)),
        steps=tc.steps, chunk_size=tc.log_every, key=jax.random.PRNGKey(seed), desc=desc,
        progress=progress, evaluate=None if eval_batch is None else evaluate,
        postfix=lambda h: {"loss": f"{np.mean(h['loss'][-tc.log_every:]):.3f}"})
    return state.params, history
# [/guide]


_score_pairs = jax.jit(pair_rewards, static_argnums=(2, 3))


def score_pairs(params, model_config: gpt.GPTConfig, batch: PairBatch, pooling: str = "last",
                chunk_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Rewards of every pair in ``batch``, ``chunk_size`` pairs per jitted call (the last chunk
    is padded, so one compilation serves any number of pairs)."""
    n = batch.chosen.shape[0]
    out_c, out_r = [], []
    for start in range(0, n, chunk_size):
        part = jax.tree.map(lambda x: x[start:start + chunk_size], batch)
        k = part.chosen.shape[0]
        if k < chunk_size:  # pad with copies of the first pair; their scores are dropped
            part = jax.tree.map(lambda x: np.concatenate([x, np.repeat(x[:1], chunk_size - k, 0)]),
                                part)
        r_c, r_r = _score_pairs(params, part, model_config, pooling)
        out_c.append(np.asarray(r_c)[:k])
        out_r.append(np.asarray(r_r)[:k])
    return np.concatenate(out_c), np.concatenate(out_r)


def evaluate_reward_model(params, model_config: gpt.GPTConfig, batch: PairBatch,
                          pooling: str = "last") -> dict[str, Any]:
    """Loss, accuracy and the mean rewards of chosen and rejected responses on ``batch``."""
    r_c, r_r = score_pairs(params, model_config, batch, pooling)
    return {
        "loss": float(bradley_terry_loss(r_c, r_r)),
        "accuracy": float(preference_accuracy(r_c, r_r)),
        "mean_chosen": float(np.mean(r_c)),
        "mean_rejected": float(np.mean(r_r)),
        "margin": float(np.mean(r_c - r_r)),
    }


def gold_pair_accuracy(pairs: Sequence[data.PreferencePair], r_c, r_r) -> float:
    """Accuracy against the *gold* preference (the higher gold reward), over pairs whose gold
    rewards differ: how well the reward model recovers the truth behind the noisy votes."""
    g = np.array([p.gold_chosen - p.gold_rejected for p in pairs])
    r = np.asarray(r_c) - np.asarray(r_r)
    keep = g != 0
    return float(np.mean(np.sign(r[keep]) == np.sign(g[keep]))) if keep.any() else float("nan")


# ----------------------------------------------------------------------------------------------
# The lecture notes' reward-model lesson ("Build": the reward model), done right

# The lesson's mini GPT (d 128, 4 heads, 4 layers, d_ff 512) with a 160-token context: its
# byte tokenisation makes 6 of the 12 sequences longer than its 128 tokens, which it cut from
# the right, so the "last token" it scored was often in the middle of a word.
LESSON_CONFIG = gpt.GPTConfig(max_seq_len=160)
LESSON_SEPARATOR = 0  # the lesson puts byte 0 between prompt and response


def lesson_tokenize(prompt: str, response: str) -> list[int]:
    """The lesson's tokenisation: UTF-8 bytes of the prompt, the separator 0, the response."""
    return [*prompt.encode("utf-8"), LESSON_SEPARATOR, *response.encode("utf-8")]


def lesson_batch(pairs: Sequence[dict[str, str]], length: int = LESSON_CONFIG.max_seq_len) -> PairBatch:
    """The lesson's ``{"prompt", "preferred", "rejected"}`` pairs as a :class:`PairBatch`."""
    chosen, c_len = tokenizer.pad_batch([lesson_tokenize(p["prompt"], p["preferred"])
                                         for p in pairs], length)
    rejected, r_len = tokenizer.pad_batch([lesson_tokenize(p["prompt"], p["rejected"])
                                           for p in pairs], length)
    t = np.arange(length)
    return PairBatch(chosen, (t < c_len[:, None]).astype(np.int32), rejected,
                     (t < r_len[:, None]).astype(np.int32), np.zeros(len(pairs), np.float32))


# [guide:margins]
def reward_margins(chosen_rewards, rejected_rewards) -> dict[str, float]:
    """Calibration (the exercise of the lecture notes' reward-model lesson; the Bradley-Terry model
    of book §5.1): mean reward of the chosen and of the rejected responses, their gap (the
    margin) and the fraction of pairs ranked the right way round.

    ``chosen_rewards [N]``, ``rejected_rewards [N]``; returns a dict of Python floats with keys
    ``"mean_chosen"``, ``"mean_rejected"``, ``"margin"`` (the mean of ``r_c - r_r``) and
    ``"accuracy"`` (the fraction of strict wins ``r_c > r_r``: a tie is not a win). The margin
    is a difference of rewards, so it is unchanged when every reward shifts by a constant (the
    only thing a Bradley-Terry model identifies); the two means are not.
    """
    r_c = np.asarray(chosen_rewards, dtype=np.float64)
    r_r = np.asarray(rejected_rewards, dtype=np.float64)
    if r_c.ndim != 1 or r_c.shape[0] < 1 or r_r.shape != r_c.shape:
        raise ValueError(f"chosen_rewards and rejected_rewards must have the same shape [N], "
                         f"N >= 1, got {r_c.shape} and {r_r.shape}")
    # BEGIN SOLUTION
    return {"mean_chosen": float(r_c.mean()), "mean_rejected": float(r_r.mean()),
            "margin": float(np.mean(r_c - r_r)), "accuracy": float(np.mean(r_c > r_r))}
    # END SOLUTION
# [/guide]
