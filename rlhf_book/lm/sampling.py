"""Jitted autoregressive generation with a KV cache inside ``lax.scan``.

Every RL chapter starts with a *rollout*: sample completions from the policy and remember the
log-probability of each sampled token (the ``log pi_old`` of PPO's ratio, book ch. 6). This
module does it for a batch of prompts of different lengths in one compiled loop:

* prompts are right-padded to ``[N, P]`` with their true lengths beside them;
* the prefill: the whole block of prompts goes through the model in one parallel pass that
  fills the KV cache;
* then one ``lax.scan`` of ``max_new_tokens`` steps. At step ``j`` every row feeds the token at
  its own position ``prompt_length - 1 + j`` (one position per row, against the KV cache) and
  samples the next one, so rows with prompts of different lengths decode in step;
* a row stops after its stop token (``eos_id``, by default the chat template's ``<|end|>``)
  or after ``max_new_tokens``; later positions hold ``<|pad|>``.

Log-probabilities are those of the temperature-scaled distribution ``softmax(logits / tau)``
*before* top-k truncation: exactly what a trainer recomputes from the same sequence with
``log_probs_from_logits(logits / tau, tokens)``, so the PPO ratio is exactly 1 on-policy.
``temperature = 0`` means greedy decoding (log-probs then at ``tau = 1``).
"""

from __future__ import annotations

import functools
import numbers
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_book.lm import gpt, tokenizer
from rlhf_book.lm.ops import log_probs_from_logits


class Generation(NamedTuple):
    """A batch of sampled sequences, all ``[N, P + max_new_tokens]``.

    ``tokens`` holds the prompt, the completion and ``<|pad|>`` after it. ``logprobs[n, t]`` is
    the log-probability with which ``tokens[n, t]`` was sampled (0 where it was not sampled).
    ``mask[n, t]`` is 1 on sampled tokens, the stop token included.
    """

    tokens: jax.Array
    logprobs: jax.Array
    mask: jax.Array

    @property
    def stopped(self) -> jax.Array:
        """``[N]`` (or ``[..., N]``): whether each completion ended with ``<|end|>`` within
        its budget, rather than being cut off at ``max_new_tokens``."""
        return jnp.any((self.tokens == tokenizer.END) & (self.mask > 0), axis=-1)


# [guide:sample-token]
def sample_token(key, logits, temperature, top_k: int = 0):
    """Sample one token per row from ``logits [N, V]``; return ``(tokens [N], logprobs [N])``.

    Temperature sampling draws from ``softmax(logits / temperature)``: below 1 it sharpens the
    distribution, above 1 it flattens it (Holtzman et al. 2020). ``top_k > 0`` (a Python int)
    keeps only the ``k`` largest logits, renormalised (Fan et al. 2018); ``temperature == 0``
    picks the argmax. ``key`` is a PRNG key; ``tokens`` are integers. ``temperature`` may be a
    traced scalar under ``jit``, with the same results as eagerly. The returned log-probability
    is under ``softmax(logits / temperature)`` without the top-k cut (``temperature = 1`` when
    greedy): exactly what a trainer recomputes from the finished sequence, so PPO's ratio is 1
    on-policy.

    How: a traced temperature cannot drive a Python ``if``, so branch with ``jnp.where``: divide
    by the temperature where it is positive (by 1 where it is 0), set the scaled logits below
    the ``k``-th largest (``jax.lax.top_k``) to ``-inf``, draw with
    ``jax.random.categorical``, and take the argmax where the temperature is 0; the
    log-probabilities are :func:`~rlhf_book.lm.ops.log_probs_from_logits` of the scaled logits.
    """
    # BEGIN SOLUTION
    tau = jnp.where(temperature > 0, temperature, 1.0)
    scaled = logits / tau
    candidates = scaled
    if top_k:
        kth = jax.lax.top_k(scaled, top_k)[0][..., -1:]
        candidates = jnp.where(scaled < kth, -jnp.inf, scaled)
    sampled = jax.random.categorical(key, candidates, axis=-1)
    tokens = jnp.where(temperature > 0, sampled, jnp.argmax(logits, axis=-1))
    return tokens, log_probs_from_logits(scaled, tokens)
    # END SOLUTION
# [/guide]


def _decode(next_logits: Callable, state, prompts, prompt_lengths, key, temperature, *,
            max_new_tokens: int, top_k: int, eos_id: int) -> Generation:
    """The shared decoding loop: ``max_new_tokens`` steps, every row at its own position.

    At step ``j`` row ``n`` feeds the token at ``pos[n] = prompt_lengths[n] - 1 + j`` and
    samples the token of ``pos[n] + 1``; ``next_logits(state, tokens, pos) -> (logits [N, V],
    state)`` returns those logits given the buffer ``tokens`` filled up to ``pos``.
    """
    N, P = prompts.shape
    K = max_new_tokens
    buffer = jnp.pad(prompts, ((0, 0), (0, K)), constant_values=tokenizer.PAD)
    rows = jnp.arange(N)

    def step(carry, j):
        state, buffer, done = carry
        pos = prompt_lengths - 1 + j
        logits, state = next_logits(state, buffer, pos)
        # One key per step (not a chain of splits), shared by both implementations.
        sampled, logp = sample_token(jax.random.fold_in(key, j), logits, temperature, top_k)
        live = ~done
        buffer = buffer.at[rows, pos + 1].set(jnp.where(live, sampled, tokenizer.PAD))
        done = done | (sampled == eos_id)
        return (state, buffer, done), (jnp.where(live, logp, 0.0), live)

    init = (state, buffer, jnp.zeros(N, bool))
    (_, buffer, _), (logprobs, live) = jax.lax.scan(step, init, jnp.arange(K))
    # Step j decided position prompt_lengths + j of each row: put the [K, N] outputs there.
    cols = prompt_lengths[:, None] + jnp.arange(K)
    zeros = jnp.zeros((N, P + K))
    return Generation(
        tokens=buffer,
        logprobs=zeros.at[rows[:, None], cols].set(logprobs.T),
        mask=zeros.at[rows[:, None], cols].set(live.T.astype(jnp.float32)),
    )


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "top_k", "eos_id"))
def _generate_cached(params, prompts, prompt_lengths, key, temperature, *, config,
                     max_new_tokens, top_k, eos_id):
    # The prefill: the whole padded prompt block in one parallel pass. Each row's cache is
    # right up to its own prompt; the slots after it hold padding, which no query sees (each
    # row attends up to its own position) and which decoding overwrites one by one.
    cache = gpt.forward_cached(params, prompts, 0, gpt.init_cache(config, prompts.shape[0]),
                               config)[1]
    rows = jnp.arange(prompts.shape[0])

    def next_logits(cache, buffer, pos):
        logits, cache = gpt.forward_cached(params, buffer[rows, pos][:, None], pos, cache, config)
        return logits[:, 0], cache

    return _decode(next_logits, cache, prompts, prompt_lengths, key, temperature,
                   max_new_tokens=max_new_tokens, top_k=top_k, eos_id=eos_id)


@functools.partial(jax.jit, static_argnames=("config", "max_new_tokens", "top_k", "eos_id"))
def _generate_uncached(params, prompts, prompt_lengths, key, temperature, *, config,
                       max_new_tokens, top_k, eos_id):
    rows = jnp.arange(prompts.shape[0])

    def next_logits(state, buffer, pos):
        # The whole forward pass over the buffer at every step: O(T) work per token instead of
        # O(1). Positions after pos hold padding, which the causal mask keeps out of logits[pos].
        return gpt.forward(params, buffer, config)[rows, pos], state

    return _decode(next_logits, None, prompts, prompt_lengths, key, temperature,
                   max_new_tokens=max_new_tokens, top_k=top_k, eos_id=eos_id)


# The smallest temperature above 0: below it logits / tau overflow float32 (log-probs of +inf);
# 0 itself means greedy.
MIN_TEMPERATURE = 1e-3


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _validate(prompts, prompt_lengths, config, max_new_tokens, temperature, top_k, key):
    gpt.check_tokens(prompts, config, name="prompts")
    N, P = prompts.shape
    key_shape = getattr(key, "shape", None)
    if key_shape is None or not (key_shape == (2,) or jnp.issubdtype(key.dtype,
                                                                   jax.dtypes.prng_key)):
        raise ValueError(f"key must be a JAX PRNG key (jax.random.PRNGKey(seed)), got {key!r}")
    if not _is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    max_new_tokens = int(max_new_tokens)
    if P + max_new_tokens > config.max_seq_len:
        raise ValueError(
            f"prompt width {P} + max_new_tokens {max_new_tokens} exceeds "
            f"max_seq_len={config.max_seq_len}"
        )
    if not _is_int(top_k) or not 0 <= top_k <= config.vocab_size:
        raise ValueError(f"top_k must be an int in [0, {config.vocab_size}], got {top_k!r}")
    if not isinstance(temperature, jax.core.Tracer):
        tau = float(temperature)
        if not (tau == 0 or MIN_TEMPERATURE <= tau < float("inf")):  # NaN fails too
            raise ValueError(f"temperature must be 0 (greedy) or a finite number >= "
                             f"{MIN_TEMPERATURE:g}, got {temperature}")
    if prompt_lengths is None:
        return jnp.full((N,), P, jnp.int32), max_new_tokens, int(top_k)
    prompt_lengths = jnp.asarray(prompt_lengths)
    if prompt_lengths.shape != (N,):
        raise ValueError(f"prompt_lengths must have shape ({N},), got {prompt_lengths.shape}")
    if not jnp.issubdtype(prompt_lengths.dtype, jnp.integer):
        raise ValueError(f"prompt_lengths must hold integers, got dtype {prompt_lengths.dtype}")
    if not isinstance(prompt_lengths, jax.core.Tracer):
        lo, hi = int(prompt_lengths.min()), int(prompt_lengths.max())
        if lo < 1 or hi > P:
            raise ValueError(f"prompt_lengths must lie in [1, {P}], got values in [{lo}, {hi}]")
    return prompt_lengths, max_new_tokens, int(top_k)


def generate(params, prompts, key, config: gpt.GPTConfig, *, prompt_lengths=None,
             max_new_tokens: int = 32, temperature=1.0, top_k: int = 0,
             eos_id: int | None = tokenizer.END, use_cache: bool = True) -> Generation:
    """Sample completions for a batch of right-padded prompts.

    Args:
        params, config: the model.
        prompts: ``[N, P]`` integer ids, right-padded.
        key: a PRNG key (``jax.vmap`` over keys samples several completions per prompt).
        prompt_lengths: ``[N]`` true prompt lengths (default: all ``P``).
        max_new_tokens: most tokens sampled per row; ``P + max_new_tokens <= max_seq_len``.
        temperature: ``tau >= 0``; 0 is greedy.
        top_k: sample among the ``k`` most likely tokens (0 = all).
        eos_id: the stop token (``<|end|>`` for chat; ``<|endoftext|>`` for plain documents);
            ``None`` never stops early.
        use_cache: ``False`` recomputes the full forward pass at every step; the same tokens
            and log-probabilities, far slower (kept as the reference the cache is tested
            against).

    Returns:
        :class:`Generation` with ``tokens``, ``logprobs`` and ``mask``, each
        ``[N, P + max_new_tokens]``.
    """
    prompt_lengths, max_new_tokens, top_k = _validate(prompts, prompt_lengths, config,
                                                      max_new_tokens, temperature, top_k, key)
    if eos_id is None:
        eos_id = -1  # matches no token
    elif not 0 <= int(eos_id) < config.vocab_size:
        raise ValueError(f"eos_id must be None or in [0, {config.vocab_size}), got {eos_id}")
    impl = _generate_cached if use_cache else _generate_uncached
    return impl(params, jnp.asarray(prompts, jnp.int32), prompt_lengths, key,
                jnp.asarray(temperature, jnp.float32), config=config,
                max_new_tokens=max_new_tokens, top_k=top_k, eos_id=int(eos_id))


def sample_cached(params, prompts, prompt_lengths, key, temperature, config: gpt.GPTConfig, *,
                  max_new_tokens: int, top_k: int = 0, eos_id: int = tokenizer.END) -> Generation:
    """:func:`generate` with the KV cache but without its eager argument checks, for use
    inside a jitted function (an RL step), where ``prompts``, ``prompt_lengths`` and
    ``temperature`` may be traced. The caller guarantees what :func:`generate` checks."""
    return _generate_cached(params, prompts, prompt_lengths, key,
                            jnp.asarray(temperature, jnp.float32), config=config,
                            max_new_tokens=max_new_tokens, top_k=top_k, eos_id=eos_id)


def decode_masked(tokens, mask) -> list[str]:
    """Decode the tokens where ``mask`` is 1 in each row of ``tokens [N, T]`` to text (special
    tokens dropped)."""
    tokens, mask = np.asarray(tokens), np.asarray(mask).astype(bool)
    return [tokenizer.decode(row[m]) for row, m in zip(tokens, mask)]


def completions(generation: Generation) -> list[str]:
    """Decode the sampled part of each row to text (special tokens dropped)."""
    return decode_masked(generation.tokens, generation.mask)
