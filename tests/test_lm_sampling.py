"""KV-cache generation: equal to recomputing the full forward pass, stopping, batching, vmap."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_book.lm import gpt, ops, sampling
from rlhf_book.lm import tokenizer as tok


@pytest.fixture(scope="module")
def prompts():
    ids = [tok.render_prompt("What is 2 + 3?"), tok.render_prompt("Hi"),
           tok.render_prompt("Name the capital of Peru.", system="Be brief.")]
    return tok.pad_batch(ids, max(map(len, ids)))


@pytest.mark.parametrize("temperature, top_k", [(1.0, 0), (0.7, 5), (0.0, 0)])
def test_cache_equals_full_recompute(tiny_config, tiny_params, prompts, temperature, top_k):
    tokens, lengths = prompts
    kw = dict(prompt_lengths=lengths, max_new_tokens=20, temperature=temperature, top_k=top_k,
              eos_id=None)
    key = jax.random.PRNGKey(11)
    cached = sampling.generate(tiny_params, tokens, key, tiny_config, **kw)
    full = sampling.generate(tiny_params, tokens, key, tiny_config, use_cache=False, **kw)
    np.testing.assert_array_equal(cached.tokens, full.tokens)
    np.testing.assert_array_equal(cached.mask, full.mask)
    np.testing.assert_allclose(cached.logprobs, full.logprobs, atol=1e-5)


def test_logprobs_are_what_a_trainer_recomputes(tiny_config, tiny_params, prompts):
    tokens, lengths = prompts
    tau = 0.8
    gen = sampling.generate(tiny_params, tokens, jax.random.PRNGKey(1), tiny_config,
                            prompt_lengths=lengths, max_new_tokens=24, temperature=tau, eos_id=None)
    logits = gpt.forward(tiny_params, gen.tokens, tiny_config)
    recomputed = ops.next_token_log_probs(logits / tau, gen.tokens)  # [N, T-1] for tokens 1..
    np.testing.assert_allclose(recomputed * gen.mask[:, 1:], gen.logprobs[:, 1:], atol=1e-5)
    assert float(jnp.abs(gen.logprobs * (1 - gen.mask)).max()) == 0.0


def test_greedy_is_the_argmax_of_the_full_forward(tiny_config, tiny_params, prompts):
    tokens, lengths = prompts
    gen = sampling.generate(tiny_params, tokens, jax.random.PRNGKey(0), tiny_config,
                            prompt_lengths=lengths, max_new_tokens=15, temperature=0.0, eos_id=None)
    argmax = jnp.argmax(gpt.forward(tiny_params, gen.tokens, tiny_config), -1)[:, :-1]
    m = gen.mask[:, 1:].astype(bool)
    np.testing.assert_array_equal(np.asarray(gen.tokens[:, 1:])[m], np.asarray(argmax)[m])


def test_prompts_kept_and_completions_start_after_each_prompt(tiny_config, tiny_params, prompts):
    tokens, lengths = prompts
    gen = sampling.generate(tiny_params, tokens, jax.random.PRNGKey(2), tiny_config,
                            prompt_lengths=lengths, max_new_tokens=10, eos_id=None)
    for n, L in enumerate(lengths):
        np.testing.assert_array_equal(gen.tokens[n, :L], tokens[n, :L])
        mask = np.asarray(gen.mask[n])
        assert mask[:L].sum() == 0 and mask[L:L + 10].sum() == 10 and mask[L + 10:].sum() == 0
        assert (np.asarray(gen.tokens[n, L + 10:]) == tok.PAD).all()


def test_rows_stop_at_the_stop_token(tiny_config, tiny_params, prompts):
    tokens, lengths = prompts
    key = jax.random.PRNGKey(3)
    kw = dict(prompt_lengths=lengths, max_new_tokens=20, temperature=1.0)
    free = sampling.generate(tiny_params, tokens, key, tiny_config, eos_id=None, **kw)
    # Declare a token that row 0 first samples at its k-th step (k >= 1) to be the stop token.
    row0 = np.asarray(free.tokens[0, lengths[0]:lengths[0] + 20]).tolist()
    k = next(i for i in range(1, 20) if row0[i] not in row0[:i])
    stop = row0[k]
    # Same key, same logits up to the stop: the same draws, cut after the stop token.
    gen = sampling.generate(tiny_params, tokens, key, tiny_config, eos_id=stop, **kw)
    assert int(gen.mask[0].sum()) == k + 1
    for n, L in enumerate(lengths):
        row, mask = np.asarray(gen.tokens[n]), np.asarray(gen.mask[n]).astype(bool)
        hits = np.flatnonzero(np.asarray(free.tokens[n, L:L + 20]) == stop)
        expected_len = hits[0] + 1 if len(hits) else 20
        assert mask.sum() == expected_len and mask[L:L + expected_len].all()
        np.testing.assert_array_equal(row[mask], np.asarray(free.tokens[n, L:L + expected_len]))
        assert (row[L + expected_len:] == tok.PAD).all()


def test_vmap_over_keys_equals_separate_calls(tiny_config, tiny_params, prompts):
    tokens, lengths = prompts
    keys = jax.random.split(jax.random.PRNGKey(4), 3)

    def one(key):
        return sampling.generate(tiny_params, tokens, key, tiny_config, prompt_lengths=lengths,
                                 max_new_tokens=8)

    batched = jax.vmap(one)(keys)
    for g in range(3):
        single = one(keys[g])
        np.testing.assert_array_equal(batched.tokens[g], single.tokens)
        np.testing.assert_allclose(batched.logprobs[g], single.logprobs, atol=1e-5)


def test_same_key_same_samples_different_key_different(tiny_config, tiny_params, prompts):
    tokens, lengths = prompts
    a, b, c = (sampling.generate(tiny_params, tokens, jax.random.PRNGKey(k), tiny_config,
                                 prompt_lengths=lengths, max_new_tokens=12, eos_id=None)
               for k in (5, 5, 6))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert not np.array_equal(a.tokens, c.tokens)


def test_sample_token_frequencies_match_the_tempered_softmax():
    logits = jnp.array([[2.0, 1.0, 0.0, -1.0]])
    n, tau = 20000, 0.5
    keys = jax.random.split(jax.random.PRNGKey(0), n)
    draws = jax.vmap(lambda k: sampling.sample_token(k, logits, tau)[0][0])(keys)
    p = np.exp(np.array([2.0, 1.0, 0.0, -1.0]) / tau)
    p /= p.sum()
    freq = np.bincount(np.asarray(draws), minlength=4) / n
    se = np.sqrt(p * (1 - p) / n)
    assert (np.abs(freq - p) < 4 * se + 1e-12).all(), (freq, p)


def test_top_k_never_samples_outside_the_top_k():
    logits = jnp.array([[0.5, 3.0, 2.9, 2.8, -1.0, 0.0]])
    keys = jax.random.split(jax.random.PRNGKey(1), 2000)
    draws = np.asarray(jax.vmap(lambda k: sampling.sample_token(k, logits, 5.0, top_k=2)[0][0])(keys))
    assert set(draws.tolist()) == {1, 2}


def test_sampling_stays_finite_for_extreme_logits():
    logits = jnp.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]])
    tokens, logp = sampling.sample_token(jax.random.PRNGKey(0), logits, 1.0)
    assert bool(jnp.isfinite(logp).all())
    assert int(tokens[0]) == 0


def test_completions_decode_only_the_sampled_text(tiny_config, tiny_params, prompts):
    tokens, lengths = prompts
    gen = sampling.generate(tiny_params, tokens, jax.random.PRNGKey(2), tiny_config,
                            prompt_lengths=lengths, max_new_tokens=6, eos_id=None)
    texts = sampling.completions(gen)
    assert len(texts) == 3
    for n, L in enumerate(lengths):
        assert texts[n] == tok.decode(np.asarray(gen.tokens[n, L:L + 6]))


@pytest.mark.parametrize("kwargs, match", [
    ({"max_new_tokens": 60}, "exceeds max_seq_len=64"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"temperature": -1.0}, "temperature"),
    ({"top_k": 1000}, "top_k"),
    ({"prompt_lengths": np.array([0, 3, 3])}, "prompt_lengths must lie in"),
    ({"prompt_lengths": np.array([3, 3])}, r"prompt_lengths must have shape \(3,\)"),
    ({"eos_id": 999}, "eos_id"),
    ({"temperature": float("nan")}, "temperature"),  # used to decode greedily
    ({"temperature": 1e-30}, "temperature"),  # used to return log-probs of +inf
    ({"temperature": float("inf")}, "temperature"),
    ({"prompt_lengths": np.array([3.0, 3.0, 3.0])}, "prompt_lengths must hold integers"),
    ({"key": 0}, "key must be a JAX PRNG key"),
])
def test_bad_arguments_raise(tiny_config, tiny_params, prompts, kwargs, match):
    tokens, lengths = prompts
    kw = {"prompt_lengths": lengths, "max_new_tokens": 8, "key": jax.random.PRNGKey(0), **kwargs}
    key = kw.pop("key")
    with pytest.raises(ValueError, match=match):
        sampling.generate(tiny_params, tokens, key, tiny_config, **kw)


def test_numpy_integer_sizes_are_accepted(tiny_config, tiny_params, prompts):
    tokens, lengths = prompts
    gen = sampling.generate(tiny_params, tokens, jax.random.PRNGKey(0), tiny_config,
                            prompt_lengths=lengths, max_new_tokens=np.int64(4), top_k=np.int64(3))
    same = sampling.generate(tiny_params, tokens, jax.random.PRNGKey(0), tiny_config,
                             prompt_lengths=lengths, max_new_tokens=4, top_k=3)
    np.testing.assert_array_equal(gen.tokens, same.tokens)


def test_cached_positions_past_the_context_window_raise(tiny_config, tiny_params):
    """Feeding the cache at position max_seq_len would wrap around and attend to the future."""
    cache = gpt.init_cache(tiny_config, 1)
    token = jnp.zeros((1, 1), jnp.int32)
    gpt.forward_cached(tiny_params, token, tiny_config.max_seq_len - 1, cache, tiny_config)
    with pytest.raises(ValueError, match="start must keep positions"):
        gpt.forward_cached(tiny_params, token, tiny_config.max_seq_len, cache, tiny_config)
    with pytest.raises(ValueError, match="start must keep positions"):
        gpt.forward_cached(tiny_params, jnp.zeros((1, 4), jnp.int32),
                           tiny_config.max_seq_len - 2, cache, tiny_config)

