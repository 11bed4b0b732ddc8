"""The mini GPT: a decoder-only transformer written as pure functions over a parameter pytree.

This is the substrate every chapter trains: the policy, the reference model, the reward model
(a scalar head on the final hidden states, ch. 5) and the value model (ch. 6). Its default shape
is the mini GPT of the lecture notes' numpy "Build" lesson (Reward Model + PPO): ``d_model``
128, 4 heads, 4 layers, context 128, ``d_ff`` 512, byte-level vocabulary, tied input/output
embeddings.

Architecture (GPT-2 style, pre-norm)::

    x_0 = E[tokens] + P[positions]                      token + learned position embeddings
    x   = x + Attn(LN_1(x))                             causal multi-head self-attention
    x   = x + MLP(LN_2(x)),  MLP(u) = GELU(u W_1 + b_1) W_2 + b_2
    h   = LN_f(x_L);  logits = h E^T                    tied LM head

Simplifications, and why:

* No dropout: the synthetic world is small and clean, and pure functions stay deterministic.
* Attention projections have no biases (as in the lesson's mini GPT); GELU instead of the
  lesson's ReLU (GPT-2's choice; it changes no parameter count).
* The layers' parameters are *stacked* along a leading axis ``L`` and applied with one
  ``lax.scan`` over layers (unrolled when compiled, which XLA:CPU differentiates faster).
* Dense layers flatten ``[N, T, D]`` activations to ``[N*T, D]`` before the matmul: XLA:CPU
  differentiates 2-D matmuls several times faster than batched 3-D ones.

Shapes: ``N`` sequences, ``T`` tokens, ``D`` = ``d_model``, ``H`` heads, ``V`` vocabulary.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_book.lm import sharding, tokenizer
from rlhf_book.lm.checks import check_positive_ints

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    """Shape of the mini GPT. Frozen and hashable, so it can be a static argument of ``jit``.

    The defaults are the lectures' mini GPT (the numpy "Build" lesson: vocab 256, d 128,
    4 heads, 4 layers, context 128, d_ff 512); our vocabulary adds the special tokens of
    :mod:`rlhf_book.lm.tokenizer` to the 256 bytes.
    """

    vocab_size: int = tokenizer.VOCAB_SIZE
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 4
    max_seq_len: int = 128
    d_ff: int = 512

    def __post_init__(self):
        check_positive_ints(self, "vocab_size", "d_model", "n_heads", "n_layers", "max_seq_len",
                            "d_ff")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"GPTConfig.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


# Named configurations: "mini" is the lectures' model; the smaller ones keep notebooks and tests
# fast on a laptop CPU.
CONFIGS: dict[str, GPTConfig] = {
    "tiny": GPTConfig(d_model=32, n_heads=2, n_layers=2, max_seq_len=64, d_ff=128),
    "small": GPTConfig(d_model=64, n_heads=4, n_layers=2, max_seq_len=128, d_ff=256),
    "mini": GPTConfig(),
}


def get_config(name: str) -> GPTConfig:
    """Look up a named configuration (``tiny``, ``small``, ``mini``)."""
    if name not in CONFIGS:
        raise ValueError(f"config name must be one of {sorted(CONFIGS)}, got {name!r}")
    return CONFIGS[name]


# ----------------------------------------------------------------------------------------------
# Parameters


def init_params(key: jax.Array, config: GPTConfig) -> Params:
    """Random initial parameters: N(0, 0.02^2) weights, zero biases, unit LayerNorm scales.

    As in GPT-2, the two projections that write into the residual stream (``wo`` and ``w2``)
    are scaled down by ``1/sqrt(2 L)`` so the residual's variance does not grow with depth.
    """
    L, D, F, V, T = config.n_layers, config.d_model, config.d_ff, config.vocab_size, config.max_seq_len
    std, resid_std = 0.02, 0.02 / math.sqrt(2 * L)
    keys = iter(jax.random.split(key, 8))

    def normal(shape, scale):
        return scale * jax.random.normal(next(keys), shape, jnp.float32)

    def layer_norm_params(*lead):
        return {"scale": jnp.ones((*lead, D)), "bias": jnp.zeros((*lead, D))}

    return {
        "tok_emb": normal((V, D), std),
        "pos_emb": normal((T, D), std),
        "blocks": {  # every leaf has a leading layer axis of size L
            "ln1": layer_norm_params(L),
            "attn": {
                "wq": normal((L, D, D), std),
                "wk": normal((L, D, D), std),
                "wv": normal((L, D, D), std),
                "wo": normal((L, D, D), resid_std),
            },
            "ln2": layer_norm_params(L),
            "mlp": {
                "w1": normal((L, D, F), std),
                "b1": jnp.zeros((L, F)),
                "w2": normal((L, F, D), resid_std),
                "b2": jnp.zeros((L, D)),
            },
        },
        "ln_f": layer_norm_params(),
    }


def count_params(params: Params) -> int:
    """Total number of scalars in a parameter pytree."""
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(params)))


# ----------------------------------------------------------------------------------------------
# Layers


# [guide:layer-norm]
def layer_norm(x: jax.Array, p: Params, eps: float = 1e-5) -> jax.Array:
    """LayerNorm over the last axis: ``(x - mean) / sqrt(var + eps) * scale + bias``."""
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * p["scale"] + p["bias"]
# [/guide]


def dense(x: jax.Array, w: jax.Array) -> jax.Array:
    """``x @ w`` for ``x [..., D_in]``, computed as one 2-D matmul (fast to differentiate on CPU)."""
    return (x.reshape(-1, x.shape[-1]) @ w).reshape(*x.shape[:-1], w.shape[-1])


# [guide:causal-mask]
def causal_mask(t: int) -> jax.Array:
    """``[t, t]`` boolean mask, True where query ``i`` may attend to key ``j`` (``j <= i``).

    Book Appendix A.1, eq. 141: the model factorises ``P(x) = prod_t P(x_t | x_<t)``, so the
    prediction at position ``i`` may read positions ``0..i`` and nothing later. ``t`` is a
    Python int (a static shape under ``jit``).
    """
    # BEGIN SOLUTION
    return jnp.tril(jnp.ones((t, t), dtype=bool))
    # END SOLUTION
# [/guide]


# [guide:attention]
def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Scaled dot-product attention, ``softmax(q k^T / sqrt(d), masked) v`` (Vaswani et al. 2017;
    the attention of the mini GPT of book Appendix A.1).

    Shapes: ``q [N, H, S, d]``, ``k, v [N, H, K, d]``, ``mask`` broadcastable to
    ``[N, H, S, K]`` (True = may attend); returns ``[N, H, S, d]``. The softmax runs over the
    keys a query may see; a masked key gets weight 0. A query row with no visible key yields the
    uniform average of all ``K`` values, not NaN, and scores of any size (``|q.k| ~ 1e3``) give
    finite results.

    How: masked scores get the most negative finite float (``jnp.finfo(dtype).min``) rather than
    ``-inf``, so a fully masked row softmaxes to equal weights; ``jax.nn.softmax`` subtracts each
    row's maximum, so large scores do not overflow. Two ``einsum`` calls form the scores and the
    weighted values.
    """
    # BEGIN SOLUTION
    scores = jnp.einsum("nhsd,nhkd->nhsk", q, k) / math.sqrt(q.shape[-1])
    scores = jnp.where(mask, scores, jnp.finfo(scores.dtype).min)
    return jnp.einsum("nhsk,nhkd->nhsd", jax.nn.softmax(scores, axis=-1), v)
    # END SOLUTION
# [/guide]


def _split_heads(x: jax.Array, n_heads: int) -> jax.Array:
    N, S, D = x.shape
    return x.reshape(N, S, n_heads, D // n_heads).transpose(0, 2, 1, 3)  # [N, H, S, d]


def _merge_heads(x: jax.Array) -> jax.Array:
    N, H, S, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(N, S, H * d)


# [guide:self-attention]
def write_kv_cache(cache, k: jax.Array, v: jax.Array, start):
    """Write the keys and values of new tokens into a KV cache; say what each new query may read.

    ``cache = (keys, values)``, each ``[N, H, T, d]`` with ``T = max_seq_len``; ``k, v``
    ``[N, H, S, d]`` are the new tokens', which sit at positions ``start .. start+S-1``
    (``start`` a scalar), or, with ``S = 1``, at ``start [N]``, one position per row (rows whose
    prompts differ in length decode in step). Returns ``((keys, values), mask)``: the cache with
    the new entries written at those positions (every other entry unchanged), and the boolean
    ``mask``, broadcastable to ``[N, H, S, T]``, True where new query ``s`` may attend to cached
    position ``j``: ``j <= `` its own position (causal, eq. 141 of book Appendix A.1, over the
    cache). Positions past the query's are stale or empty and must not be read.

    How: with a scalar ``start`` one ``dynamic_update_slice`` writes the ``S`` new rows (a
    traced ``start`` is fine: the shapes stay static) and the mask is ``[S, T]``; with a start
    per row, an indexed ``.at[rows, :, start].set`` writes one row each and the mask is
    ``[N, 1, 1, T]``.
    """
    # BEGIN SOLUTION
    T = cache[0].shape[2]
    if jnp.ndim(start) == 0:
        keys = jax.lax.dynamic_update_slice(cache[0], k, (0, 0, start, 0))
        values = jax.lax.dynamic_update_slice(cache[1], v, (0, 0, start, 0))
        mask = jnp.arange(T)[None, :] <= start + jnp.arange(k.shape[2])[:, None]  # [S, T]
    else:  # row n writes its one key at position start[n] and reads keys 0 .. start[n]
        rows = jnp.arange(k.shape[0])
        keys = cache[0].at[rows, :, start].set(k[:, :, 0])
        values = cache[1].at[rows, :, start].set(v[:, :, 0])
        mask = (jnp.arange(T) <= start[:, None])[:, None, None, :]  # [N, 1, 1, T]
    return (keys, values), mask
    # END SOLUTION


def self_attention(p: Params, x: jax.Array, config: GPTConfig, cache=None, start=0, mask=None):
    """Causal multi-head self-attention of ``x [N, S, D]``.

    Without a cache the ``S`` tokens attend causally among themselves, or as ``mask``
    (``[N, S, S]``, True = may attend) says when given: packed sequences pass a block-diagonal
    causal mask so that no document sees another (chapter 4). With a cache
    ``(k, v)`` of shape ``[N, H, max_seq_len, d]``, the new tokens sit at positions
    ``start .. start+S-1``: their keys and values are written into the cache
    (:func:`write_kv_cache`), and each attends to every cached position up to its own.
    ``start`` may also be ``[N]`` with ``S = 1``: each row feeds one token at its own position.
    Returns ``(out [N, S, D], new_cache or None)``.
    """
    H = config.n_heads
    q, k, v = (_split_heads(dense(x, p[w]), H) for w in ("wq", "wk", "wv"))
    if cache is None:
        mask = causal_mask(x.shape[1]) if mask is None else mask[:, None]  # [N, 1, S, S]
    else:  # attend over the whole cache: the keys written so far, and the new ones
        cache, mask = write_kv_cache(cache, k, v, start)
        k, v = cache
    out = _merge_heads(attend(q, k, v, mask))
    return dense(out, p["wo"]), cache
# [/guide]


# [guide:block]
def mlp(p: Params, x: jax.Array) -> jax.Array:
    """Position-wise feed-forward network ``GELU(x W_1 + b_1) W_2 + b_2``."""
    return dense(jax.nn.gelu(dense(x, p["w1"]) + p["b1"]), p["w2"]) + p["b2"]


def block(p: Params, x: jax.Array, config: GPTConfig, cache=None, start=0, mask=None):
    """One pre-norm transformer block: ``x + Attn(LN(x))`` then ``x + MLP(LN(x))``."""
    a, cache = self_attention(p["attn"], layer_norm(x, p["ln1"]), config, cache, start, mask)
    x = x + a
    x = x + mlp(p["mlp"], layer_norm(x, p["ln2"]))
    return x, cache
# [/guide]


# ----------------------------------------------------------------------------------------------
# The model


def check_tokens(tokens, config: GPTConfig, *, name: str = "tokens", max_len: int | None = None):
    """Validate a token batch: rank 2, integer ids, at most ``max_len`` long, ids in the vocabulary.

    The id range can only be checked on concrete arrays; under ``jit`` it is skipped (an
    out-of-range id would silently be clamped by the embedding lookup, hence the eager check).
    """
    max_len = config.max_seq_len if max_len is None else max_len
    shape = getattr(tokens, "shape", None)
    if shape is None or len(shape) != 2:
        raise ValueError(f"{name} must have shape [N, T] (rank 2), got shape {shape}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"{name} must hold integer ids, got dtype {tokens.dtype}")
    if shape[1] > max_len:
        raise ValueError(
            f"{name} has {shape[1]} positions, more than max_seq_len={max_len} of the model"
        )
    if not isinstance(tokens, jax.core.Tracer) and tokens.size:
        ids = np.asarray(tokens)  # NumPy: also concrete when captured inside a jit trace
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= config.vocab_size:
            raise ValueError(
                f"{name} ids must lie in [0, {config.vocab_size}), got values in [{lo}, {hi}]"
            )


# [guide:forward]
def embed(params: Params, tokens: jax.Array, start=0, positions=None) -> jax.Array:
    """Token plus learned position embeddings: ``[N, S, D]``.

    Tokens sit at positions ``start ..`` (``start`` a scalar, or ``[N]``: one start per row),
    or at ``positions [N, S]`` when given (packed sequences restart their positions at every
    document).
    """
    if positions is None and jnp.ndim(start) == 1:
        positions = start[:, None] + jnp.arange(tokens.shape[1])
    if positions is not None:
        return params["tok_emb"][tokens] + params["pos_emb"][positions]
    S = tokens.shape[1]
    pos = jax.lax.dynamic_slice_in_dim(params["pos_emb"], start, S, axis=0)
    return params["tok_emb"][tokens] + pos


def segment_positions(segment_ids: jax.Array) -> jax.Array:
    """Position of each token within its segment: ``[N, T] -> [N, T]``, 0 at every segment start.

    A segment is a run of equal ids, e.g. ``[1 1 1 2 2 0 0] -> [0 1 2 0 1 0 1]``.
    """
    T = segment_ids.shape[1]
    t = jnp.arange(T)
    is_start = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], bool),
                                segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    start = jax.lax.cummax(jnp.where(is_start, t, 0), axis=1)
    return t - start


def segment_mask(segment_ids: jax.Array) -> jax.Array:
    """Block-diagonal causal mask ``[N, T, T]``: query ``i`` may attend to key ``j`` when
    ``j <= i`` and both belong to the same segment (sequence packing, chapter 4)."""
    T = segment_ids.shape[1]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    return same & causal_mask(T)[None]


def unembed(params: Params, x: jax.Array):
    """Final LayerNorm and the tied LM head: returns ``(logits [N, S, V], hidden [N, S, D])``."""
    h = layer_norm(x, params["ln_f"])
    return dense(h, params["tok_emb"].T), h


def check_params(params: Params, config: GPTConfig) -> None:
    """The parameters' shapes are those :func:`init_params` gives ``config`` (a checkpoint of
    another model size would otherwise crash deep inside a matmul, or silently run). Shapes are
    static, so this also works under ``jit``."""
    expected = _param_shapes(config)
    try:
        got = jax.tree_util.tree_map(lambda e, p: p.shape == e.shape, expected, params)
    except (ValueError, TypeError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"params do not have the structure of a GPT ({first})") from None
    if not all(jax.tree_util.tree_leaves(got)):
        bad = next(jax.tree_util.keystr(path) for path, ok
                   in jax.tree_util.tree_leaves_with_path(got) if not ok)
        raise ValueError(f"params do not match {config}: params{bad} has shape "
                         f"{_leaf(params, bad)}, expected {_leaf(expected, bad)}")


@functools.lru_cache(maxsize=None)
def _param_shapes(config: GPTConfig):
    return jax.eval_shape(functools.partial(init_params, config=config), jax.random.PRNGKey(0))


def _leaf(tree, path: str):
    """The shape of the leaf of ``tree`` at a ``keystr`` path such as ``['blocks']['ln1']``."""
    for key in path.strip("[]'").split("']['"):
        tree = tree[key]
    return tuple(tree.shape)


def forward(params: Params, tokens: jax.Array, config: GPTConfig, *, return_hidden: bool = False,
            segment_ids: jax.Array | None = None):
    """Logits of the next token at every position.

    Args:
        params: from :func:`init_params`.
        tokens: ``[N, T]`` integer ids, ``T <= config.max_seq_len``.
        config: the model's :class:`GPTConfig` (static under ``jit``).
        return_hidden: also return the final hidden states ``[N, T, D]`` (after ``LN_f``), on
            which chapters 5 and 6 put their reward and value heads.
        segment_ids: optional ``[N, T]`` ids of packed sequences (chapter 4). Each run of equal
            ids is a separate document: it attends only within itself and its positions start
            at 0, so its logits equal those of the document run alone.

    Returns:
        ``logits [N, T, V]`` where ``logits[:, t]`` scores token ``t + 1``; or
        ``(logits, hidden)`` with ``return_hidden=True``.
    """
    check_tokens(tokens, config)
    check_params(params, config)
    mask = None
    if segment_ids is None:
        x = embed(params, tokens)
    else:
        if getattr(segment_ids, "shape", None) != tokens.shape:
            raise ValueError(f"segment_ids must have the shape of tokens {tokens.shape}, "
                             f"got {getattr(segment_ids, 'shape', None)}")
        x = embed(params, tokens, positions=segment_positions(segment_ids))
        mask = segment_mask(segment_ids)

    def layer(x, p):
        # On a mesh, keep the residual stream split by rows (a no-op on one device), so that
        # XLA gathers FSDP's weights to meet it rather than re-splitting the activations.
        return block(p, sharding.shard_batch(x), config, mask=mask)[0], None

    # unroll=True: one scan keeps the stacked-layer structure, but XLA:CPU differentiates the
    # unrolled loop ~30% faster than a rolled one (measured on the default config).
    x, _ = jax.lax.scan(layer, x, params["blocks"], unroll=True)
    logits, hidden = unembed(params, x)
    return (logits, hidden) if return_hidden else logits
# [/guide]


# [guide:kv-cache]
def init_cache(config: GPTConfig, batch_size: int):
    """An empty KV cache: one ``(keys, values)`` pair per layer, each ``[N, H, max_seq_len, d]``.

    A tuple of per-layer buffers rather than one stacked ``[L, ...]`` array: inside the
    sampling loop XLA then writes each new key in place, where a stacked cache threaded
    through ``lax.scan`` over layers is copied whole at every token (measured: generation
    2.5x slower on the default model).
    """
    shape = (batch_size, config.n_heads, config.max_seq_len, config.head_dim)
    return tuple((jnp.zeros(shape), jnp.zeros(shape)) for _ in range(config.n_layers))


def forward_cached(params: Params, tokens: jax.Array, start, cache, config: GPTConfig):
    """The decode step: run ``tokens [N, S]`` sitting at positions ``start .. start+S-1``
    against a KV cache.

    ``cache`` is a tuple with one ``(keys, values)`` pair per layer, each ``[N, H, T, d]``
    (:func:`init_cache`), holding the keys and values of every earlier position;
    ``params["blocks"]`` holds every layer's parameters stacked on a leading ``[L]`` axis;
    ``start`` is a scalar, or ``[N]`` positions (one per row) when ``S = 1``. Returns ``(logits [N, S, V],
    new_cache)``, the cache with the new tokens' keys and values written in every layer.
    Feeding a sequence in pieces (a prompt, then one token at a time) gives the same logits as
    :func:`forward` on the whole sequence (book Appendix A.1, eq. 141: position ``t`` reads
    positions ``<= t`` only), at a cost per new token that does not grow with the prefix.

    How: embed the tokens at their positions (:func:`embed` with ``start``); then, layer by
    layer, slice that layer's parameters out of ``params["blocks"]`` and run :func:`block` with that layer's cache, which writes the new keys and
    values (:func:`write_kv_cache`) and attends over the cache; collect the new caches; the
    logits come from :func:`unembed`. A Python loop over layers, not a ``lax.scan``: each layer
    keeps its own buffer, which XLA updates in place.
    """
    check_tokens(tokens, config)
    if not isinstance(start, jax.core.Tracer):  # past the window the cache would wrap around
        last = int(np.max(np.asarray(start))) + tokens.shape[1]
        if int(np.min(np.asarray(start))) < 0 or last > config.max_seq_len:
            raise ValueError(f"start must keep positions within [0, {config.max_seq_len}), "
                             f"got positions up to {last - 1}")
    # BEGIN SOLUTION
    x = embed(params, tokens, start)
    new_cache = []
    for layer, layer_cache in enumerate(cache):  # a Python loop: one buffer per layer
        p = jax.tree_util.tree_map(lambda leaf: leaf[layer], params["blocks"])
        x, layer_cache = block(p, x, config, layer_cache, start)
        new_cache.append(layer_cache)
    return unembed(params, x)[0], tuple(new_cache)
    # END SOLUTION
# [/guide]
