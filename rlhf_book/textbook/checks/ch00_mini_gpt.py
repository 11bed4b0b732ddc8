"""Grading checks for chapter 0 (the mini GPT).

Oracles: plain NumPy loops in float64 written from the equations, ``optax``'s softmax
cross-entropy, the gradient identity ``d log softmax(z)_y / dz = onehot(y) - softmax(z)``, and
Monte-Carlo frequencies of the lecture notes' token policy {0.6, 0.3, 0.1}, accepted
within five standard errors; for the KV cache (0.5, 0.6), a loop over rows and new tokens and
the uncached forward pass of the whole sequence.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlhf_book.data.toy import LESSON_TOKEN_POLICY
from rlhf_book.lm import gpt
from rlhf_book.textbook.checks import (Mismatch, call, expect, expect_close, expect_dtype,
                                       expect_finite, expect_shape, grad_of_sum, jit, probe,
                                       require)


# ----------------------------------------------------------------------------------------------
# 0.1 the causal mask


def causal_mask(fn):
    for t in (1, 2, 5, 9):
        what = f"causal_mask({t})"
        out = fn(t)
        expect_shape(out, (t, t), what)
        expect_dtype(out, "b", what)
        expected = np.array([[j <= i for j in range(t)] for i in range(t)])  # key j <= query i
        expect_close(out, expected, what)
    out = jit(fn, static_argnums=0)(6)
    expect_close(out, np.tril(np.ones((6, 6), bool)), "jax.jit(causal_mask, static_argnums=0)(6)")


# ----------------------------------------------------------------------------------------------
# 0.2 scaled dot-product attention


def attention_loop(q, k, v, mask):
    """softmax over the visible keys of q.k / sqrt(d), then the weighted sum of values; a query
    that sees no key averages all values uniformly (the library's documented convention)."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    N, H, S, d = q.shape
    K = k.shape[2]
    mask = np.broadcast_to(np.asarray(mask, bool), (N, H, S, K))
    out = np.zeros((N, H, S, d))
    for n in range(N):
        for h in range(H):
            for s in range(S):
                visible = [j for j in range(K) if mask[n, h, s, j]]
                if not visible:
                    out[n, h, s] = v[n, h].mean(axis=0)
                    continue
                scores = np.array([q[n, h, s] @ k[n, h, j] / math.sqrt(d) for j in visible])
                weights = np.exp(scores - scores.max())
                weights /= weights.sum()
                out[n, h, s] = sum(w * v[n, h, j] for w, j in zip(weights, visible))
    return out


def attend(fn):
    rng = np.random.default_rng(0)
    N, H, S, d = 2, 3, 5, 4

    def qkv(S, K, scale=1.0):
        return tuple(jnp.asarray(scale * rng.standard_normal(shape), jnp.float32)
                     for shape in ((N, H, S, d), (N, H, K, d), (N, H, K, d)))

    causal = np.tril(np.ones((S, S), bool))
    q, k, v = qkv(S, S)
    expect_close(fn(q, k, v, causal), attention_loop(q, k, v, causal),
                 "attend(q, k, v, causal [5, 5])", atol=1e-5)

    # queries and keys of different lengths; a mask with one value per (n, s, k)
    q, k, v = qkv(2, 5)
    mask = rng.random((N, 1, 2, 5)) < 0.6
    expect_close(fn(q, k, v, mask), attention_loop(q, k, v, mask),
                 "attend(q [2,3,2,4], k, v [2,3,5,4], random mask [2,1,2,5])", atol=1e-5)

    # a query row that may see nothing must not produce NaN
    q, k, v = qkv(S, S)
    blind = causal.copy()
    blind[0] = False
    out = fn(q, k, v, blind)
    expect_finite(out, "attend(...) with a fully masked query row")
    expect_close(out, attention_loop(q, k, v, blind),
                 "attend(...) with a fully masked query row (expected: the uniform average)",
                 atol=1e-5)

    # large scores: softmax must be computed stably
    q, k, v = qkv(S, S, scale=30.0)
    expect_close(fn(q, k, v, causal), attention_loop(q, k, v, causal),
                 "attend(...) with large scores (|q.k| ~ 1e3)", atol=1e-3, rtol=1e-4)
    expect_close(jit(fn)(q, k, v, causal), fn(q, k, v, causal), "jax.jit(attend)(...)",
                 atol=1e-5)


# ----------------------------------------------------------------------------------------------
# 0.3 log-probabilities from logits (minus the softmax cross-entropy)


def log_softmax_loop(logits, targets):
    logits = np.asarray(logits, np.float64)
    flat, flat_targets = logits.reshape(-1, logits.shape[-1]), np.asarray(targets).reshape(-1)
    out = np.empty(len(flat))
    for i, (row, y) in enumerate(zip(flat, flat_targets)):
        m = row.max()
        out[i] = row[y] - (m + math.log(sum(math.exp(z - m) for z in row)))
    return out.reshape(np.shape(targets))


def log_probs_from_logits(fn):
    rng = np.random.default_rng(0)
    logits = jnp.asarray(3 * rng.standard_normal((2, 3, 7)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 7, (2, 3)), jnp.int32)
    out = expect_shape(fn(logits, targets), (2, 3), "log_probs_from_logits(logits [2,3,7], targets [2,3])")
    expect_close(out, log_softmax_loop(logits, targets), "log_probs_from_logits(logits [2,3,7], ...)")
    expect_close(out, -optax.softmax_cross_entropy_with_integer_labels(logits, targets),
                 "log_probs_from_logits vs -optax.softmax_cross_entropy_with_integer_labels")

    one = fn(logits[0, 0], targets[0, 0])
    expect_shape(one, (), "log_probs_from_logits(logits [7], target [])")

    extreme = jnp.array([[1e4, -1e4, 0.0]] * 3, jnp.float32)
    which = jnp.array([0, 1, 2])
    out = expect_finite(fn(extreme, which), "log_probs_from_logits with logits +-1e4")
    expect_close(out, [0.0, -2e4, -1e4], "log_probs_from_logits([1e4, -1e4, 0], targets 0, 1, 2)",
                 atol=1e-3)

    grad = grad_of_sum(fn)(logits, targets)
    z = np.asarray(logits, np.float64)
    softmax = np.exp(z - z.max(-1, keepdims=True))
    softmax /= softmax.sum(-1, keepdims=True)
    expect_close(grad, np.eye(7)[np.asarray(targets)] - softmax,
                 "gradient of sum(log_probs_from_logits) (expected onehot - softmax)", atol=1e-5)
    expect_close(jit(fn)(logits, targets), log_softmax_loop(logits, targets),
                 "jax.jit(log_probs_from_logits)(...)")


# ----------------------------------------------------------------------------------------------
# 0.4 temperature and top-k sampling

TOKEN_POLICY = np.array(list(LESSON_TOKEN_POLICY.values()))  # {0.6, 0.3, 0.1}


def _frequencies_match(tokens, probs, what):
    n = len(tokens)
    freq = np.bincount(tokens, minlength=len(probs)) / n
    se = np.sqrt(probs * (1 - probs) / n)
    worst = int(np.argmax(np.abs(freq - probs) / np.maximum(se, 1e-12)))
    expect(np.all(np.abs(freq - probs) <= 5 * se + 1e-12),
           f"{what}: token {worst} drawn with frequency {freq[worst]:.4f} in {n} draws, "
           f"expected {probs[worst]:.4f} +- {5 * se[worst]:.4f} (5 standard errors)")


def sample_token(fn):
    n = 20_000
    logits = jnp.tile(jnp.log(jnp.asarray(TOKEN_POLICY, jnp.float32)), (n, 1))
    key = jax.random.PRNGKey(0)
    for tau in (1.0, 0.5, 2.0):
        what = f"sample_token(key, logits [{n}, 3], temperature={tau})"
        out = fn(key, logits, tau)
        require(isinstance(out, tuple) and len(out) == 2,
                f"{what} must return a pair (tokens, logprobs), got {type(out).__name__}")
        tokens, logprobs = out
        tokens = expect_dtype(expect_shape(tokens, (n,), what + " tokens"), "i", what + " tokens")
        logprobs = expect_shape(logprobs, (n,), what + " logprobs")
        p_tau = TOKEN_POLICY ** (1 / tau) / np.sum(TOKEN_POLICY ** (1 / tau))
        _frequencies_match(tokens, p_tau, what)
        expect_close(logprobs, np.log(p_tau)[tokens], what + " logprobs (log softmax(logits/tau))",
                     atol=1e-5)

    what = f"sample_token(key, logits [{n}, 3], temperature=1.0, top_k=2)"
    tokens, logprobs = fn(key, logits, 1.0, 2)
    tokens = np.asarray(tokens)
    _frequencies_match(tokens, np.array([2 / 3, 1 / 3, 0.0]), what)
    expect_close(logprobs, np.log(TOKEN_POLICY)[tokens],
                 what + " logprobs (expected before the top-k cut)", atol=1e-5)

    rng = np.random.default_rng(0)
    random_logits = jnp.asarray(rng.standard_normal((8, 11)), jnp.float32)
    what = "sample_token(key, logits [8, 11], temperature=0)"
    tokens, logprobs = fn(key, random_logits, 0.0)
    best = np.argmax(np.asarray(random_logits), axis=-1)
    expect_close(tokens, best, what + " (expected the argmax)")
    expect_close(logprobs, log_softmax_loop(random_logits, best), what + " logprobs (at tau = 1)")

    jitted = jit(fn, static_argnums=3)
    for tau in (0.7, 0.0):
        what = f"jax.jit(sample_token)(key, logits, temperature={tau} as a traced array)"
        tokens, logprobs = jitted(key, random_logits, jnp.float32(tau), 3)
        eager_tokens, eager_logprobs = fn(key, random_logits, tau, 3)
        expect_close(tokens, eager_tokens, what + " tokens vs eager")
        expect_close(logprobs, eager_logprobs, what + " logprobs vs eager", atol=1e-5)


# ----------------------------------------------------------------------------------------------
# 0.5 the KV cache: write the new keys and values, mask what each query may not read


def _kv_cache_loop(cache_k, cache_v, k, v, start):
    """The expected ``(keys, values, mask [N, H, S, T])`` of a cache write, as a loop over rows
    and new tokens in float64: token ``s`` of row ``n`` sits at position ``p = start (+ s)`` and
    may read the cached positions ``0 .. p``."""
    keys, values = np.array(cache_k, np.float64), np.array(cache_v, np.float64)
    N, H, T, _ = keys.shape
    S = k.shape[2]
    starts = np.broadcast_to(np.asarray(start), (N,))
    mask = np.zeros((N, H, S, T), bool)
    for n in range(N):
        for s in range(S):
            p = int(starts[n]) + s
            keys[n, :, p], values[n, :, p] = k[n, :, s], v[n, :, s]
            mask[n, :, s, : p + 1] = True
    return keys, values, mask


def _kv_cache_outputs(out, what, shape):
    require(isinstance(out, (tuple, list)) and len(out) == 2,
            f"{what} returned {type(out).__name__}, not ((keys, values), mask)")
    cache, mask = out
    require(isinstance(cache, (tuple, list)) and len(cache) == 2,
            f"{what}: the first output must be the cache (keys, values)")
    keys = expect_finite(expect_shape(cache[0], shape, what + " keys"), what + " keys")
    values = expect_finite(expect_shape(cache[1], shape, what + " values"), what + " values")
    mask = np.asarray(mask)
    require(mask.ndim <= 4, f"{what}: the mask has {mask.ndim} axes; it must broadcast to "
                            "[N, H, S, T]")
    return keys, values, mask


def write_kv_cache(fn):
    rng = np.random.default_rng(5)
    N, H, T, d = 2, 2, 8, 3
    cache_k = rng.standard_normal((N, H, T, d)).astype(np.float32)
    cache_v = rng.standard_normal((N, H, T, d)).astype(np.float32)
    k = rng.standard_normal((N, H, 3, d)).astype(np.float32)
    v = rng.standard_normal((N, H, 3, d)).astype(np.float32)
    cases = [("start=2, 3 new tokens", k, v, 2, False), ("start=0, 3 new tokens", k, v, 0, False),
             ("start=5 as a traced array under jax.jit, 3 new tokens", k, v, 5, True),
             ("start=[1, 6], one new token per row", k[:, :, :1], v[:, :, :1],
              np.array([1, 6], np.int32), False)]
    for label, k_new, v_new, start, traced in cases:
        what = f"write_kv_cache(cache [{N}, {H}, {T}, {d}], {label})"
        args = ((jnp.asarray(cache_k), jnp.asarray(cache_v)), jnp.asarray(k_new),
                jnp.asarray(v_new), jnp.asarray(start, jnp.int32) if traced else start)
        out = jit(fn)(*args) if traced else fn(*args)
        keys, values, mask = _kv_cache_outputs(out, what, (N, H, T, d))
        want_k, want_v, want_mask = _kv_cache_loop(cache_k, cache_v, k_new, v_new, start)
        expect_close(keys, want_k, what + " keys (the new ones at positions start.., every "
                                          "other entry as it was)")
        expect_close(values, want_v, what + " values")
        try:
            mask = np.broadcast_to(mask, want_mask.shape)
        except ValueError:
            raise Mismatch(f"{what}: a mask of shape {mask.shape} does not broadcast to "
                           f"[N, H, S, T] = {list(want_mask.shape)}") from None
        expect_close(mask, want_mask, what + " mask (query s at position p may read "
                                             "positions 0..p, no later one)")


# ----------------------------------------------------------------------------------------------
# 0.6 the decode step: a forward pass against the KV cache


def forward_cached(fn):
    config = gpt.get_config("tiny")
    params = gpt.init_params(jax.random.PRNGKey(0), config)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 10), 0, config.vocab_size)
    full = np.asarray(gpt.forward(params, tokens, config))  # [2, 10, V]

    def step(label, tok, start, cache, traced=False):
        what = f"forward_cached({label})"
        out = (jit(fn, static_argnums=4)(params, tok, jnp.asarray(start, jnp.int32), cache, config)
               if traced else fn(params, tok, start, cache, config))
        require(isinstance(out, (tuple, list)) and len(out) == 2,
                f"{what} returned {type(out).__name__}, not (logits, new_cache)")
        logits, new_cache = out
        expect_finite(expect_shape(logits, (2, tok.shape[1], config.vocab_size), what + " logits"),
                      what + " logits")
        require(isinstance(new_cache, (tuple, list)) and len(new_cache) == config.n_layers,
                f"{what}: the new cache must hold one (keys, values) pair per layer "
                f"({config.n_layers}), got {type(new_cache).__name__}")
        return np.asarray(logits), tuple(tuple(jnp.asarray(a) for a in pair) for pair in new_cache)

    hint = " vs forward(whole sequence) (embed at positions start.., thread each layer's cache)"
    cache = gpt.init_cache(config, 2)
    logits, cache = step("a 4-token prompt at start=0", tokens[:, :4], 0, cache)
    expect_close(logits, full[:, :4], "forward_cached(prompt) logits" + hint, atol=1e-4)
    for t in range(4, 10):
        logits, cache = step(f"one token at start={t}", tokens[:, t:t + 1], t, cache, traced=t % 2)
        expect_close(logits[:, 0], full[:, t], f"forward_cached(token at position {t}) logits"
                     + hint + (" under jax.jit with a traced start" if t % 2 else ""), atol=1e-4)

    # rows at different positions: row 0 re-feeds position 3 with positions 4.. still cached from
    # the longer prefix (stale for it: they must be masked), row 1 feeds position 5
    cache = step("a 5-token prompt at start=0", tokens[:, :5], 0, gpt.init_cache(config, 2))[1]
    start = np.array([3, 5], np.int32)
    row_tokens = jnp.stack([tokens[0, 3:4], tokens[1, 5:6]])
    logits, _ = step("one token per row at start=[3, 5]", row_tokens, start, cache)
    expect_close(logits[:, 0], np.stack([full[0, 3], full[1, 5]]),
                 "forward_cached(start=[3, 5]) logits vs forward (each row at its own position, "
                 "reading cached positions up to its own only)", atol=1e-4)


# ----------------------------------------------------------------------------------------------
# 0.7-0.9 the JAX primer
#
# Oracles: the logistic loss's gradient written out by hand, (sigmoid(z) - y) x for w and
# sigmoid(z) - y for b, one example at a time; SGD applied leaf by leaf by walking the dicts,
# lists and tuples in plain Python; the moving average as a float64 Python loop. A probe traces
# the learner's moving average (jax.make_jaxpr) to count the operations of its program.


def _logistic_grads_loop(params, xs, ys):
    """Per-example gradients of ``softplus(z) - y z``, ``z = x . w + b``, in float64."""
    w, b = np.asarray(params["w"], np.float64), float(params["b"])
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    grad_w, grad_b = np.zeros_like(xs), np.zeros(len(xs))
    for i in range(len(xs)):
        z = float(xs[i] @ w) + b
        residual = 1.0 / (1.0 + math.exp(-z)) - ys[i]
        grad_w[i], grad_b[i] = residual * xs[i], residual
    return grad_w, grad_b


def per_example_grads(fn):
    rng = np.random.default_rng(0)
    cases = [(5, 3, "labels in {0, 1}"), (1, 2, "a batch of one, soft labels"),
             (4, 6, "soft labels")]
    for B, D, label in cases:
        params = {"w": jnp.asarray(rng.standard_normal(D), jnp.float32),
                  "b": jnp.asarray(0.3, jnp.float32)}
        xs = jnp.asarray(rng.standard_normal((B, D)), jnp.float32)
        ys = (rng.integers(0, 2, B) if label.startswith("labels") else rng.random(B))
        ys = jnp.asarray(ys, jnp.float32)
        what = f"per_example_grads(params, xs [{B}, {D}], ys [{B}], {label})"
        try:
            out = fn(params, xs, ys)
        except ValueError as err:
            if "vmap" not in str(err):
                raise
            raise Mismatch(f"{what} raised ValueError ({str(err).splitlines()[0][:120]}): the "
                           "parameters are shared by every example, so jax.vmap must not map "
                           "them (in_axes None for params, 0 for xs and ys)") from None
        require(isinstance(out, dict) and set(out) == {"w", "b"},
                f"{what} must return a dict with the keys of params, 'w' and 'b', got "
                f"{sorted(out) if isinstance(out, dict) else type(out).__name__}")
        grad_w, grad_b = np.asarray(out["w"]), np.asarray(out["b"])
        if B > 1 and (grad_w.shape == (D,) or grad_b.shape == ()):
            raise Mismatch(f"{what} returned one gradient for the whole batch (w {grad_w.shape}, "
                           f"b {grad_b.shape}), expected one per example, w [B, D] = [{B}, {D}] "
                           f"and b [B] = [{B}]: take the gradient of ONE example's loss and map "
                           "it over the batch with jax.vmap, not the gradient of the batch's loss")
        want_w, want_b = _logistic_grads_loop(params, xs, ys)
        expect_close(out["w"], want_w, what + "['w'] (row i: (sigmoid(z_i) - y_i) x_i)",
                     atol=1e-5)
        expect_close(out["b"], want_b, what + "['b'] (entry i: sigmoid(z_i) - y_i)", atol=1e-5)
    out = jit(fn)(params, xs, ys)
    require(isinstance(out, dict) and set(out) == {"w", "b"},
            "jax.jit(per_example_grads)(...) must return a dict with keys 'w' and 'b'")
    expect_close(out["w"], want_w, "jax.jit(per_example_grads)(...)['w']", atol=1e-5)
    expect_close(out["b"], want_b, "jax.jit(per_example_grads)(...)['b']", atol=1e-5)


# 0.8 an SGD step on a pytree


def _sgd_loop(params, grads, learning_rate):
    """``p - learning_rate * g`` for every leaf, walking dicts, lists and tuples by hand."""
    if isinstance(params, dict):
        return {k: _sgd_loop(params[k], grads[k], learning_rate) for k in params}
    if isinstance(params, (list, tuple)):
        return type(params)(_sgd_loop(p, g, learning_rate) for p, g in zip(params, grads))
    return np.asarray(params, np.float64) - float(learning_rate) * np.asarray(grads, np.float64)


def _kind(x) -> str:
    if isinstance(x, dict):
        return f"a dict with keys {sorted(map(str, x))}"
    if isinstance(x, (list, tuple)):
        return f"a {type(x).__name__} of {len(x)}"
    return f"an array of shape {np.shape(x)}" if hasattr(x, "shape") else type(x).__name__


def _expect_tree(out, expected, what: str, path: str = "") -> None:
    """``out`` has the structure of ``expected`` (a dict stays a dict with the same keys, a
    tuple a tuple, a list a list) and the same leaves."""
    where = f"{what}{path}"
    if isinstance(expected, dict):
        require(isinstance(out, dict) and set(out) == set(expected),
                f"{where} is {_kind(out)}, expected a dict with keys {sorted(expected)} "
                "(the structure of params)")
        for k in expected:
            _expect_tree(out[k], expected[k], what, f"{path}[{k!r}]")
    elif isinstance(expected, (list, tuple)):
        require(type(out) is type(expected) and len(out) == len(expected),
                f"{where} is {_kind(out)}, expected a {type(expected).__name__} of "
                f"{len(expected)} (the structure of params: a tuple stays a tuple)")
        for i, (o, e) in enumerate(zip(out, expected)):
            _expect_tree(o, e, what, f"{path}[{i}]")
    else:
        expect_close(out, expected, where, atol=1e-6)


def sgd_step(fn):
    rng = np.random.default_rng(0)

    def array(*shape):
        return jnp.asarray(rng.standard_normal(shape), jnp.float32)

    flat = ({"w": array(3), "b": array()}, {"w": array(3), "b": array()})
    nested = ({"layer": {"w": array(2, 3), "b": array(3)}, "head": (array(3), array())},
              {"layer": {"w": array(2, 3), "b": array(3)}, "head": (array(3), array())})
    blocks = ({"blocks": [{"w": array(2)}, {"w": array(2)}], "scale": array()},
              {"blocks": [{"w": array(2)}, {"w": array(2)}], "scale": array()})
    lone = (array(4), array(4))
    cases = [("{'w': [3], 'b': []}", flat, 0.1),
             ("{'layer': {'w': [2, 3], 'b': [3]}, 'head': (w [3], b [])}", nested, 0.05),
             ("{'blocks': [{'w': [2]}, {'w': [2]}], 'scale': []}", blocks, 0.5),
             ("a lone array [4] (a leaf is a pytree too)", lone, 0.25)]
    for label, (params, grads), lr in cases:
        what = f"sgd_step({label}, grads, learning_rate={lr})"
        try:
            out = fn(params, grads, lr)
        except (TypeError, KeyError, AttributeError) as err:
            raise Mismatch(f"{what} raised {type(err).__name__} ({str(err)[:100]}): params may "
                           "be any nesting of dicts, lists and tuples with arrays as leaves; "
                           "jax.tree_util.tree_map(f, params, grads) applies f to every pair of "
                           "leaves and rebuilds the structure") from None
        expected = _sgd_loop(params, grads, lr)
        if label == cases[0][0] and isinstance(out, dict) and set(out) == {"w", "b"}:
            uphill = _sgd_loop(params, grads, -lr)
            if np.allclose(np.asarray(out["w"]), uphill["w"], atol=1e-6):
                raise Mismatch(f"{what}: every leaf moved UP the gradient, p + lr * g; "
                               "gradient descent subtracts: p - lr * g")
        _expect_tree(out, expected, what)
    params, grads = nested
    what = "jax.jit(sgd_step)(nested params, grads, learning_rate traced = 0.5)"
    _expect_tree(jit(fn)(params, grads, jnp.float32(0.5)), _sgd_loop(params, grads, 0.5), what)


# 0.9 an exponential moving average (a loop with a carry)


def _ema_loop(xs, decay):
    xs = np.asarray(xs, np.float64)
    out = np.empty_like(xs)
    out[0] = xs[0]
    for t in range(1, len(xs)):
        out[t] = decay * out[t - 1] + (1 - decay) * xs[t]
    return out


def _ema_diagnosis(out, xs, decay) -> str:
    """A hint naming the common bug that ``out`` reproduces, or '' (each alternative computed
    here from its own description)."""
    xs = np.asarray(xs, np.float64)
    from_zero = np.empty_like(xs)
    m = np.zeros_like(xs[0])
    for t in range(len(xs)):
        m = decay * m + (1 - decay) * xs[t]
        from_zero[t] = m
    late = np.concatenate([xs[:1], _ema_loop(xs, decay)[:-1]])
    wrong = {
        "the average started from 0: the first average is x_0 itself, m_0 = x_0": from_zero,
        "decay and 1 - decay swapped: decay weighs the previous average m_(t-1), 1 - decay "
        "the new x_t": _ema_loop(xs, 1 - decay),
        "each output is the average before x_t was added (one step late): output the new "
        "carry, not the old one": late,
    }
    out = np.asarray(out, np.float64)
    for hint, candidate in wrong.items():
        if out.shape == candidate.shape and np.allclose(out, candidate, atol=1e-5):
            return f" (looks like {hint})"
    return ""


@probe
def traced_size(fn, *args):
    """How many operations ``fn``'s traced program has at its top level (a ``lax.scan`` is
    one, however many steps it runs; a Python loop adds its body once per step)."""
    return len(jax.make_jaxpr(fn)(*args).jaxpr.eqns)


def exponential_moving_average(fn):
    rng = np.random.default_rng(0)
    xs = jnp.asarray(rng.standard_normal(8), jnp.float32)
    grid = jnp.asarray(rng.standard_normal((6, 3)), jnp.float32)
    cases = [("xs [8], decay=0.9", xs, 0.9),
             ("xs [6, 3] (each column on its own), decay=0.5", grid, 0.5),
             ("xs [8], decay=0 (no memory: xs itself)", xs, 0.0),
             ("xs [8], decay=1 (x_0 forever)", xs, 1.0),
             ("xs [1]", xs[:1], 0.3)]
    for label, values, decay in cases:
        what = f"exponential_moving_average({label})"
        out = fn(values, decay)
        expected = _ema_loop(values, decay)
        expect_shape(out, expected.shape, what)
        hint = ("" if np.allclose(np.asarray(out, np.float64), expected, atol=1e-5)
                else _ema_diagnosis(out, values, decay))
        expect_close(out, expected, what + hint, atol=1e-5)
    what = "jax.jit(exponential_moving_average)(xs [8], decay traced = 0.7)"
    expect_close(jit(fn)(xs, jnp.float32(0.7)), _ema_loop(xs, 0.7), what, atol=1e-5)
    short = call(fn, traced_size, jnp.zeros(8, jnp.float32), 0.9)
    long = call(fn, traced_size, jnp.zeros(64, jnp.float32), 0.9)
    expect(long <= short + 2,
           f"exponential_moving_average traced for T = 8 has {short} operations, for T = 64 "
           f"it has {long}: the loop is unrolled, one copy of its body per step (a Python loop "
           "under jax.jit); jax.lax.scan compiles the body once, whatever T")
