"""Training core: an optax train state, jitted steps run in chunks under ``lax.scan``,
pretraining on a token stream, and checkpoints.

The pattern every training loop of the package follows (pretraining, SFT, the reward model,
RL and DPO):

* a step is a pure function ``step(state, key) -> (state, metrics)``; for supervised losses
  ``loss_fn(params, batch) -> (loss, metrics)`` it is :func:`make_supervised_step` (the batch is
  drawn *inside* the compiled loop from the key);
* :func:`run_in_chunks`, the one driver, compiles ``n`` steps into one ``lax.scan`` and runs
  chunk after chunk, so Python only runs between chunks: a progress bar and a held-out
  evaluation; :func:`make_train` runs every step in one ``lax.scan`` instead, so that
  ``jax.vmap`` trains one model per seed at once;
* the optimizer is optax's AdamW with global-norm clipping and a warmup-cosine schedule.

Checkpoints are msgpack files (via ``flax.serialization``; no pickle, so loading one cannot run
code), written to a temporary file and renamed into place, so a crash never leaves a
half-written checkpoint behind. Loading restores every array bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
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
from tqdm import tqdm  # a plain text bar: works in terminals and notebooks alike

from rlhf_book.lm import gpt, sharding, tokenizer
from rlhf_book.lm.checks import check_positive_ints
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
        check_positive_ints(self, "steps", "batch_size", "seq_len", "log_every")
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


def make_supervised_step(loss_fn: Callable, sample_batch: Callable) -> Callable:
    """``step(state, key) -> (state, metrics)``: draw a batch with ``sample_batch(key)`` (inside
    the compiled loop) and take one optimizer step on it -- the step :func:`run_in_chunks` and
    :func:`make_train` scan over, for pretraining, SFT and the reward model alike."""
    train_step = make_train_step(loss_fn)

    def step(state, key):
        return train_step(state, sample_batch(key))

    return step


def random_rows(rows, batch_size: int) -> Callable:
    """``sample_batch(key)``: ``batch_size`` rows of ``rows`` (a pytree of arrays with a common
    leading axis: SFT rows, preference pairs) drawn uniformly with replacement."""

    def sample_batch(key):
        idx = jax.random.randint(key, (batch_size,), 0, jax.tree.leaves(rows)[0].shape[0])
        return sharding.shard_batch(jax.tree.map(lambda x: x[idx], rows))

    return sample_batch


def make_train(loss_fn: Callable, sample_batch: Callable, optimizer: optax.GradientTransformation,
               steps: int) -> Callable:
    """``train(key, params) -> (state, metrics)``: ``steps`` supervised steps
    (:func:`make_supervised_step`) with ``optimizer`` (e.g. :func:`make_optimizer`'s AdamW) in
    one ``lax.scan``, metrics with a leading axis of ``steps``. Pure, so ``jax.jit(jax.vmap(
    train, (0, None)))(keys, params)`` trains one model per seed at once (purejaxrl's
    pattern)."""
    step = make_supervised_step(loss_fn, sample_batch)

    def train(key, params):
        state = create_train_state(params, optimizer)
        return jax.lax.scan(step, state, jax.random.split(key, steps))

    return train
# [/guide]


def check_finite(metrics: dict, state, *, first_step: int, desc: str) -> None:
    """Stop training when a chunk's per-step metrics (``{name: [n, ...]}``: loss, reward, ...)
    or the state it leaves (parameters, optimizer moments) are not finite: a
    ``FloatingPointError`` naming the metric and the first bad step, raised before anything is
    saved. (One NaN reward would otherwise turn every parameter into NaN, and the run would go
    on as if nothing had happened.)"""
    for name, values in metrics.items():
        values = np.asarray(values)
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            rows = values.reshape(len(values), -1)
            bad = int(np.flatnonzero(~np.isfinite(rows).all(1))[0])
            raise FloatingPointError(f"{desc}: {name} is {rows[bad][~np.isfinite(rows[bad])][0]}"
                                     f" at step {first_step + bad}; training stopped, nothing saved")
    if not bool(_all_finite(state)):
        raise FloatingPointError(f"{desc}: the parameters or optimizer state are not finite "
                                 f"after the chunk from step {first_step}; training stopped, "
                                 "nothing saved")


@jax.jit
def _all_finite(tree) -> jax.Array:
    """Whether every floating-point entry of ``tree`` is finite: one compiled reduction."""
    leaves = [jnp.isfinite(x).all() for x in jax.tree_util.tree_leaves(tree)
              if jnp.issubdtype(jnp.result_type(x), jnp.floating)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def run_in_chunks(step: Callable, state, *, steps: int, chunk_size: int, key,
                  chunk_key: Callable[[int], jax.Array] | None = None, desc: str = "train",
                  progress: bool = True, evaluate: Callable[[Any], dict] | None = None,
                  postfix: Callable[[dict], dict] | None = None):
    """The one training driver: apply ``step(state, key) -> (state, metrics)`` ``steps`` times,
    ``chunk_size`` steps per jitted ``lax.scan`` (a shorter last chunk compiles once more),
    with a tqdm bar updated between chunks. Pretraining, SFT, the reward model, RL and DPO all
    run through it.

    Each chunk's key is the next split of ``key`` (or ``chunk_key(first_step)``). After each
    chunk, ``evaluate(state) -> {name: value}`` (a held-out evaluation, optional) is recorded
    as ``eval_<name>`` with the step count in ``eval_step``; ``postfix(history)`` gives the
    bar's numbers. Returns ``(state, history)``: NumPy arrays of every per-step metric, the
    ``step`` numbers ``1 .. steps``, and the evaluations.

    Inside ``with sharding.use(mesh):`` the state is placed on the mesh (replicated along its
    data axis, split along its FSDP axis: :func:`rlhf_book.lm.sharding.state_shardings`) and
    stays so from chunk to chunk; the batches split themselves where they are drawn."""
    mesh = sharding.current_mesh()
    out_shardings = None
    if mesh is not None:
        state = sharding.place(state, mesh)
        out_shardings = (sharding.state_shardings(state, mesh), None)

    @functools.lru_cache(maxsize=None)  # one compilation per chunk length
    def chunk(n: int):
        return jax.jit(lambda state, key: jax.lax.scan(step, state, jax.random.split(key, n)),
                       out_shardings=out_shardings)

    history: dict[str, list] = {}
    with tqdm(total=steps, desc=desc, disable=not progress) as bar:
        for start in range(0, steps, chunk_size):
            n = min(chunk_size, steps - start)
            if chunk_key is None:
                key, sub = jax.random.split(key)
            else:
                sub = chunk_key(start)
            state, metrics = chunk(n)(state, sub)
            check_finite(metrics, state, first_step=start + 1, desc=desc)
            for name, values in metrics.items():
                history.setdefault(name, []).extend(np.asarray(values).tolist())
            if evaluate is not None:
                history.setdefault("eval_step", []).append(start + n)
                for name, value in evaluate(state).items():
                    history.setdefault(f"eval_{name}", []).append(value)
            bar.update(n)
            if postfix is not None:
                bar.set_postfix(postfix(history))
    history["step"] = list(range(1, steps + 1))
    return state, {name: np.asarray(values) for name, values in history.items()}


# ----------------------------------------------------------------------------------------------
# Pretraining: next-token prediction on a stream of documents


def token_stream(documents: Sequence[str]) -> np.ndarray:
    """Concatenate documents as ``<|bos|> text <|endoftext|>`` into one int32 id stream."""
    ids = [i for doc in documents for i in tokenizer.encode_document(doc)]
    return np.asarray(ids, dtype=np.int32)


def sample_windows(key, stream: jax.Array, batch_size: int, seq_len: int) -> jax.Array:
    """``batch_size`` random windows of ``seq_len`` consecutive ids from ``stream``: ``[B, T]``."""
    starts = jax.random.randint(key, (batch_size,), 0, stream.shape[0] - seq_len + 1)
    windows = jax.vmap(lambda s: jax.lax.dynamic_slice_in_dim(stream, s, seq_len))(starts)
    return sharding.shard_batch(windows)


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
    T = train_config.seq_len
    if T > model_config.max_seq_len:
        raise ValueError(f"seq_len={T} exceeds the model's max_seq_len={model_config.max_seq_len}")
    if len(train_stream) <= T:
        raise ValueError(f"train_stream needs more than seq_len={T} ids, got {len(train_stream)}")
    init_key, data_key, eval_key = jax.random.split(jax.random.PRNGKey(seed), 3)
    if params is None:
        params = gpt.init_params(init_key, model_config)
    stream = jnp.asarray(train_stream)

    def loss_fn(params, tokens):
        return lm_loss(params, tokens, model_config)

    def sample_batch(key):
        return sample_windows(key, stream, train_config.batch_size, T)

    evaluate = None
    if eval_stream is not None:
        eval_batch = sample_windows(eval_key, jnp.asarray(eval_stream), 64, T)
        eval_loss = jax.jit(lambda p: loss_fn(p, eval_batch)[0])
        evaluate = lambda state: {"loss": float(eval_loss(state.params))}  # noqa: E731

    def postfix(h):
        return {"loss": f"{h['loss'][-1]:.3f}",
                **({"eval": f"{h['eval_loss'][-1]:.3f}"} if "eval_loss" in h else {})}

    state, history = run_in_chunks(
        make_supervised_step(loss_fn, sample_batch),
        create_train_state(params, make_optimizer(train_config)),
        steps=train_config.steps, chunk_size=train_config.log_every, key=data_key,
        chunk_key=lambda start: jax.random.fold_in(data_key, start), desc=desc,
        progress=progress, evaluate=evaluate, postfix=postfix)
    return state.params, history


# ----------------------------------------------------------------------------------------------
# Checkpoints

CHECKPOINT_FORMAT = "rlhf-book-checkpoint/2"  # 2: the tree's bytes with their SHA-256


def _stale_temp_files(path: pathlib.Path) -> list[pathlib.Path]:
    """Temporary files of earlier writes of ``path`` whose writer is gone (killed mid-write)."""
    stale = []
    for tmp in path.parent.glob(f".{path.name}.tmp*"):
        pid = tmp.name.rsplit(".tmp", 1)[-1]
        try:
            os.kill(int(pid), 0)  # signal 0: is the writer still running?
        except (ValueError, ProcessLookupError):
            stale.append(tmp)
        except PermissionError:  # running, as another user
            pass
    return stale


def save_checkpoint(path, tree, metadata: dict | None = None) -> pathlib.Path:
    """Write a pytree of arrays (parameters, a ``TrainState``, ...) and JSON metadata.

    The file is msgpack (no pickle): the tree's own msgpack bytes, their SHA-256 (checked by
    :func:`load_checkpoint`, so a corrupted file is refused, not loaded) and the metadata. It
    is written to a temporary file in the same folder, flushed to disk and renamed over
    ``path`` (atomic on POSIX), so readers see either the old checkpoint or the new one, never
    a torn file; temporary files left by killed writers are removed.

    Across several hosts (``jax.distributed``), every process must call it: an array split
    over devices of several hosts is first gathered onto each (a collective), then process 0
    alone writes the file, and the others wait until it is written.
    """
    path = pathlib.Path(path)
    host_tree = _on_this_host(tree)
    if jax.process_index() != 0:
        _wait_for_every_process(f"checkpoint {path}")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    for tmp in _stale_temp_files(path):
        tmp.unlink(missing_ok=True)
    tree_bytes = serialization.msgpack_serialize(serialization.to_state_dict(host_tree))
    payload = {
        "format": CHECKPOINT_FORMAT,
        "metadata": json.dumps(metadata or {}, sort_keys=True),
        "sha256": hashlib.sha256(tree_bytes).hexdigest(),
        "tree": tree_bytes,
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
    _wait_for_every_process(f"checkpoint {path}")
    return path


def _on_this_host(tree):
    """``tree``'s arrays as NumPy arrays on this host: fetched from its devices, or, for an
    array split over devices of several hosts, gathered from all of them (a collective that
    every process must reach)."""
    if all(getattr(x, "is_fully_addressable", True) for x in jax.tree.leaves(tree)):
        return jax.device_get(tree)
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(tree, tiled=True)


def _wait_for_every_process(name: str) -> None:
    """A barrier across hosts (nothing on one host): no process reads the checkpoint before
    process 0 has written it."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def load_checkpoint(path, target=None) -> tuple[Any, dict]:
    """Read a checkpoint written by :func:`save_checkpoint`: returns ``(tree, metadata)``.

    Without ``target`` the tree comes back as nested dicts of arrays (enough for parameters);
    with a ``target`` of the saved structure (e.g. a fresh ``TrainState``) it is restored into
    that structure. A file that is not such a checkpoint, or whose contents do not match the
    hash written with them, raises ``ValueError`` naming the file.
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
    if hashlib.sha256(payload["tree"]).hexdigest() != payload["sha256"]:
        raise ValueError(f"{path} is corrupt: its contents do not match the hash written "
                         "with them")
    tree = serialization.msgpack_restore(payload["tree"])
    if target is not None:
        tree = serialization.from_state_dict(target, tree)
    tree = jax.tree_util.tree_map(jnp.asarray, tree)
    return tree, json.loads(payload["metadata"])
