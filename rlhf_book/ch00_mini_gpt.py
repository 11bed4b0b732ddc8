"""Chapter 0's experiments: what ``notebooks/ch00_mini_gpt.ipynb`` runs on the mini GPT.

Chapter 0 has no math module of its own: its model is :mod:`rlhf_book.lm` (tokenizer, the GPT,
sampling, the training driver). This module holds the chapter's experiments, with their settings
as named constants a learner can change:

* the chat template on one SFT demonstration, :func:`chat_example`;
* the pretraining run of the small model (:data:`PRETRAIN_CONFIG` on :data:`PRETRAIN_MODEL`, the
  corpus of :data:`PRETRAIN_DOCUMENTS` documents with :data:`PRETRAIN_EVAL_FRACTION` of them held
  out): :func:`pretraining_streams`, :func:`pretrain_small`; chapters 4 to 9 start from its
  model (stored once by :mod:`rlhf_book.textbook.substrate`);
* the best loss without context, :func:`unigram_entropy`;
* causality of the forward pass, :func:`causal_edit` (editing token ``t`` changes the logits at
  ``t`` and after, never before);
* where the parameters sit, :func:`parameter_groups`;
* temperature on the lectures' next-token policy, :func:`temperature_sweep` (exact
  ``softmax(log p / tau)`` against sampled frequencies).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_book import data
from rlhf_book.lm import gpt, sampling, tokenizer, train

# Chapter 0's pretraining run (notebook §4): the small config, 1,500 steps of 16 x 128 bytes.
PRETRAIN_MODEL = "small"
PRETRAIN_CONFIG = train.TrainConfig(steps=1500, batch_size=16, seq_len=128, learning_rate=3e-3,
                                    warmup_steps=50, log_every=50)
PRETRAIN_DOCUMENTS = 6000
PRETRAIN_EVAL_FRACTION = 0.05  # of the documents, held out for the held-out loss
PRETRAIN_SEED = 0

# The temperature experiment (notebook §5): the lectures' policy {0.6, 0.3, 0.1}.
TEMPERATURES = (0.5, 1.0, 2.0)
TEMPERATURE_DRAWS = 20_000

# The causality check (notebook §2): a random mini GPT, one sentence, one edited position.
CAUSAL_TEXT = "The capital of France is Paris."
CAUSAL_EDIT_AT = 12

# The parameter groups of the mini GPT, in the model's order.
PARAMETER_GROUPS = ("tok_emb", "pos_emb", "blocks/ln1", "blocks/attn", "blocks/ln2",
                    "blocks/mlp", "ln_f")


def chat_example(seed: int = 0) -> list[dict[str, str]]:
    """The conversation the notebook renders: the first SFT demonstration with all three roles."""
    demos = data.sft_demonstrations(seed=seed, n=50)
    return next(c for c in demos if c[0]["role"] == "system")


def pretraining_streams(seed: int = PRETRAIN_SEED) -> tuple[np.ndarray, np.ndarray]:
    """The chapter's corpus as ``(train_stream, eval_stream)``: 5% of the *documents* held out."""
    docs = data.pretraining_corpus(seed=seed, n_documents=PRETRAIN_DOCUMENTS)
    n_eval = int(PRETRAIN_EVAL_FRACTION * len(docs))
    return train.token_stream(docs[n_eval:]), train.token_stream(docs[:n_eval])


def pretrain_small(seed: int = PRETRAIN_SEED, progress: bool = False):
    """Chapter 0's pretraining run: ``(params, history)`` of :func:`rlhf_book.lm.train.pretrain`
    with :data:`PRETRAIN_CONFIG` on the small model (about a minute on a laptop CPU)."""
    train_stream, eval_stream = pretraining_streams(seed)
    return train.pretrain(gpt.get_config(PRETRAIN_MODEL), PRETRAIN_CONFIG, train_stream,
                          eval_stream, seed=seed, progress=progress)


def unigram_entropy(stream: np.ndarray) -> float:
    """Entropy (nats) of the stream's byte frequencies: the best loss without context."""
    counts = np.bincount(stream, minlength=tokenizer.VOCAB_SIZE)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def causal_edit(text: str = CAUSAL_TEXT, edit_at: int = CAUSAL_EDIT_AT,
                config: gpt.GPTConfig | None = None, seed: int = 0) -> np.ndarray:
    """``[T]``: the largest change of any logit at each position when token ``edit_at`` of
    ``<|bos|> text`` is replaced by ``X``, in a randomly initialised GPT. Zero before
    ``edit_at``: position ``t`` attends only to positions ``<= t``."""
    config = config or gpt.GPTConfig()
    params = gpt.init_params(jax.random.PRNGKey(seed), config)
    tokens = jnp.array([[tokenizer.BOS, *tokenizer.encode(text)]])
    edited = tokens.at[0, edit_at].set(tokenizer.encode("X")[0])
    return np.abs(np.asarray(gpt.forward(params, tokens, config)
                             - gpt.forward(params, edited, config))).max(axis=-1)[0]


def parameter_groups(config: gpt.GPTConfig | None = None) -> dict[str, int]:
    """Parameters per group of :data:`PARAMETER_GROUPS` (blocks summed over the layers)."""
    config = config or gpt.GPTConfig()
    shapes = jax.eval_shape(lambda: gpt.init_params(jax.random.PRNGKey(0), config))
    groups: dict[str, int] = dict.fromkeys(PARAMETER_GROUPS, 0)
    for path, leaf in jax.tree_util.tree_leaves_with_path(shapes):
        keys = [p.key for p in path]
        name = "/".join(keys[:2]) if keys[0] == "blocks" else keys[0]
        groups[name] += int(np.prod(leaf.shape))
    return groups


def temperature_sweep(policy: dict | None = None, temperatures=TEMPERATURES,
                      draws: int = TEMPERATURE_DRAWS) -> dict[float, dict[str, np.ndarray]]:
    """``{tau: {"probabilities", "frequencies"}}``: the policy at temperature ``tau``,
    ``p^(1/tau)`` renormalised, and the frequencies of ``draws`` samples of
    :func:`rlhf_book.lm.sampling.sample_token` (key ``k`` for the ``k``-th temperature)."""
    policy = policy or data.LESSON_TOKEN_POLICY
    p = np.array(list(policy.values()))
    logits = jnp.tile(jnp.log(jnp.asarray(p, jnp.float32)), (draws, 1))
    sweep = {}
    for k, tau in enumerate(temperatures):
        tokens, _ = sampling.sample_token(jax.random.PRNGKey(k), logits, tau)
        sweep[tau] = {"probabilities": p ** (1 / tau) / np.sum(p ** (1 / tau)),
                      "frequencies": np.bincount(np.asarray(tokens), minlength=len(p)) / draws}
    return sweep


def temperature_entropy(policy: dict | None = None, taus=None) -> tuple[np.ndarray, np.ndarray]:
    """``(taus, entropy)``: the entropy (nats) of the policy at each temperature."""
    p = np.array(list((policy or data.LESSON_TOKEN_POLICY).values()))
    taus = np.geomspace(0.1, 10, 200) if taus is None else np.asarray(taus)
    qs = (p ** (1 / t) / np.sum(p ** (1 / t)) for t in taus)
    return taus, np.array([-(q * np.log(q)).sum() for q in qs])


UNIFORM_LOSS = math.log(tokenizer.VOCAB_SIZE)  # a uniform guess over the vocabulary
