"""Chapter 5: reward models.

The book's chapter 5 in code, in its order:

* §5.1 the Bradley-Terry model: :func:`bradley_terry_probability` (eqs. 12-14) and
  :func:`bradley_terry_loss` (eqs. 15-17), with Llama 2's margin (§5.4.1, eq. 18);
* §5.4.2 balancing the ``C(K, 2)`` comparisons of a prompt: :func:`balanced_pairwise_loss`
  (InstructGPT, eq. 19 read per prompt);
* §5.4.3 K-wise rankings: :func:`plackett_luce_loss` (eq. 20) and
  :func:`sample_plackett_luce` (exact samples with the Gumbel-max trick);
* §5.5 outcome reward models, :func:`orm_loss` (eq. 21, per-token binary cross-entropy), and
  §5.6 process reward models, :func:`prm_loss` (3-class, at step ends) and
  :func:`prm_binary_loss` (eq. 22);
* §5.7.1 how each kind of model is read at inference: :func:`aggregate_token_scores`,
  :func:`best_of_n`; and the RewardBench metric :func:`preference_accuracy` (§5.9);
* §5.2-5.3 a reward model on the mini GPT: a scalar head on the hidden state of the last real
  token (:func:`last_token_index`, correct for left *and* right padding) or on the mean of the
  hidden states (:func:`mean_pool`), :func:`reward_scores`, and the training loop
  :func:`train_reward_model` on the simulated annotators' pairs (book ch. 11).

A Bradley-Terry reward is a *logit*, not a probability: only differences ``r_c - r_r`` are
identified (adding a constant to every reward changes nothing), so the gradient of the
head's bias is zero (up to float32 round-off in the sum over the batch). Shapes: ``N`` pairs or sequences, ``K`` completions per prompt, ``T``
tokens, ``D`` model width; masks are 1 on entries that count.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_book import data
from rlhf_book.lm import gpt, tokenizer, train
from rlhf_book.lm.checks import as_float_array, check_rank
from rlhf_book.lm.ops import masked_mean, masked_sum


def _check_same_shape(a: jax.Array, b: jax.Array, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_b} must have the shape of {name_a} {a.shape}, got {b.shape}")



# ----------------------------------------------------------------------------------------------
# §5.1 The Bradley-Terry model


# [guide:bradley-terry]
def bradley_terry_probability(r_a, r_b) -> jax.Array:
    """``P(a > b) = exp(r_a) / (exp(r_a) + exp(r_b)) = sigmoid(r_a - r_b)`` (book §5.1,
    eqs. 12-14; Bradley and Terry, 1952).

    ``r_a`` and ``r_b`` are rewards (logits, any real number) of broadcastable shapes. Only the
    difference matters: ``r_a + c, r_b + c`` give the same probability for every ``c``.
    """
    r_a, r_b = as_float_array(r_a, "r_a"), as_float_array(r_b, "r_b")
    return jax.nn.sigmoid(r_a - r_b)


def bradley_terry_loss(chosen_rewards, rejected_rewards, margin=None) -> jax.Array:
    """Mean negative log-likelihood of the preferences,
    ``mean(-log sigmoid(r_c - r_r - m))`` (book §5.1, eqs. 16-17; §5.4.1, eq. 18).

    Shapes: ``chosen_rewards [N]``, ``rejected_rewards [N]``, ``margin`` ``None`` (no margin,
    eq. 16 of InstructGPT), a scalar or ``[N]`` (Llama 2: the rating gap, e.g. 5 - 2 = 3 for
    ratings 5 and 2). Returns a scalar.

    ``-log sigmoid(d) = softplus(-d) = log(1 + exp(-d))`` (eq. 17, Askell et al.) is computed by
    ``jax.nn.softplus``, finite for any ``d``: at ``d = -1e4`` the loss is ``1e4``, where the
    seeds' ``-log(sigmoid(d) + 1e-8)`` stops at 18.4 and its gradient vanishes.
    """
    r_c, r_r = as_float_array(chosen_rewards, "chosen_rewards"), as_float_array(rejected_rewards,
                                                                       "rejected_rewards")
    _check_same_shape(r_c, r_r, "chosen_rewards", "rejected_rewards")
    if r_c.ndim != 1 or r_c.shape[0] < 1:
        raise ValueError(f"chosen_rewards must have shape [N] with N >= 1, got shape {r_c.shape}")
    # BEGIN SOLUTION
    delta = r_c - r_r
    if margin is not None:
        margin = as_float_array(margin, "margin")
        if margin.shape not in ((), r_c.shape):
            raise ValueError(f"margin must be a scalar or have shape {r_c.shape}, got {margin.shape}")
        delta = delta - margin
    return jnp.mean(jax.nn.softplus(-delta))
    # END SOLUTION
# [/guide]


# ----------------------------------------------------------------------------------------------
# §5.4.2 Several comparisons per prompt; §5.4.3 K-wise rankings


# [guide:balanced-loss]
def balanced_pairwise_loss(scores, valid=None) -> jax.Array:
    """Bradley-Terry over all ``C(K, 2)`` pairs of each prompt, averaged *per prompt* first
    (book §5.4.2, eq. 19; Ouyang et al. 2022, InstructGPT).

    Shapes: ``scores [P, K]``, the rewards of each prompt's ``K`` completions **ordered
    best-first** (column 0 was ranked highest); ``valid [P, K]`` (optional) marks the
    completions that exist when prompts have different ``K``. Returns a scalar:

        L = mean over prompts x of  1 / C(K_x, 2) * sum_{i < j valid} -log sigmoid(s_i - s_j),

    over the prompts with at least two valid completions (0 when there are none). Averaging each
    prompt's pairs first gives every prompt the same weight whatever its ``K``, so a prompt with
    9 completions (36 correlated pairs) does not count 6 times as much as one with 4 (6 pairs).

    Erratum (eq. 19): the book puts a constant ``1 / C(K, 2)`` in front of an expectation over
    *pairs*, which only rescales the loss; the per-prompt average above is what InstructGPT does.
    """
    s = as_float_array(scores, "scores")
    check_rank(s, 2, "scores", "[P, K]")
    valid = jnp.ones(s.shape, bool) if valid is None else jnp.asarray(valid).astype(bool)
    _check_same_shape(s, valid, "scores", "valid")
    # BEGIN SOLUTION
    K = s.shape[1]
    upper = jnp.triu(jnp.ones((K, K), bool), k=1)  # pairs (i, j) with i ranked above j
    pairs = upper[None] & valid[:, :, None] & valid[:, None, :]  # [P, K, K]
    losses = jax.nn.softplus(-(s[:, :, None] - s[:, None, :]))  # [P, K, K]
    per_prompt = masked_mean(losses, pairs, axis=(1, 2))  # 1 / C(K_x, 2) * sum over pairs
    has_pairs = jnp.any(pairs, axis=(1, 2))
    return masked_mean(per_prompt, has_pairs)
    # END SOLUTION
# [/guide]


# [guide:plackett-luce]
def plackett_luce_loss(scores) -> jax.Array:
    """Negative log-likelihood of a ranking under the Plackett-Luce model (book §5.4.3, eq. 20;
    Zhu et al. 2023; used for Starling).

    ``scores [N, K]`` are the rewards of each ranking's ``K`` items **ordered best-first**
    (column 0 ranked first). The probability of the ranking is

        P = prod_k exp(s_k) / sum_{j >= k} exp(s_j),

    a sequence of softmax choices: the best item among all, then the best among the rest, and so
    on. Returns ``mean_n -log P_n = mean_n sum_k (logsumexp_{j >= k} s_j - s_k)``. With ``K = 2``
    this is :func:`bradley_terry_loss`. The reversed cumulative ``logsumexp`` keeps it finite
    for scores of any size.
    """
    s = as_float_array(scores, "scores")
    check_rank(s, 2, "scores", "[N, K]")
    if s.shape[0] < 1 or s.shape[1] < 2:
        raise ValueError(f"scores must have shape [N, K] with N >= 1 and K >= 2, got {s.shape}")
    # BEGIN SOLUTION
    tail_lse = jax.lax.cumlogsumexp(s, axis=1, reverse=True)  # logsumexp_{j >= k} s_j
    return jnp.mean(jnp.sum(tail_lse - s, axis=1))
    # END SOLUTION
# [/guide]


def sample_plackett_luce(key: jax.Array, scores) -> jax.Array:
    """Sample rankings from the Plackett-Luce model: ``scores [..., K] -> [..., K]`` indices,
    best first.

    The Gumbel-max trick: sorting ``s + Gumbel(0, 1)`` noise in descending order gives an exact
    Plackett-Luce sample (each position's winner is a softmax draw among the items left).
    """
    s = as_float_array(scores, "scores")
    g = jax.random.gumbel(key, s.shape, s.dtype)
    return jnp.argsort(-(s + g), axis=-1)


# ----------------------------------------------------------------------------------------------
# §5.5-5.6 Outcome and process reward models


def _binary_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``-[y log sigmoid(z) + (1 - y) log sigmoid(-z)]`` elementwise, finite for any ``z``."""
    return -(labels * jax.nn.log_sigmoid(logits) + (1.0 - labels) * jax.nn.log_sigmoid(-logits))


# [guide:orm-prm]
def orm_loss(logits, labels, mask) -> jax.Array:
    """Outcome reward model loss: per-token binary cross-entropy against the completion's
    correctness (book §5.5, eq. 21; Cobbe et al. 2021).

    Shapes: ``logits [N, T]`` (one correctness logit per token), ``labels [N]`` (1 if the
    completion is correct, 0 if not; every completion token of a row gets its row's label) or
    ``[N, T]``, ``mask [N, T]`` (1 on completion tokens; prompt and padding excluded). Returns
    the mean over every masked token of the batch, 0 when nothing is masked in.
    """
    z = as_float_array(logits, "logits")
    check_rank(z, 2, "logits", "[N, T]")
    y = as_float_array(labels, "labels")
    if y.shape == z.shape[:1]:
        y = jnp.broadcast_to(y[:, None], z.shape)
    _check_same_shape(z, y, "logits", "labels (or [N])")
    mask = jnp.asarray(mask)
    _check_same_shape(z, mask, "logits", "mask")
    return masked_mean(_binary_cross_entropy(z, y), mask)


PRM_CLASSES = (-1, 0, 1)  # step labels: incorrect, neutral, correct -> class indices 0, 1, 2


def prm_loss(logits, step_labels, mask) -> jax.Array:
    """Process reward model loss: 3-class cross-entropy at the end of each reasoning step
    (book §5.6; Lightman et al. 2023, PRM800K's labels).

    Shapes: ``logits [N, T, 3]`` (classes incorrect / neutral / correct), ``step_labels [N, T]``
    with values in ``{-1, 0, 1}`` where ``mask`` is 1 (anything elsewhere), ``mask [N, T]``,
    1 on the last token of each step. The labels -1 / 0 / +1 map to class indices 0 / 1 / 2
    here, which the book's code promises in a comment and never does. Returns the mean over
    labelled tokens; **0 when no token is labelled** (the book's code leaves ``loss`` unbound).
    """
    z = as_float_array(logits, "logits")
    if z.ndim != 3 or z.shape[-1] != len(PRM_CLASSES):
        raise ValueError(f"logits must have shape [N, T, 3], got shape {z.shape}")
    labels = jnp.asarray(step_labels)
    mask = jnp.asarray(mask).astype(bool)
    _check_same_shape(z[..., 0], labels, "logits[..., 0]", "step_labels")
    _check_same_shape(z[..., 0], mask, "logits[..., 0]", "mask")
    if not isinstance(labels, jax.core.Tracer) and not isinstance(mask, jax.core.Tracer):
        bad = np.setdiff1d(np.asarray(labels)[np.asarray(mask)], PRM_CLASSES)
        if bad.size:
            raise ValueError(f"step_labels must be -1, 0 or 1 at masked positions, got {bad[:5]}")
    classes = jnp.clip(labels + 1, 0, 2).astype(jnp.int32)  # -1, 0, 1 -> 0, 1, 2
    nll = -jnp.take_along_axis(jax.nn.log_softmax(z, axis=-1), classes[..., None], axis=-1)[..., 0]
    return masked_mean(nll, mask)


def prm_binary_loss(logits, step_labels, mask) -> jax.Array:
    """Eq. 22's binary process reward model: BCE of each step's correctness logit at its last
    token. ``logits [N, T]``, ``step_labels [N, T]`` in ``{0, 1}`` (1 = the step is correct),
    ``mask [N, T]`` 1 at step ends. Mean over labelled tokens, 0 if none (book §5.6, eq. 22)."""
    z = as_float_array(logits, "logits")
    check_rank(z, 2, "logits", "[N, T]")
    y = as_float_array(step_labels, "step_labels")
    _check_same_shape(z, y, "logits", "step_labels")
    mask = jnp.asarray(mask)
    _check_same_shape(z, mask, "logits", "mask")
    return masked_mean(_binary_cross_entropy(z, y), mask)
# [/guide]


# ----------------------------------------------------------------------------------------------
# §5.7.1 Reading each kind of model at inference; §5.9 the RewardBench metric

AGGREGATIONS = ("mean", "min", "prod", "sum_log", "last")


def aggregate_token_scores(probs, mask, how: str = "mean") -> jax.Array:
    """Turn per-token (ORM) or per-step (PRM) correctness probabilities into one score per
    sequence (book §5.7.1). ``probs [N, T]`` in (0, 1), ``mask [N, T]``; returns ``[N]``.

    ``how``: ``"mean"``; ``"min"`` (fail-fast: one bad step sinks the answer); ``"prod"`` and
    ``"sum_log"`` (the same ranking; *not* a probability of correctness, since every ``p_t``
    estimates the same event); ``"last"`` (the last masked entry). A row with nothing masked
    scores 0 (``"mean"``, ``"sum_log"``), 1 (``"min"``, ``"prod"``) or 0 (``"last"``).
    """
    if how not in AGGREGATIONS:
        raise ValueError(f"how must be one of {AGGREGATIONS}, got {how!r}")
    p = as_float_array(probs, "probs")
    check_rank(p, 2, "probs", "[N, T]")
    m = jnp.asarray(mask).astype(bool)
    _check_same_shape(p, m, "probs", "mask")
    if how == "mean":
        return masked_mean(p, m, axis=1)
    if how == "min":
        return jnp.min(jnp.where(m, p, 1.0), axis=1)
    log_p = jnp.log(jnp.clip(p, 1e-30, 1.0))
    if how == "sum_log":
        return masked_sum(log_p, m, axis=1)
    if how == "prod":
        return jnp.exp(masked_sum(log_p, m, axis=1))
    last = last_token_index(m)
    return jnp.where(jnp.any(m, axis=1), jnp.take_along_axis(p, last[:, None], axis=1)[:, 0], 0.0)


def best_of_n(scores) -> jax.Array:
    """Index of the best of ``N`` candidates per prompt: ``scores [..., N] -> [...]``; ties go
    to the first (book §5.7.1, reranking; chapter 9, rejection sampling)."""
    return jnp.argmax(as_float_array(scores, "scores"), axis=-1)


def preference_accuracy(chosen_rewards, rejected_rewards, tie: float = 0.5) -> jax.Array:
    """Fraction of pairs whose chosen response scores higher (RewardBench, book §5.9).

    ``chosen_rewards [N]``, ``rejected_rewards [N]``; a tie counts ``tie`` (0.5: a coin flip
    would break it; RewardBench-style strict accuracy uses 0).
    """
    r_c, r_r = as_float_array(chosen_rewards, "chosen_rewards"), as_float_array(rejected_rewards,
                                                                       "rejected_rewards")
    _check_same_shape(r_c, r_r, "chosen_rewards", "rejected_rewards")
    if not 0.0 <= tie <= 1.0:
        raise ValueError(f"tie must lie in [0, 1], got {tie}")
    return jnp.mean(jnp.where(r_c > r_r, 1.0, jnp.where(r_c == r_r, tie, 0.0)))


# ----------------------------------------------------------------------------------------------
# §5.2-5.3 A reward model on the mini GPT


# [guide:last-token]
def last_token_index(mask) -> jax.Array:
    """Index of the last 1 in each row of ``mask [N, T]``: ``[N]`` int32.

    The book's code takes ``mask.sum(1) - 1``, which is the last real token only when padding
    is on the right; with left padding (the usual layout for generation) it points into the
    middle of the sequence. Searching for the last 1 works for both. A row with no 1 gives
    ``T - 1``; callers that can meet empty rows must mask them out.
    """
    # BEGIN SOLUTION
    m = jnp.asarray(mask).astype(bool)
    T = m.shape[-1]
    return (T - 1 - jnp.argmax(m[..., ::-1], axis=-1)).astype(jnp.int32)
    # END SOLUTION


def mean_pool(hidden, mask) -> jax.Array:
    """Mean of the hidden states of the real tokens: ``hidden [N, T, D]``, ``mask [N, T]`` ->
    ``[N, D]`` (zeros for a row with no real token). The alternative to last-token pooling in
    the lecture notes' exercise 1."""
    # BEGIN SOLUTION
    m = jnp.asarray(mask).astype(hidden.dtype)[..., None]
    return jnp.sum(hidden * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
    # END SOLUTION
# [/guide]


POOLINGS = ("last", "mean")


def init_reward_model(key: jax.Array, lm_params, config: gpt.GPTConfig) -> dict:
    """Reward-model parameters: the language model's (usually the SFT checkpoint) plus a scalar
    head ``r = w . h + b`` with ``w ~ N(0, 0.02^2)`` and ``b = 0`` (book §5.2). The LM's own
    unembedding stays in the tree but is not used by :func:`reward_scores`."""
    w = 0.02 * jax.random.normal(key, (config.d_model,), jnp.float32)
    return {"lm": lm_params, "head": {"w": w, "b": jnp.zeros((), jnp.float32)}}


# [guide:reward-scores]
def reward_scores(params, tokens, mask, config: gpt.GPTConfig, pooling: str = "last") -> jax.Array:
    """Scalar rewards ``r_theta(x, y)`` of whole sequences: ``tokens [N, T]``, ``mask [N, T]``
    (1 on real tokens, prompt and response; padding on either side) -> ``[N]``
    (book §5.2-5.3, Figure 12).

    The mask also goes into the transformer as segment ids (padding is its own segment), so real
    tokens never attend to padding and their positions start at 0 wherever the padding is: the
    score of a sequence is the same under left and right padding. With causal attention the last
    real token has seen the whole sequence, which is why ``pooling="last"`` reads it (the
    sequence ends with ``<|end|>``, as the book's EOS); ``pooling="mean"`` averages all real
    tokens. Under ``jit`` XLA drops the vocabulary logits that ``gpt.forward`` also computes.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    mask = jnp.asarray(mask)
    if mask.shape != jnp.shape(tokens):
        raise ValueError(f"mask must have the shape of tokens {jnp.shape(tokens)}, got {mask.shape}")
    _, hidden = gpt.forward(params["lm"], tokens, config, return_hidden=True,
                            segment_ids=mask.astype(jnp.int32))
    if pooling == "last":
        idx = last_token_index(mask)
        h = jnp.take_along_axis(hidden, idx[:, None, None], axis=1)[:, 0]  # [N, D]
    else:
        h = mean_pool(hidden, mask)
    return h @ params["head"]["w"] + params["head"]["b"]
# [/guide]


# ----------------------------------------------------------------------------------------------
# Preference pairs as token batches, and the training loop


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
        if self.pooling not in POOLINGS:
            raise ValueError(f"RMConfig.pooling must be one of {POOLINGS}, got {self.pooling!r}")
        for name in ("steps", "batch_size", "seq_len", "log_every", "n_pairs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"RMConfig.{name} must be a positive int, got {value!r}")
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
    ``use_margin``) and the batch's preference accuracy. Gradients flow through the whole
    network, not only the head (the lecture notes' numpy code updates only the head, and with
    the features of the wrong forward pass)."""
    r_c, r_r = pair_rewards(params, batch, config, pooling)
    loss = bradley_terry_loss(r_c, r_r, batch.margin if use_margin else None)
    return loss, {"accuracy": preference_accuracy(r_c, r_r)}


def train_reward_model(model_config: gpt.GPTConfig, params, rm_config: RMConfig,
                       batch: PairBatch, *, eval_batch: PairBatch | None = None, seed: int = 0,
                       progress: bool = True, desc: str = "reward model"):
    """Train reward-model ``params`` (from :func:`init_reward_model`) on ``batch``: random pairs
    each step inside a jitted ``lax.scan`` chunk of ``log_every`` steps. Returns ``(params,
    history)`` with ``loss`` and ``accuracy`` per step and, with an ``eval_batch``,
    ``eval_step``, ``eval_loss`` and ``eval_accuracy`` after every chunk."""
    pairs = jax.tree.map(jnp.asarray, batch)
    if pairs.chosen.shape[1] > model_config.max_seq_len:
        raise ValueError(f"pairs have {pairs.chosen.shape[1]} tokens, more than the model's "
                         f"max_seq_len={model_config.max_seq_len}")

    def loss_fn(params, b: PairBatch):
        return reward_model_loss(params, b, model_config, rm_config.pooling, rm_config.use_margin)

    def sample_batch(key):
        idx = jax.random.randint(key, (rm_config.batch_size,), 0, pairs.chosen.shape[0])
        return jax.tree.map(lambda x: x[idx], pairs)

    def evaluate(state):
        ev = evaluate_reward_model(state.params, model_config, eval_batch, rm_config.pooling)
        return {"loss": ev["loss"], "accuracy": ev["accuracy"]}

    tc = rm_config.train_config()
    state, history = train.run_in_chunks(
        train.make_supervised_step(loss_fn, sample_batch),
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


def n_pairs_per_prompt(k: int) -> int:
    """``C(K, 2)``: the comparisons a ranking of ``K`` completions gives (§5.4.2)."""
    return math.comb(k, 2)


# ----------------------------------------------------------------------------------------------
# The lecture notes' reward-model lesson, done right (seed 003)

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
    """The lesson's exercise 2, calibration: mean reward of the chosen and of the rejected
    responses, their gap (the margin) and the fraction of pairs ranked the right way round.

    ``chosen_rewards [N]``, ``rejected_rewards [N]``. The margin is a difference of rewards, so
    it is unchanged when every reward shifts by a constant (the only thing a Bradley-Terry model
    identifies); the two means are not.
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
