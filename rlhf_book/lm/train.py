"""Training core: an optax train state, jitted steps run in chunks under ``lax.scan``,
pretraining on a token stream, and checkpoints.

The pattern every chapter's training loop follows:

* the loss is a pure function ``loss_fn(params, batch) -> (loss, metrics)``;
* :func:`make_train_chunk` compiles ``n`` optimizer steps into one ``lax.scan`` (batches are
  drawn *inside* the compiled loop from a PRNG key), so Python only runs once per chunk, to
  update the progress bar;
* the optimizer is optax's AdamW with global-norm clipping and a warmup-cosine schedule.

Checkpoints are msgpack files (via ``flax.serialization``; no pickle, so loading one cannot run
code), written to a temporary file and renamed into place, so a crash never leaves a
half-written checkpoint behind. Loading restores every array bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization
from flax.training import train_state

from rlhf_book.lm import gpt, tokenizer
from rlhf_book.lm.ops import next_token_loss

TrainState = train_state.TrainState


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings shared by the pretraining and fine-tuning loops."""

    steps: int = 1200
    batch_size: int = 32
    seq_len: int = 128
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    log_every: int = 50  # steps per compiled chunk (one progress-bar update)

    def __post_init__(self):
        for name in ("steps", "batch_size", "seq_len", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"TrainConfig.learning_rate must be > 0, got {self.learning_rate}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip <= 0:
            raise ValueError(
                "TrainConfig needs warmup_steps >= 0, weight_decay >= 0 and grad_clip > 0, got "
                f"{self.warmup_steps}, {self.weight_decay}, {self.grad_clip}"
            )


def _decay_mask(params):
    """Weight decay on matrices and embeddings only, not on biases or LayerNorm parameters."""

    def decays(path, _):
        name = getattr(path[-1], "key", "")
        return name.startswith("w") or name.endswith("_emb")

    return jax.tree_util.tree_map_with_path(decays, params)


# [guide:optimizer]
def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """AdamW with global-norm gradient clipping and a linear-warmup cosine schedule."""
    warmup = min(config.warmup_steps, config.steps // 2)  # short runs still get a decay phase
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=config.learning_rate,
        warmup_steps=warmup,
        decay_steps=max(config.steps, warmup + 1),
        end_value=config.learning_rate * 0.1,
    )
    return optax.chain(
        optax.clip_by_global_norm(config.grad_clip),
        optax.adamw(schedule, weight_decay=config.weight_decay, mask=_decay_mask),
    )


def create_train_state(params, optimizer: optax.GradientTransformation) -> TrainState:
    """Bundle parameters, optimizer and optimizer state (flax's ``TrainState`` as plumbing)."""
    return TrainState.create(apply_fn=None, params=params, tx=optimizer)


def make_train_step(loss_fn: Callable) -> Callable:
    """One optimizer step: ``step(state, batch) -> (state, metrics)``, metrics incl. ``loss``."""

    def step(state: TrainState, batch):
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **metrics}
        return state.apply_gradients(grads=grads), metrics

    return step


def make_train_chunk(loss_fn: Callable, sample_batch: Callable, n_steps: int) -> Callable:
    """``n_steps`` optimizer steps compiled as one ``lax.scan``.

    ``sample_batch(key) -> batch`` draws a batch inside the compiled loop. Returns a jitted
    ``chunk(state, key) -> (state, metrics)`` whose metrics have a leading axis of ``n_steps``.
    """
    step = make_train_step(loss_fn)

    def chunk(state, key):
        def body(state, key):
            return step(state, sample_batch(key))

        return jax.lax.scan(body, state, jax.random.split(key, n_steps))

    return jax.jit(chunk)
# [/guide]


def run_in_chunks(step: Callable, state, *, steps: int, chunk_size: int, seed: int = 0,
                  desc: str = "train", progress: bool = True,
                  postfix: Callable[[dict], dict] | None = None,
                  callback: Callable[[int, Any], dict] | None = None):
    """Apply ``step(state, key) -> (state, metrics)`` ``steps`` times, ``chunk_size`` steps per
    compiled ``lax.scan`` (one compilation), with a tqdm bar updated between chunks: the
    driver of the RL and DPO loops. ``postfix(history)`` gives the bar's numbers;
    ``callback(step, state)`` runs after each chunk and returns extra metrics, recorded with
    their step under ``history["eval"]``. Returns ``(state, history)``, ``history`` a dict of
    per-step metric lists."""
    from tqdm.auto import tqdm

    if steps % chunk_size:
        raise ValueError(f"steps must be a multiple of the chunk size {chunk_size} to run in "
                         f"chunks, got {steps}")

    @jax.jit
    def chunk(state, key):
        return jax.lax.scan(step, state, jax.random.split(key, chunk_size))

    key = jax.random.PRNGKey(seed)
    history: dict[str, list] = {"eval": []}
    with tqdm(total=steps, desc=desc, disable=not progress) as bar:
        for start in range(0, steps, chunk_size):
            key, sub = jax.random.split(key)
            state, metrics = chunk(state, sub)
            for k, v in metrics.items():
                history.setdefault(k, []).extend(np.asarray(v).tolist())
            if callback is not None:
                history["eval"].append({"step": start + chunk_size, **callback(start, state)})
            bar.update(chunk_size)
            if postfix is not None:
                bar.set_postfix(postfix(history))
    return state, history


# ----------------------------------------------------------------------------------------------
# Pretraining: next-token prediction on a stream of documents


def token_stream(documents: Sequence[str]) -> np.ndarray:
    """Concatenate documents as ``<|bos|> text <|endoftext|>`` into one int32 id stream."""
    ids = [i for doc in documents for i in tokenizer.encode_document(doc)]
    return np.asarray(ids, dtype=np.int32)


def sample_windows(key, stream: jax.Array, batch_size: int, seq_len: int) -> jax.Array:
    """``batch_size`` random windows of ``seq_len`` consecutive ids from ``stream``: ``[B, T]``."""
    starts = jax.random.randint(key, (batch_size,), 0, stream.shape[0] - seq_len + 1)
    return jax.vmap(lambda s: jax.lax.dynamic_slice_in_dim(stream, s, seq_len))(starts)


# [guide:lm-loss]
def lm_loss(params, tokens, config: gpt.GPTConfig):
    """Next-token cross-entropy of a causal LM over every position of ``tokens [N, T]``."""
    logits = gpt.forward(params, tokens, config)
    return next_token_loss(logits, tokens, jnp.ones(tokens.shape)), {}
# [/guide]


def pretrain(
    model_config: gpt.GPTConfig,
    train_config: TrainConfig,
    train_stream: np.ndarray,
    eval_stream: np.ndarray | None = None,
    *,
    seed: int = 0,
    params=None,
    progress: bool = True,
    desc: str = "pretrain",
) -> tuple[Any, dict[str, np.ndarray]]:
    """Pretrain the mini GPT by next-token prediction on random windows of a token stream.

    Book ch. 3 (training overview): pretraining is the stage before instruction tuning.

    Returns ``(params, history)`` where ``history`` has ``step``, ``loss`` (every step),
    ``grad_norm``, and, with an ``eval_stream``, ``eval_step`` and ``eval_loss`` (mean loss on a
    fixed set of held-out windows after every chunk).
    """
    from tqdm import tqdm  # plain text bar: works in terminals and notebooks alike

    T = train_config.seq_len
    if T > model_config.max_seq_len:
        raise ValueError(f"seq_len={T} exceeds the model's max_seq_len={model_config.max_seq_len}")
    if len(train_stream) <= T:
        raise ValueError(f"train_stream needs more than seq_len={T} ids, got {len(train_stream)}")
    key = jax.random.PRNGKey(seed)
    init_key, data_key, eval_key = jax.random.split(key, 3)
    if params is None:
        params = gpt.init_params(init_key, model_config)
    state = create_train_state(params, make_optimizer(train_config))
    stream = jnp.asarray(train_stream)

    def loss_fn(params, tokens):
        return lm_loss(params, tokens, model_config)

    def sample_batch(key):
        return sample_windows(key, stream, train_config.batch_size, T)

    eval_fn, eval_batch = None, None
    if eval_stream is not None:
        eval_batch = sample_windows(eval_key, jnp.asarray(eval_stream), 64, T)
        eval_fn = jax.jit(lambda p, b: loss_fn(p, b)[0])

    chunks: dict[int, Callable] = {}  # compiled once per chunk length (at most two lengths)
    history: dict[str, list] = {"loss": [], "grad_norm": [], "eval_step": [], "eval_loss": []}
    done = 0
    with tqdm(total=train_config.steps, desc=desc, disable=not progress, leave=True) as bar:
        while done < train_config.steps:
            n = min(train_config.log_every, train_config.steps - done)
            if n not in chunks:
                chunks[n] = make_train_chunk(loss_fn, sample_batch, n)
            state, metrics = chunks[n](state, jax.random.fold_in(data_key, done))
            done += n
            history["loss"] += np.asarray(metrics["loss"]).tolist()
            history["grad_norm"] += np.asarray(metrics["grad_norm"]).tolist()
            postfix = {"loss": f"{history['loss'][-1]:.3f}"}
            if eval_fn is not None:
                history["eval_step"].append(done)
                history["eval_loss"].append(float(eval_fn(state.params, eval_batch)))
                postfix["eval"] = f"{history['eval_loss'][-1]:.3f}"
            bar.set_postfix(postfix)
            bar.update(n)
    out = {k: np.asarray(v) for k, v in history.items()}
    out["step"] = np.arange(1, train_config.steps + 1)
    return state.params, out


# ----------------------------------------------------------------------------------------------
# Checkpoints

CHECKPOINT_FORMAT = "rlhf-book-checkpoint/1"


def save_checkpoint(path, tree, metadata: dict | None = None) -> pathlib.Path:
    """Write a pytree of arrays (parameters, a ``TrainState``, ...) and JSON metadata.

    The file is msgpack (no pickle). It is written to a temporary file in the same folder,
    flushed to disk and renamed over ``path`` (atomic on POSIX), so readers see either the
    old checkpoint or the new one, never a torn file.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "metadata": json.dumps(metadata or {}, sort_keys=True),
        "tree": serialization.to_state_dict(jax.device_get(tree)),
    }
    data = serialization.msgpack_serialize(payload)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_checkpoint(path, target=None) -> tuple[Any, dict]:
    """Read a checkpoint written by :func:`save_checkpoint`: returns ``(tree, metadata)``.

    Without ``target`` the tree comes back as nested dicts of arrays (enough for parameters);
    with a ``target`` of the saved structure (e.g. a fresh ``TrainState``) it is restored into
    that structure.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload = serialization.msgpack_restore(path.read_bytes())
    except Exception as err:  # msgpack raises several unrelated types on corrupt input
        raise ValueError(f"{path} is not a readable checkpoint: {err}") from err
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a {CHECKPOINT_FORMAT} checkpoint")
    tree = payload["tree"]
    if target is not None:
        tree = serialization.from_state_dict(target, tree)
    tree = jax.tree_util.tree_map(jnp.asarray, tree)
    return tree, json.loads(payload["metadata"])
