"""The mini GPT: shapes, causality, transforms, the KV cache, and an independent NumPy oracle."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from rlhf_book.lm import gpt


def random_tokens(seed, shape, vocab=256):
    return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


# --- an independent NumPy transcription of the architecture, written from the equations -------

def np_layer_norm(x, scale, bias, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * scale + bias


def np_gelu(x):  # the tanh approximation (GPT-2's), as jax.nn.gelu computes by default
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def np_forward(params, tokens, n_heads):
    """Loop over sequences, heads and query positions; float64 throughout."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    out = []
    for seq in np.asarray(tokens):
        T = len(seq)
        x = p["tok_emb"][seq] + p["pos_emb"][:T]
        for l in range(p["blocks"]["attn"]["wq"].shape[0]):
            b = jax.tree_util.tree_map(lambda a: a[l], p["blocks"])
            h = np_layer_norm(x, b["ln1"]["scale"], b["ln1"]["bias"])
            q, k, v = h @ b["attn"]["wq"], h @ b["attn"]["wk"], h @ b["attn"]["wv"]
            d = q.shape[1] // n_heads
            heads = []
            for hd in range(n_heads):
                sl = slice(hd * d, (hd + 1) * d)
                o = np.zeros((T, d))
                for i in range(T):  # query i sees keys 0..i only
                    s = q[i, sl] @ k[: i + 1, sl].T / math.sqrt(d)
                    w = np.exp(s - s.max())
                    o[i] = (w / w.sum()) @ v[: i + 1, sl]
                heads.append(o)
            x = x + np.concatenate(heads, axis=1) @ b["attn"]["wo"]
            h = np_layer_norm(x, b["ln2"]["scale"], b["ln2"]["bias"])
            x = x + np_gelu(h @ b["mlp"]["w1"] + b["mlp"]["b1"]) @ b["mlp"]["w2"] + b["mlp"]["b2"]
        x = np_layer_norm(x, p["ln_f"]["scale"], p["ln_f"]["bias"])
        out.append(x @ p["tok_emb"].T)
    return np.stack(out)


def test_forward_matches_numpy_oracle(tiny_config):
    # Non-trivial LayerNorm parameters and biases, so every parameter is exercised.
    params = gpt.init_params(jax.random.PRNGKey(3), tiny_config)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(4), len(leaves))
    params = jax.tree_util.tree_unflatten(
        treedef, [a + 0.1 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])
    tokens = random_tokens(0, (3, 17))
    np.testing.assert_allclose(gpt.forward(params, tokens, tiny_config),
                               np_forward(params, tokens, tiny_config.n_heads), atol=2e-4, rtol=1e-4)


# --- sizes ---------------------------------------------------------------------------------

def test_parameter_count_matches_the_lesson_mini_gpt():
    # The numpy "Build" lesson's MiniGPT (vocab 256, d 128, 4 heads, 4 layers, context 128,
    # d_ff 512, tied head, no attention biases) has 840,448 parameters, as the lesson states.
    config = gpt.GPTConfig(vocab_size=256)
    assert gpt.count_params(gpt.init_params(jax.random.PRNGKey(0), config)) == 840_448


@pytest.mark.parametrize("name", sorted(gpt.CONFIGS))
def test_parameter_count_formula(name):
    c = gpt.get_config(name)
    V, D, T, L, F = c.vocab_size, c.d_model, c.max_seq_len, c.n_layers, c.d_ff
    per_block = 4 * D * D + (D * F + F + F * D + D) + 2 * 2 * D
    expected = V * D + T * D + L * per_block + 2 * D
    assert gpt.count_params(gpt.init_params(jax.random.PRNGKey(0), c)) == expected


def test_default_config_is_the_lectures_mini_gpt():
    c = gpt.GPTConfig()
    assert (c.d_model, c.n_heads, c.n_layers, c.max_seq_len, c.d_ff) == (128, 4, 4, 128, 512)
    assert gpt.get_config("mini") == c


def test_shapes_and_hidden_states(tiny_config, tiny_params):
    tokens = random_tokens(1, (5, 11))
    logits, hidden = gpt.forward(tiny_params, tokens, tiny_config, return_hidden=True)
    assert logits.shape == (5, 11, tiny_config.vocab_size)
    assert hidden.shape == (5, 11, tiny_config.d_model)
    np.testing.assert_allclose(logits, hidden @ tiny_params["tok_emb"].T, atol=1e-5)


# --- causality and transforms ------------------------------------------------------------------

@settings(max_examples=10, deadline=None)
@given(t=st.integers(0, 15), new_token=st.integers(0, 255))
def test_causality_changing_token_t_never_changes_earlier_logits(tiny_config, tiny_params, t, new_token):
    tokens = random_tokens(2, (2, 16))
    changed = tokens.at[:, t].set(new_token)
    a = gpt.forward(tiny_params, tokens, tiny_config)
    b = gpt.forward(tiny_params, changed, tiny_config)
    np.testing.assert_array_equal(a[:, :t], b[:, :t])


def test_future_tokens_do_influence_later_positions(tiny_config, tiny_params):
    tokens = random_tokens(2, (1, 8))
    changed = tokens.at[:, 3].set((tokens[0, 3] + 1) % 256)
    diff = jnp.abs(gpt.forward(tiny_params, tokens, tiny_config)
                   - gpt.forward(tiny_params, changed, tiny_config)).max(-1)[0]
    assert bool((diff[3:] > 0).all())


def test_jit_equals_eager(tiny_config, tiny_params):
    tokens = random_tokens(3, (4, 20))
    jitted = jax.jit(gpt.forward, static_argnames=("config", "return_hidden"))
    np.testing.assert_allclose(jitted(tiny_params, tokens, tiny_config),
                               gpt.forward(tiny_params, tokens, tiny_config), atol=1e-5)


def test_vmap_equals_per_example(tiny_config, tiny_params):
    tokens = random_tokens(4, (6, 12))
    per_row = jax.vmap(lambda row: gpt.forward(tiny_params, row[None], tiny_config)[0])(tokens)
    batch = gpt.forward(tiny_params, tokens, tiny_config)
    np.testing.assert_allclose(per_row, batch, atol=1e-5)
    for n in range(2):
        np.testing.assert_allclose(gpt.forward(tiny_params, tokens[n:n + 1], tiny_config)[0],
                                   batch[n], atol=1e-5)


def test_kv_cache_in_pieces_equals_full_forward(tiny_config, tiny_params):
    tokens = random_tokens(5, (3, 30))
    full = gpt.forward(tiny_params, tokens, tiny_config)
    cache = gpt.init_cache(tiny_config, 3)
    pieces, start = [], 0
    for width in (10, 1, 1, 7, 11):  # a prefill, single tokens, then more chunks
        logits, cache = gpt.forward_cached(tiny_params, tokens[:, start:start + width], start,
                                           cache, tiny_config)
        pieces.append(logits)
        start += width
    np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), full, atol=1e-5)


def test_init_is_deterministic(tiny_config):
    a = gpt.init_params(jax.random.PRNGKey(7), tiny_config)
    b = gpt.init_params(jax.random.PRNGKey(7), tiny_config)
    c = gpt.init_params(jax.random.PRNGKey(8), tiny_config)
    assert all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(jnp.array_equal, a, b)))
    assert not jnp.array_equal(a["tok_emb"], c["tok_emb"])


def test_extreme_inputs_stay_finite(tiny_config, tiny_params):
    big = jax.tree_util.tree_map(lambda a: a * 1e3, tiny_params)
    logits = gpt.forward(big, random_tokens(6, (2, 64)), tiny_config)
    assert bool(jnp.isfinite(logits).all())


# --- bad inputs ----------------------------------------------------------------------------------

@pytest.mark.parametrize("tokens, match", [
    (jnp.zeros((5,), jnp.int32), r"rank 2"),
    (jnp.zeros((1, 2, 3), jnp.int32), r"rank 2"),
    (jnp.zeros((2, 4), jnp.float32), r"integer ids"),
    (jnp.full((2, 4), 263, jnp.int32), r"\[0, 263\), got values in \[263, 263\]"),
    (jnp.full((2, 4), -1, jnp.int32), r"got values in \[-1, -1\]"),
    (jnp.zeros((2, 65), jnp.int32), r"65 positions, more than max_seq_len=64"),
])
def test_bad_token_batches_raise(tiny_config, tiny_params, tokens, match):
    with pytest.raises(ValueError, match=match):
        gpt.forward(tiny_params, tokens, tiny_config)


@pytest.mark.parametrize("kwargs, match", [
    ({"d_model": 30, "n_heads": 4}, "divisible"),
    ({"n_layers": 0}, "n_layers"),
    ({"vocab_size": 2.5}, "vocab_size"),
])
def test_bad_configs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gpt.GPTConfig(**kwargs)


def test_unknown_config_name():
    with pytest.raises(ValueError, match="config name must be one of"):
        gpt.get_config("huge")


def test_params_of_another_model_size_raise_naming_the_leaf(tiny_config):
    """A checkpoint of another size used to crash inside a matmul, or silently run."""
    mini = gpt.get_config("mini")
    params = gpt.init_params(jax.random.PRNGKey(0), tiny_config)
    tokens = jnp.zeros((1, 4), jnp.int32)
    with pytest.raises(ValueError, match=r"params do not match .*params\['.*'\] has shape"):
        gpt.forward(params, tokens, mini)
    with pytest.raises(ValueError, match="structure of a GPT"):
        gpt.forward({"tok_emb": params["tok_emb"]}, tokens, tiny_config)


# ---------------------------------------------------------------------------------------------
# Exercises 0.5 and 0.6: the checks reject the usual wrong KV caches and decode steps


def _kv_strict_mask(cache, k, v, start):  # a query may not read its own key
    (keys, values), mask = gpt.write_kv_cache(cache, k, v, start)
    shift = jnp.arange(keys.shape[2]) < (jnp.asarray(start).reshape(-1, 1, 1, 1) + jnp.arange(k.shape[2])[:, None])
    return (keys, values), shift


def _kv_fresh_buffer(cache, k, v, start):  # writes into zeros: the earlier entries are lost
    zeros = (jnp.zeros_like(cache[0]), jnp.zeros_like(cache[1]))
    return gpt.write_kv_cache(zeros, k, v, start)


def _kv_first_row_start(cache, k, v, start):  # one start for every row
    return gpt.write_kv_cache(cache, k, v, jnp.asarray(start).reshape(-1)[0])


def _decode_at_position_zero(params, tokens, start, cache, config):  # embeds at 0.., not start..
    x = gpt.embed(params, tokens, 0 if jnp.ndim(start) == 0 else jnp.zeros_like(start))
    new_cache = []
    for layer, layer_cache in enumerate(cache):
        p = jax.tree_util.tree_map(lambda leaf: leaf[layer], params["blocks"])
        x, layer_cache = gpt.block(p, x, config, layer_cache, start)
        new_cache.append(layer_cache)
    return gpt.unembed(params, x)[0], tuple(new_cache)


def _decode_keeping_the_old_cache(params, tokens, start, cache, config):  # the write is dropped
    return gpt.forward_cached(params, tokens, start, cache, config)[0], cache


@pytest.mark.parametrize("name, wrong, hint", [
    ("write_kv_cache", _kv_strict_mask, "may read positions 0..p"),
    ("write_kv_cache", _kv_fresh_buffer, "every other entry as it was"),
    ("write_kv_cache", _kv_first_row_start, "start=[1, 6]"),
    ("forward_cached", _decode_at_position_zero, "embed at positions start"),
    ("forward_cached", _decode_keeping_the_old_cache, "thread each layer's cache"),
], ids=lambda x: getattr(x, "__name__", None))
def test_kv_cache_checks_catch_wrong_implementations(name, wrong, hint):
    from rlhf_book.textbook.checks import Mismatch
    from rlhf_book.textbook.checks import ch00_mini_gpt as checks

    with pytest.raises(Mismatch) as caught:
        getattr(checks, name)(wrong)
    assert hint in str(caught.value), str(caught.value)
