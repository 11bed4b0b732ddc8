"""Chapter 9: rejection sampling and best-of-N.

Book chapter 9 ("Rejection sampling"). Rejection sampling (RS), as RLHF uses the name, is the
simplest way to spend a reward model: for each prompt sample ``N`` completions from the current
model, score them with the reward model, keep the best, and fine-tune the model on what was kept
with the ordinary instruction-tuning loss (book §9.1, Figure 28; WebGPT, Anthropic's HH,
Llama 2 Chat; formalised as RAFT and RSO). Best-of-N (BoN, §9.3) is the same generate-and-score
step with no fine-tuning: it runs at inference time and leaves the model unchanged.

The module follows the book's order:

* §9.1 the two selection rules on a reward matrix ``R [B, N]`` (``B`` prompts, ``N`` completions
  each): the best completion of every prompt (:func:`select_top_per_prompt`, eqs. 113-114) or
  the best ``K`` pairs overall (:func:`select_top_overall`, eqs. 115-116), with the book's worked
  example (eqs. 117-123) reproduced in the tests, and the inverse permutation of the book's code
  snippet (:func:`inverse_permutation`);
* §9.3 best-of-N as a distribution: the analytic KL ``log N - (N - 1)/N`` (:func:`best_of_n_kl`),
  and for a discrete base distribution the exact BoN distribution
  (:func:`best_of_n_distribution`), its exact KL (:func:`best_of_n_exact_kl`, never above the
  formula) and its expected reward (:func:`expected_best_of_n_reward`);
* BoN sampling on the mini GPT, one jitted call (:func:`best_of_n_sample`), and rejection-sampling
  fine-tuning with chapter 4's SFT (:func:`rejection_sampling_finetune`).

The name is a misnomer kept for history: statistical rejection sampling accepts a proposal with
probability proportional to target/proposal and yields exact samples of the target, whereas
top-1 selection yields the best-of-N distribution (RSO, Liu et al. 2024, restores the
statistical meaning). Shapes: ``B`` prompts, ``N`` (or ``n``) completions per prompt, ``K``
outcomes of a discrete distribution, ``T`` tokens. Indices are 0-based; the book's are 1-based.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_book import ch04_instruction_tuning as ch04
from rlhf_book.ch05_reward_models import best_of_n
from rlhf_book.ch06_policy_gradients import PromptSet, Reward
from rlhf_book.lm import gpt, sampling, tokenizer
from rlhf_book.lm.checks import as_float_array, check_rank

__all__ = [
    "select_top_per_prompt", "unflatten_index", "select_top_overall", "inverse_permutation",
    "best_of_n_kl", "best_of_n_distribution", "best_of_n_exact_kl", "expected_best_of_n_reward",
    "BestOfN", "best_of_n_sample", "completion_sft_examples", "RSConfig",
    "rejection_sampling_finetune",
]


def _concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _reward_matrix(rewards, name: str = "rewards") -> jax.Array:
    rewards = as_float_array(rewards, name)
    check_rank(rewards, 2, name, "[B, N]")
    if rewards.shape[0] < 1 or rewards.shape[1] < 1:
        raise ValueError(f"{name} must have at least one prompt and one completion, "
                         f"got shape {rewards.shape}")
    if _concrete(rewards) and not np.all(np.isfinite(np.asarray(rewards))):
        raise ValueError(f"{name} must be finite (a NaN has no rank)")
    return rewards


# ----------------------------------------------------------------------------------------------
# §9.1 Selecting the completions to keep


# [guide:rs-select-per-prompt]
def select_top_per_prompt(rewards) -> jax.Array:
    """The best completion of every prompt, ``S(R) = [argmax_j r_{1,j}, ..., argmax_j r_{M,j}]``
    (book §9.1, eq. 113): ``rewards [B, N] -> [B]`` column indices (0-based; the book's are
    1-based), ties to the first. ``Y_chosen[i] = Y[i, S(R)_i]`` (eq. 114). The same rule is the
    reranking of chapter 5, :func:`rlhf_book.ch05_reward_models.best_of_n`, which this calls."""
    return best_of_n(_reward_matrix(rewards))
# [/guide]


def unflatten_index(flat, n_completions: int):
    """A row-major flat index ``k`` of ``R_flat`` (eq. 115) as ``(prompt, completion) =
    (k // N, k % N)`` (book L2896, there 1-based: ``i = floor(k / N) + 1``, ``j = (k mod N) +
    1``). Any shape of ``flat``; returns two int arrays of that shape."""
    if not isinstance(n_completions, (int, np.integer)) or n_completions < 1:
        raise ValueError(f"n_completions must be an int >= 1, got {n_completions!r}")
    flat = jnp.asarray(flat)
    if not jnp.issubdtype(flat.dtype, jnp.integer):
        raise ValueError(f"flat must hold integer indices, got dtype {flat.dtype}")
    return flat // n_completions, flat % n_completions


# [guide:rs-select-top-k]
def select_top_overall(rewards, k: int):
    """The ``k`` best ``(prompt, completion)`` pairs of the whole matrix (book §9.1, eqs.
    115-116): flatten ``rewards [B, N]`` row-major, take the ``k`` largest, map each flat index
    back with :func:`unflatten_index`. Returns ``(prompt_idx [k], completion_idx [k])``, best
    first, ties to the lower flat index (``jax.lax.top_k``'s order). Unlike the per-prompt rule
    a prompt may contribute several completions or none.

    Erratum: eq. (116) writes ``S_K(R_flat) = argsort(R_flat)[-K:]`` with an ascending argsort,
    which on the worked example returns the right *set* in ascending order, ``[0, 11, 5, 14,
    8]``, while eq. (123) prints ``[8, 5, 14, 0, 11]``: the descending order, i.e.
    ``argsort(-R_flat, stable)[:K]`` or ``lax.top_k``. We return the printed, best-first order;
    which completions are kept (the set) is the same either way.
    """
    rewards = _reward_matrix(rewards)
    B, N = rewards.shape
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= B * N:
        raise ValueError(f"k must be an int in [1, B * N] = [1, {B * N}], got {k!r}")
    # BEGIN SOLUTION
    _, flat = jax.lax.top_k(rewards.reshape(-1), int(k))
    return unflatten_index(flat, N)
    # END SOLUTION
# [/guide]


# [guide:inverse-permutation]
def inverse_permutation(perm) -> jax.Array:
    """``inv`` with ``inv[perm] = arange(n)``, so that ``x[perm][inv] == x``: how to undo a sort
    (book §9.1's code snippet, L2942-2961, scatter form; ``argsort(perm)`` is its second form).

    The snippet is titled as an implementation of the selection methods but implements
    neither: it only undoes a sort (selection itself is :func:`select_top_per_prompt` and
    :func:`select_top_overall`)."""
    perm = jnp.asarray(perm)
    if perm.ndim != 1 or not jnp.issubdtype(perm.dtype, jnp.integer):
        raise ValueError(f"perm must be a rank-1 integer array, got shape {perm.shape} and "
                         f"dtype {perm.dtype}")
    n = perm.shape[0]
    if _concrete(perm) and not np.array_equal(np.sort(np.asarray(perm)), np.arange(n)):
        raise ValueError(f"perm must be a permutation of 0..{n - 1}")
    # BEGIN SOLUTION
    return jnp.zeros_like(perm).at[perm].set(jnp.arange(n, dtype=perm.dtype))
    # END SOLUTION
# [/guide]


# ----------------------------------------------------------------------------------------------
# §9.3 Best-of-N as a distribution


def _check_n(n, name: str = "n", integer: bool = True) -> None:
    """``n >= 1`` (an integer for the exact distribution), checked when concrete."""
    if not _concrete(n):
        return
    arr = np.asarray(n)
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer)
                                 or (not integer and np.issubdtype(arr.dtype, np.floating))):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind} >= 1, got {n!r}")
    if not np.all(arr >= 1):
        raise ValueError(f"{name} must be >= 1 (the best of at least one draw), got {n!r}")


# [guide:bon-kl]
def best_of_n_kl(n) -> jax.Array:
    """``KL(pi_BoN || pi) = log n - (n - 1) / n``, the KL of best-of-``n`` from the base policy
    (book §9.3, where it makes BoN comparable with RL; Stiennon et al. 2020; Gao et al. 2022;
    Beirami et al. 2024, who prove it an upper bound). Exact when rewards are
    continuous (no ties); for a discrete distribution :func:`best_of_n_exact_kl` is smaller.
    ``n`` a number or array, every entry ``>= 1``; 0 at ``n = 1``, growing like ``log n``."""
    _check_n(n, integer=False)
    n = jnp.asarray(n, jnp.result_type(float))
    # BEGIN SOLUTION
    return jnp.log(n) - (n - 1.0) / n
    # END SOLUTION
# [/guide]


def _discrete(probs, rewards):
    """Validated ``probs [K]`` (normalised) and ``rewards [K]``."""
    probs = as_float_array(probs, "probs")
    rewards = as_float_array(rewards, "rewards")
    check_rank(probs, 1, "probs", "[K]")
    check_rank(rewards, 1, "rewards", "[K]")
    if probs.shape[0] < 1:
        raise ValueError("probs must hold at least one outcome")
    if rewards.shape != probs.shape:
        raise ValueError(f"rewards must have the shape of probs {probs.shape}, got {rewards.shape}")
    # Value checks on concrete arrays, in NumPy (no compilation per shape); skipped under jit.
    if _concrete(probs):
        p = np.asarray(probs, np.float64)
        if not np.all(np.isfinite(p)) or np.any(p < 0):
            raise ValueError("probs must be finite and non-negative")
        if abs(p.sum() - 1.0) > 1e-4:
            raise ValueError(f"probs must sum to 1, got a sum of {p.sum():.6g}")
    if _concrete(rewards) and not np.all(np.isfinite(np.asarray(rewards))):
        raise ValueError("rewards must be finite")
    return probs, rewards


def _bon_log_ratio(probs, rewards, n):
    """``log(pi_BoN(y) / pi(y))`` for every outcome, ``[K]`` (0 where ``pi(y) = 0``).

    The best of ``n`` draws has reward ``<= v`` iff all ``n`` do, so the reward value ``v``
    of a tie group ``G`` wins with probability ``F(v)^n - F(v^-)^n``, ``F(v) = P(r(Y) <= v)``.
    Within ``G`` the chosen outcome is the first maximal draw (argmax, like
    :func:`select_top_per_prompt`), which by exchangeability is ``y`` with probability
    ``pi(y) / pi(G)``: the group's mass is shared in proportion to the base probabilities, so
    ``log(pi_BoN(y) / pi(y)) = log(F^n - F_-^n) - log pi(G)``, the same for all of ``G``.

    For precision, ``F`` is read from the tail where it is small (the lower cumulative sum, or
    one minus the upper one), and ``F^n - F_-^n = F^n (1 - (1 - pi(G)/F)^n)`` is evaluated with
    ``log1p`` and ``expm1``: no cancellation when ``pi(G)`` is tiny next to ``F``.
    """
    K = probs.shape[0]
    dtype = probs.dtype
    order = jnp.argsort(rewards, stable=True)
    r_sorted, p_sorted = rewards[order], probs[order]
    starts = jnp.concatenate([jnp.ones(1, bool), r_sorted[1:] != r_sorted[:-1]])
    group = jnp.cumsum(starts) - 1  # tie group of each sorted outcome, 0 .. G-1
    mass = jax.ops.segment_sum(p_sorted, group, num_segments=K)  # [K]; 0 past the last group
    zero = jnp.zeros(1, dtype)
    below = jnp.concatenate([zero, jnp.cumsum(mass)[:-1]])  # P(r < v_g)
    above = jnp.concatenate([jnp.cumsum(mass[::-1])[::-1][1:], zero])  # P(r > v_g)
    top = above < 0.5
    cdf = jnp.where(top, 1.0 - above, below + mass)  # F(v_g)
    log_cdf = jnp.where(top, jnp.log1p(-above), jnp.log(jnp.where(top, 1.0, below + mass)))
    has_mass = mass > 0
    share = jnp.where(has_mass, jnp.minimum(mass / jnp.where(has_mass, cdf, 1.0), 1.0), 0.0)
    n = jnp.asarray(n, dtype)
    # log(F^n - F_-^n) = n log F + log(1 - (1 - share)^n); -inf for groups without mass.
    log_win = n * log_cdf + jnp.log(-jnp.expm1(n * jnp.log1p(-share)))
    log_win = jnp.where(has_mass, log_win, -jnp.inf)
    log_ratio_g = jnp.where(has_mass, log_win - jnp.log(jnp.where(has_mass, mass, 1.0)), 0.0)
    # Back from groups to sorted outcomes, then to the caller's order.
    return jnp.zeros(K, dtype).at[order].set(log_ratio_g[group])


@jax.jit
def _bon_pmf_jit(probs, rewards, n):
    # Divide out the round-off of a sum that is 1 up to 1e-4, so that the CDF ends at 1.
    probs = probs / jnp.sum(probs)
    log_ratio = _bon_log_ratio(probs, rewards, n)
    return jnp.where(probs > 0, probs * jnp.exp(log_ratio), 0.0), log_ratio


def _bon_pmf(probs, rewards, n):
    """``(pi_BoN [K], log(pi_BoN / pi) [K])``, compiled once per ``K`` and dtype (``n`` is an
    argument, so a sweep over ``n`` does not recompile)."""
    return _bon_pmf_jit(probs, rewards, jnp.asarray(n, probs.dtype))


# [guide:bon-distribution]
def best_of_n_distribution(probs, rewards, n) -> jax.Array:
    """The exact distribution of the best of ``n`` i.i.d. draws from a discrete ``pi``:
    ``probs [K]`` over outcomes with ``rewards [K]`` -> ``pi_BoN [K]`` (book §9.3; Beirami et
    al. 2024).

    ``pi_BoN(y) = (F(r_y)^n - F(r_y^-)^n) * pi(y) / pi(G_y)``, with ``F(v) = P(r(Y) <= v)``,
    ``F(v^-) = P(r(Y) < v)`` and ``G_y`` the outcomes whose reward equals ``r_y``. Ties are
    broken like ``argmax`` over the draws (the first best draw wins), which shares a tie
    group's mass in proportion to the base probabilities; with distinct rewards it is Beirami et
    al.'s ``F(y)^n - F^-(y)^n`` (which counts a tie group once per member if used with ties). ``n = 1`` gives ``pi``; an outcome of probability 0 gets 0. Only the
    order of the rewards matters. ``n`` may be traced (``jax.vmap`` over ``n`` for curves).
    """
    _check_n(n)
    probs, rewards = _discrete(probs, rewards)
    return _bon_pmf(probs, rewards, n)[0]
# [/guide]


def best_of_n_exact_kl(probs, rewards, n) -> jax.Array:
    """``KL(pi_BoN || pi) = sum_y pi_BoN(y) log(pi_BoN(y) / pi(y))`` for the exact BoN
    distribution (book §9.3; Beirami et al. 2024). A scalar, ``<= log n - (n - 1)/n``
    (:func:`best_of_n_kl`), approaching it from below as the distribution becomes continuous;
    strictly below with ties. With ties it equals the KL between the distributions of the reward
    *level* (BoN keeps the proportions inside a tie group). Computed from the log-ratio, so an
    outcome of probability 0 contributes 0, not ``0 * log 0``."""
    _check_n(n)
    probs, rewards = _discrete(probs, rewards)
    pmf, log_ratio = _bon_pmf(probs, rewards, n)
    return jnp.sum(jnp.where(pmf > 0, pmf * log_ratio, 0.0))


def expected_best_of_n_reward(probs, rewards, n) -> jax.Array:
    """``E[max_{i <= n} r(Y_i)] = sum_y pi_BoN(y) r_y``, the expected reward of best-of-``n``
    (book §9.3; the "reward vs N" curves of Gao et al. 2022), exactly, from
    :func:`best_of_n_distribution`. Non-decreasing in ``n``; ``n = 1`` gives ``E_pi[r]``. For
    rewards ~ N(0, 1) it is 0.5642 at ``n = 2`` and grows like ``sqrt(2 log n)``."""
    _check_n(n)
    probs, rewards = _discrete(probs, rewards)
    return jnp.sum(_bon_pmf(probs, rewards, n)[0] * rewards)


# ----------------------------------------------------------------------------------------------
# Best-of-N sampling on the mini GPT


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
    stopped = jnp.any((gen.tokens == tokenizer.END) & (gen.mask > 0), axis=1)
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

    ``prompts``: a :class:`rlhf_book.ch06_policy_gradients.PromptSet` (``encode_prompts``);
    ``reward``: a :class:`rlhf_book.ch06_policy_gradients.Reward` whose ``prompt_ids`` index
    ``prompts`` (e.g. ``text_reward(data.gold_reward, questions)`` or a reward model).
    ``truncation_penalty`` (None: off) replaces the reward of a completion that did not stop
    within ``max_new_tokens``, as in chapter 6's loop. The book's settings: temperature 0.7-1.0,
    ``n`` from 10 to 30 or more (§9.2).
    """
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if not isinstance(prompts, PromptSet):
        raise ValueError(f"prompts must be a PromptSet (ch06.encode_prompts), got "
                         f"{type(prompts).__name__}")
    if not isinstance(reward, Reward):
        raise ValueError(f"reward must be a ch06 Reward, got {type(reward).__name__}")
    gpt.check_tokens(prompts.tokens, model_config, name="prompts.tokens")
    B, P = prompts.tokens.shape
    if prompts.lengths.shape != (B,):
        raise ValueError(f"prompts.lengths must have shape ({B},), got {prompts.lengths.shape}")
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if P + max_new_tokens > model_config.max_seq_len:
        raise ValueError(f"prompt width {P} + max_new_tokens {max_new_tokens} exceeds the "
                         f"model's max_seq_len={model_config.max_seq_len}")
    if _concrete(temperature) and not float(temperature) > 0:
        raise ValueError(f"temperature must be > 0 (greedy decoding would give n identical "
                         f"samples), got {temperature}")
    return _best_of_n_jit(lm_params, reward.params, prompts.tokens, prompts.lengths, key,
                          jnp.asarray(temperature, jnp.float32), model_config=model_config,
                          reward_fn=reward.fn, n=int(n), max_new_tokens=int(max_new_tokens),
                          top_k=int(top_k), truncation_penalty=None if truncation_penalty is None
                          else float(truncation_penalty))


# ----------------------------------------------------------------------------------------------
# Rejection-sampling fine-tuning (book §9.1, Figure 28)


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
    """One round of rejection sampling (book §9.1-9.2). ``n`` samples per prompt (the book:
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
        if not isinstance(self.n, int) or self.n < 1:
            raise ValueError(f"RSConfig.n must be an int >= 1, got {self.n!r}")
        if self.selection not in ("per_prompt", "top_k"):
            raise ValueError(f"RSConfig.selection must be 'per_prompt' or 'top_k', "
                             f"got {self.selection!r}")
        if self.k is not None and (not isinstance(self.k, int) or self.k < 1):
            raise ValueError(f"RSConfig.k must be None or an int >= 1, got {self.k!r}")
        if not self.temperature > 0:
            raise ValueError(f"RSConfig.temperature must be > 0, got {self.temperature}")


def rejection_sampling_finetune(lm_params, model_config: gpt.GPTConfig, prompts: PromptSet,
                                reward: Reward, config: RSConfig, sft_config: ch04.SFTConfig,
                                *, key, progress: bool = False) -> tuple[Any, dict]:
    """One round of rejection sampling (book §9.1, Figure 28): 1. sample ``config.n``
    completions per prompt from ``lm_params`` (:func:`best_of_n_sample`); 2. score them with
    ``reward``; 3. keep the best by ``config.selection``; 4. fine-tune ``lm_params`` on the
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
    B = prompts.tokens.shape[0]
    if config.selection == "per_prompt":
        prompt_idx, completion_idx = np.arange(B), np.asarray(bon.choice)
    else:
        k = B if config.k is None else config.k
        prompt_idx, completion_idx = (np.asarray(a) for a in
                                      select_top_overall(bon.all_rewards, k))
    all_rewards = np.asarray(bon.all_rewards)
    selected = all_rewards[prompt_idx, completion_idx]
    keep = np.ones(len(prompt_idx), bool)
    if config.drop_unfinished:
        keep = np.asarray(bon.stopped)[prompt_idx, completion_idx]
    if not keep.any():
        raise ValueError("no kept completion ended with <|end|>: raise max_new_tokens or set "
                         "RSConfig.drop_unfinished=False")
    tokens = np.asarray(bon.all_tokens)[prompt_idx, completion_idx][keep]
    mask = np.asarray(bon.all_mask)[prompt_idx, completion_idx][keep]
    examples = completion_sft_examples(tokens, mask, np.asarray(prompts.lengths)[prompt_idx][keep])
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
