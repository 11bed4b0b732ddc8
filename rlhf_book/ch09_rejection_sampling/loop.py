"""Chapter 9, the loop: best-of-N sampling and rejection-sampling fine-tuning on the mini GPT.

Rejection sampling (RS), as RLHF uses the name, is the simplest way to spend a reward model:
for each prompt sample ``N`` completions from the current model, score them with the reward
model, keep the best, and fine-tune the model on what was kept with the ordinary
instruction-tuning loss (book §9.1, Figure 28; WebGPT, Anthropic's HH, Llama 2 Chat;
formalised as RAFT and RSO). Best-of-N (BoN, §9.3) is the same generate-and-score step with no
fine-tuning: it runs at inference time and leaves the model unchanged.

* :func:`best_of_n_sample` -- one jitted call: ``n`` samples of each prompt with the KV cache,
  every sample scored, the best kept (:func:`~.selection.select_top_per_prompt`'s rule);
* :func:`rejection_sampling_batch` -- a selection rule (per prompt, eq. 113, or the top ``K``
  overall, eq. 116) applied to the sampled completions, gathered into an SFT batch whose loss
  mask covers the kept completions (the chapter's loop-level exercise);
* :func:`rejection_sampling_finetune` -- one round of RS: best-of-N, the selection, and
  chapter 4's SFT on what was kept.

Shapes: ``B`` prompts, ``n`` completions per prompt, ``T`` tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_book import ch04_instruction_tuning as ch04
from rlhf_book.ch05_reward_models import best_of_n
from rlhf_book.ch09_rejection_sampling.selection import select_top_overall, select_top_per_prompt
from rlhf_book.lm import gpt, sampling
from rlhf_book.lm.checks import check_choice, check_positive_ints, check_range
from rlhf_book.lm.rollout import PromptSet, Reward

__all__ = ["BestOfN", "best_of_n_sample", "rejection_sampling_batch", "completion_sft_examples",
           "RSConfig", "rejection_sampling_finetune"]


class BestOfN(NamedTuple):
    """The result of :func:`best_of_n_sample` for ``B`` prompts and ``n`` samples each.

    ``tokens``, ``mask`` ``[B, T]``: the chosen sequence of each prompt (prompt + completion,
    mask 1 on the completion); ``rewards [B]`` its reward; ``choice [B]`` its index among the
    ``n``. ``all_tokens``, ``all_mask`` ``[B, n, T]``, ``all_rewards [B, n]`` and ``stopped
    [B, n]`` (the completion ended with ``<|end|>``) describe every sample. ``T = P +
    max_new_tokens``.
    """

    tokens: jax.Array
    mask: jax.Array
    rewards: jax.Array
    choice: jax.Array
    all_tokens: jax.Array
    all_mask: jax.Array
    all_rewards: jax.Array
    stopped: jax.Array


# [guide:bon-sample]
def _best_of_n(lm_params, reward_params, prompt_tokens, prompt_lengths, key, temperature, *,
               model_config, reward_fn, n, max_new_tokens, top_k, truncation_penalty):
    B = prompt_tokens.shape[0]
    ids = jnp.repeat(jnp.arange(B), n)  # prompt-major: row b * n + j is sample j of prompt b
    gen = sampling.sample_cached(lm_params, prompt_tokens[ids], prompt_lengths[ids], key,
                                 temperature, model_config, max_new_tokens=max_new_tokens,
                                 top_k=top_k)
    scores = reward_fn(reward_params, gen.tokens, gen.mask, ids)
    stopped = gen.stopped
    if truncation_penalty is not None:
        scores = jnp.where(stopped, scores, truncation_penalty)
    T = gen.tokens.shape[1]
    all_tokens, all_mask = gen.tokens.reshape(B, n, T), gen.mask.reshape(B, n, T)
    all_rewards = scores.reshape(B, n).astype(jnp.float32)
    choice = best_of_n(all_rewards)
    rows = jnp.arange(B)
    return BestOfN(all_tokens[rows, choice], all_mask[rows, choice], all_rewards[rows, choice],
                   choice, all_tokens, all_mask, all_rewards, stopped.reshape(B, n))
# [/guide]


# One compilation per (model shape, reward function, n, lengths): a new key, new parameters,
# new prompts of the same shape or a new temperature reuse it.
_best_of_n_jit = jax.jit(_best_of_n, static_argnames=(
    "model_config", "reward_fn", "n", "max_new_tokens", "top_k", "truncation_penalty"))


def best_of_n_sample(lm_params, model_config: gpt.GPTConfig, prompts: PromptSet, reward: Reward,
                     n: int, key, *, max_new_tokens: int = 32, temperature: float = 1.0,
                     top_k: int = 0, truncation_penalty: float | None = None) -> BestOfN:
    """Best-of-``n`` sampling (book §9.3): sample ``n`` completions of each of the ``B``
    prompts with the KV-cache sampler, score all ``B * n`` with ``reward``, keep the best of
    each prompt (:func:`select_top_per_prompt`, ties to the first). One jitted call with static
    shapes, compiled once per model configuration, reward function and sizes.

    ``prompts``: a :class:`rlhf_book.lm.rollout.PromptSet` (``encode_prompts``);
    ``reward``: a :class:`rlhf_book.lm.rollout.Reward` whose ``prompt_ids`` index
    ``prompts`` (e.g. ``text_reward(data.gold_reward, questions)`` or a reward model).
    ``truncation_penalty`` (None: off) replaces the reward of a completion that did not stop
    within ``max_new_tokens``, as in chapter 6's loop. The book's settings: temperature 0.7-1.0,
    ``n`` from 10 to 30 or more (§9.2).
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if not isinstance(prompts, PromptSet):
        raise ValueError(f"prompts must be a PromptSet (rollout.encode_prompts), got "
                         f"{type(prompts).__name__}")
    if not isinstance(reward, Reward):
        raise ValueError(f"reward must be a rollout.Reward, got {type(reward).__name__}")
    gpt.check_tokens(prompts.tokens, model_config, name="prompts.tokens")
    B, P = prompts.tokens.shape
    if prompts.lengths.shape != (B,):
        raise ValueError(f"prompts.lengths must have shape ({B},), got {prompts.lengths.shape}")
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if P + max_new_tokens > model_config.max_seq_len:
        raise ValueError(f"prompt width {P} + max_new_tokens {max_new_tokens} exceeds the "
                         f"model's max_seq_len={model_config.max_seq_len}")
    # (greedy decoding, temperature 0, would give n identical samples)
    check_range(temperature, "temperature", 0, strict=True)
    return _best_of_n_jit(lm_params, reward.params, prompts.tokens, prompts.lengths, key,
                          jnp.asarray(temperature, jnp.float32), model_config=model_config,
                          reward_fn=reward.fn, n=int(n), max_new_tokens=int(max_new_tokens),
                          top_k=int(top_k), truncation_penalty=None if truncation_penalty is None
                          else float(truncation_penalty))


# ----------------------------------------------------------------------------------------------
# Rejection-sampling fine-tuning (book §9.1, Figure 28)


# [guide:rs-batch]
def rejection_sampling_batch(rewards, tokens, mask, selection: str = "per_prompt",
                             k: int | None = None):
    """What one round of rejection sampling fine-tunes on (book §9.1, Figure 28): the selected
    completions of a reward matrix as an SFT batch.

    ``rewards [B, N]``: the reward of completion ``j`` of prompt ``i``; ``tokens [B, N, T]``:
    the sampled sequences (the prompt, then the completion, then padding); ``mask [B, N, T]``:
    1 on each completion's tokens (its closing ``<|end|>`` included), 0 on its prompt and
    padding. ``selection`` is ``"per_prompt"``: the best completion of every prompt (eqs. 113,
    114; ``K = B`` rows in prompt order, ties to the first completion), or ``"top_k"``: the
    ``k`` best ``(prompt, completion)`` pairs of the whole matrix (eqs. 115, 116; ``k`` None:
    ``B``; best first, ties to the lower row-major flat index ``i * N + j``), so that a prompt
    may give several rows or none. Indices are 0-based (the book's are 1-based).

    Returns ``(prompt_idx [K], completion_idx [K], batch_tokens [K, T], loss_mask [K, T])``:
    the selected pairs, and the SFT batch, row ``r`` holding the sequence ``tokens[prompt_idx[r],
    completion_idx[r]]`` with its loss mask: 1 exactly on that completion's tokens, so that the
    model is trained on the kept completions and never on the prompts or the padding. On the
    book's worked example (eq. 117) the per-prompt rule keeps completions ``[0, 1, 0, 2, 3]``
    (eq. 120) and the top 5 the pairs of flat indices ``[8, 5, 14, 0, 11]`` (eq. 123).

    How: ``select_top_per_prompt`` (its prompt index is ``arange(B)``) or
    ``select_top_overall`` (9.1), then one fancy index ``[prompt_idx, completion_idx]`` into
    ``tokens`` and into ``mask``, whose completion tokens are the loss mask.
    """
    check_choice(selection, "selection", ("per_prompt", "top_k"))
    rewards, tokens, mask = jnp.asarray(rewards), jnp.asarray(tokens), jnp.asarray(mask)
    if (rewards.ndim != 2 or tokens.ndim != 3 or tokens.shape[:2] != rewards.shape
            or mask.shape != tokens.shape):
        raise ValueError(f"rewards must be [B, N], tokens and mask [B, N, T] of the same B, N, "
                         f"got {rewards.shape}, {tokens.shape}, {mask.shape}")
    # BEGIN SOLUTION
    if selection == "per_prompt":
        prompt_idx, completion_idx = jnp.arange(rewards.shape[0]), select_top_per_prompt(rewards)
    else:
        prompt_idx, completion_idx = select_top_overall(rewards, rewards.shape[0] if k is None
                                                        else k)
    return (prompt_idx, completion_idx, tokens[prompt_idx, completion_idx],
            mask[prompt_idx, completion_idx])
    # END SOLUTION
# [/guide]


def completion_sft_examples(tokens, mask, prompt_lengths) -> list[tuple[list[int], list[int]]]:
    """SFT examples ``(ids, loss_mask)`` from sampled sequences: ``tokens [M, T]`` (prompt then
    completion, as the sampler lays them out), ``mask [M, T]`` (1 on the completion) and
    ``prompt_lengths [M]``. Each example is the chat prompt followed by exactly the sampled
    tokens, trained on the completion (its ``<|end|>`` included), not the prompt: for a
    completion that stopped and whose bytes are valid text this is what
    :func:`rlhf_book.ch04_instruction_tuning.sft_examples` gives for the conversation
    ``[user, assistant]``, without a decode/encode round trip."""
    tokens, mask = np.asarray(tokens), np.asarray(mask)
    prompt_lengths = np.asarray(prompt_lengths)
    if tokens.ndim != 2 or mask.shape != tokens.shape or prompt_lengths.shape != tokens.shape[:1]:
        raise ValueError(f"tokens and mask must have one shape [M, T] and prompt_lengths [M], "
                         f"got {tokens.shape}, {mask.shape}, {prompt_lengths.shape}")
    examples = []
    for row, m, length in zip(tokens, mask.astype(bool), prompt_lengths.tolist()):
        count = int(m.sum())
        # The sampler writes the completion right after the prompt's last real token.
        if not m[length:length + count].all():
            raise ValueError("mask must be one run of 1s starting at each row's prompt length")
        ids = row[:length + count].tolist()
        examples.append((ids, [0] * length + [1] * count))
    return examples


@dataclasses.dataclass(frozen=True)
class RSConfig:
    """One round of rejection sampling (book §9.1, §9.2). ``n`` samples per prompt (the book:
    10 to 30+), kept by ``selection``: ``"per_prompt"`` (the best of each prompt, eq. 113;
    Llama 2's choice) or ``"top_k"`` (the best ``k`` pairs overall, eq. 116; ``k`` None: as
    many as there are prompts). Sampling at ``temperature`` (0.7-1.0 in the book) for at most
    ``max_new_tokens``; ``truncation_penalty`` as in :func:`best_of_n_sample`;
    ``drop_unfinished`` leaves out kept completions that did not end with ``<|end|>`` (so SFT
    never teaches the model to stop mid-answer)."""

    n: int = 8
    selection: str = "per_prompt"
    k: int | None = None
    max_new_tokens: int = 32
    temperature: float = 1.0
    truncation_penalty: float | None = None
    drop_unfinished: bool = True

    def __post_init__(self):
        check_positive_ints(self, "n", "max_new_tokens")
        check_choice(self.selection, "RSConfig.selection", ("per_prompt", "top_k"))
        if self.k is not None and (not isinstance(self.k, int) or self.k < 1):
            raise ValueError(f"RSConfig.k must be None or an int >= 1, got {self.k!r}")
        check_range(self.temperature, "RSConfig.temperature", 0, strict=True)


def rejection_sampling_finetune(lm_params, model_config: gpt.GPTConfig, prompts: PromptSet,
                                reward: Reward, config: RSConfig, sft_config: ch04.SFTConfig,
                                *, key, progress: bool = False) -> tuple[Any, dict]:
    """One round of rejection sampling (book §9.1, Figure 28): 1. sample ``config.n``
    completions per prompt from ``lm_params`` (:func:`best_of_n_sample`); 2. score them with
    ``reward``; 3. keep the best by ``config.selection`` (:func:`rejection_sampling_batch`); 4.
    fine-tune ``lm_params`` on the
    kept (prompt, completion) pairs with chapter 4's SFT (:func:`completion_sft_examples`,
    ``pack_examples`` or ``pad_examples``, ``train_sft``). Llama 2 repeated such rounds, each
    from the newest model; call this again for another.

    Returns ``(params, record)``; ``record`` holds ``all_rewards [B, n]`` and the kept
    ``prompt_idx``, ``completion_idx``, ``selected_rewards`` (NumPy), the means
    ``sampled_reward_mean`` and ``selected_reward_mean``, ``n_examples`` (after
    ``drop_unfinished``) and the SFT ``history``.
    """
    k_sample, k_sft = jax.random.split(key)
    bon = best_of_n_sample(lm_params, model_config, prompts, reward, config.n, k_sample,
                           max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                           truncation_penalty=config.truncation_penalty)
    selected_batch = rejection_sampling_batch(bon.all_rewards, bon.all_tokens, bon.all_mask,
                                              config.selection, config.k)
    prompt_idx, completion_idx, tokens, mask = (np.asarray(a) for a in selected_batch)
    all_rewards = np.asarray(bon.all_rewards)
    selected = all_rewards[prompt_idx, completion_idx]
    keep = np.ones(len(prompt_idx), bool)
    if config.drop_unfinished:
        keep = np.asarray(bon.stopped)[prompt_idx, completion_idx]
    if not keep.any():
        raise ValueError("no kept completion ended with <|end|>: raise max_new_tokens or set "
                         "RSConfig.drop_unfinished=False")
    examples = completion_sft_examples(tokens[keep], mask[keep],
                                       np.asarray(prompts.lengths)[prompt_idx][keep])
    batching = ch04.pack_examples if sft_config.packing else ch04.pad_examples
    seed = int(jax.random.randint(k_sft, (), 0, np.iinfo(np.int32).max))
    params, history = ch04.train_sft(model_config, lm_params, sft_config,
                                     batching(examples, sft_config.seq_len), seed=seed,
                                     progress=progress)
    record = {
        "all_rewards": all_rewards,
        "prompt_idx": prompt_idx[keep],
        "completion_idx": completion_idx[keep],
        "selected_rewards": selected[keep],
        "sampled_reward_mean": float(all_rewards.mean()),
        "selected_reward_mean": float(selected[keep].mean()),
        "n_examples": int(keep.sum()),
        "history": history,
    }
    return params, record
