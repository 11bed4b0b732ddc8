"""What every on-policy loop shares: prompts, rewards, sampling groups of completions, the
log-probabilities of sampled tokens, and the policy's train state.

Chapter 6 (RL), chapter 8 (online DPO) and chapter 9 (best-of-N) sample ``G`` completions of
each of ``B`` prompts, score them with a :class:`Reward`, and read log-probabilities of the
sampled tokens under the policy and a frozen reference. Rows are prompt-major: row
``b * G + g`` is completion ``g`` of prompt ``b``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlhf_book.lm import gpt, sampling, sharding, tokenizer
from rlhf_book.lm.ops import log_probs_from_logits

# ----------------------------------------------------------------------------------------------
# Prompts and rewards


class PromptSet(NamedTuple):
    """The prompts a loop draws from: ``tokens [Q, P]`` right-padded chat prompts (ending in
    the ``<|assistant|>`` header) and their ``lengths [Q]``."""

    tokens: jax.Array
    lengths: jax.Array


def encode_prompts(prompts: Sequence[str]) -> PromptSet:
    """Chat-template prompts for a list of user messages, right-padded to the longest."""
    if not prompts:
        raise ValueError("prompts must be a non-empty sequence of strings")
    ids = [tokenizer.render_prompt(p) for p in prompts]
    tokens, lengths = tokenizer.pad_batch(ids, max(map(len, ids)))
    return PromptSet(jnp.asarray(tokens), jnp.asarray(lengths))


class Reward(NamedTuple):
    """A reward function for a loop: ``fn(params, tokens [N, T], mask [N, T], prompt_ids
    [N]) -> [N]`` where ``tokens`` holds prompt + completion, ``mask`` is 1 on the completion
    and ``prompt_ids`` index the :class:`PromptSet`; ``params`` (a reward model's, or None)
    travel as an argument so that they are not baked into a compiled step."""

    fn: Callable
    params: Any = None


def text_reward(score: Callable[[Any, str], float], items: Sequence[Any]) -> Reward:
    """A reward computed on the host from text: ``score(items[prompt_id], completion_text)``,
    e.g. ``text_reward(data.gold_reward, questions)`` or an arithmetic verifier. Inside a
    jitted step it runs through ``jax.pure_callback`` (sequentially under ``vmap``), as real
    systems call verifiers."""
    items = list(items)

    def host(tokens, mask, prompt_ids):
        texts = sampling.decode_masked(tokens, mask)
        return np.asarray([score(items[int(i)], t) for i, t in zip(prompt_ids, texts)],
                          np.float32)

    def fn(params, tokens, mask, prompt_ids):
        del params
        out = jax.ShapeDtypeStruct(prompt_ids.shape, jnp.float32)
        return jax.pure_callback(host, out, tokens, mask, prompt_ids, vmap_method="sequential")

    return Reward(fn, None)


# ----------------------------------------------------------------------------------------------
# Sampling groups, and log-probabilities of sampled tokens


def sample_groups(lm_params, prompts: PromptSet, key, n_prompts: int, group_size: int,
                  temperature, model_config: gpt.GPTConfig, *, max_new_tokens: int):
    """Draw ``B = n_prompts`` prompts at random (without replacement when there are enough)
    and sample ``G = group_size`` completions of each with the KV cache, inside a jitted step.
    Returns ``(generation, prompt_ids)``: a :class:`~rlhf_book.lm.sampling.Generation` of
    ``B * G`` prompt-major rows and ``prompt_ids [B * G]``."""
    k_prompts, k_sample = jax.random.split(key)
    Q = prompts.tokens.shape[0]
    chosen = jax.random.choice(k_prompts, Q, (n_prompts,), replace=n_prompts > Q)
    prompt_ids = jnp.repeat(chosen, group_size)  # prompt-major: row b * G + g
    # On a mesh the rows split into contiguous blocks, one per device: a group stays on one
    # device when the device count divides B (lm/sharding.py).
    rows, lengths = sharding.shard_batch((prompts.tokens[prompt_ids], prompts.lengths[prompt_ids]))
    gen = sampling.sample_cached(lm_params, rows, lengths, k_sample, temperature,
                                 model_config, max_new_tokens=max_new_tokens)
    return gen, prompt_ids


def token_log_probs(lm_params, tokens, config: gpt.GPTConfig, temperature=1.0,
                    return_hidden: bool = False):
    """``log pi(tokens[:, t] | tokens[:, :t])`` under ``softmax(logits / temperature)`` for
    every position: ``[N, T]`` (position 0, which nothing predicts, is 0), aligned with a
    generation's mask. With ``return_hidden`` also the hidden state that *predicts* each token
    (``[N, T, D]``, that of position ``t - 1``): the state ``s_t`` a value head reads."""
    logits, hidden = gpt.forward(lm_params, tokens, config, return_hidden=True)
    logp = log_probs_from_logits(logits[:, :-1] / temperature, tokens[:, 1:])
    logp = jnp.pad(logp, ((0, 0), (1, 0)))
    if not return_hidden:
        return logp
    return logp, jnp.pad(hidden[:, :-1], ((0, 0), (1, 0), (0, 0)))


@functools.partial(jax.jit, static_argnames=("model_config", "max_new_tokens"))
def sample_policies(lm_params, prompts: PromptSet, keys, temperature,
                    model_config: gpt.GPTConfig, *, max_new_tokens: int) -> sampling.Generation:
    """One completion of every prompt from each of ``S`` policies at once: ``lm_params`` and
    ``keys [S]`` have a leading policy axis (the final states of a vmapped run); returns a
    :class:`~rlhf_book.lm.sampling.Generation` of arrays ``[S, Q, T]``."""

    def one(params, key):
        return sampling.sample_cached(params, prompts.tokens, prompts.lengths, key, temperature,
                                      model_config, max_new_tokens=max_new_tokens)

    return jax.vmap(one)(lm_params, keys)


# ----------------------------------------------------------------------------------------------
# The policy's train state (RL and DPO)


class PolicyState(NamedTuple):
    """Everything an RL or DPO step reads and writes: the trained ``params`` (for PPO
    ``{"lm": ..., "value": ...}``) and the optimizer's ``opt_state``; the frozen
    ``ref_params`` and ``reward_params`` (None where unused); the ``step``."""

    params: Any
    opt_state: Any
    ref_params: Any
    reward_params: Any
    step: jax.Array


def adam(learning_rate, max_grad_norm: float) -> optax.GradientTransformation:
    """Adam at a constant learning rate after clipping the global gradient norm: the optimizer
    of the RL and DPO loops (fine-tuning from an SFT model rarely uses a schedule)."""
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.adam(learning_rate))


def init_policy_state(params, optimizer: optax.GradientTransformation, ref_params=None,
                      reward_params=None) -> PolicyState:
    """The state at step 0."""
    return PolicyState(params, optimizer.init(params), ref_params, reward_params,
                       jnp.zeros((), jnp.int32))
