"""Chapter 6, the math: advantages, surrogate losses, aggregation, GAE (book ch. 6).

In the book's order:

* §6.1.3, §6.1.4 baselines: :func:`reinforce_advantages` (eqs. 44, 45, 46) and
  :func:`rloo_advantages` (eqs. 47, 48, 49), and the REINFORCE loss
  :func:`policy_gradient_loss` (the book's REINFORCE code);
* §6.1.5 PPO: :func:`ppo_objective` (eq. 52, Figure 20), :func:`ppo_clip_loss` and the value
  loss with optional clipping :func:`value_loss` (the book's value-loss code);
* §6.1.6 GRPO: :func:`grpo_advantages` (eq. 57; ``scale=False`` is Dr. GRPO, eq. 58) and
  :func:`grpo_loss` (eqs. 55, 56 with the KL inside the loss, eq. 74);
* §6.1.7 GSPO: :func:`gspo_sequence_ratio` (eq. 63) and :func:`gspo_loss` (eq. 64);
* §6.1.8 CISPO: :func:`cispo_loss` (eqs. 65, 66, TRL's absolute cap);
* §6.2.2 :func:`aggregate_loss` -- per sequence (eq. 67), per token (eq. 68), fixed length
  (eq. 69);
* §6.2.4 truncated importance sampling: :func:`tis_weights` (eqs. 70, 71, 72);
* §6.2.5, §6.2.6 where the KL goes: into per-token rewards (:func:`kl_penalized_token_rewards`,
  PPO), into the sequence reward (:func:`kl_penalized_sequence_rewards`, RLOO) or into the loss
  (:func:`grpo_loss`);
* §6.3.2 :func:`compute_gae` (eqs. 75, 76, 77);
* §6.3.4 DAPO's :func:`dynamic_sampling_mask` and :func:`overlong_penalty`; and the logging
  metrics :func:`clip_fraction` and :func:`approx_kl` (§6.3.3).

Shapes: ``B`` prompts, ``G`` completions per prompt (rows laid out prompt-major: row
``b * G + g`` is completion ``g`` of prompt ``b``), ``N = B * G`` sequences, ``T`` token
positions. ``logp``, ``old_logp``, ``ref_logp`` are ``[N, T]`` log-probabilities of the
sampled tokens under the current policy, the policy that generated them and the reference
model. ``mask [N, T]`` is 1 on completion tokens. Advantages ``[N]`` are broadcast over a
sequence's tokens (the bandit view, §6.2.2.2); advantages ``[N, T]`` are used as given (the MDP
view, e.g. from GAE). Every loss is the quantity to *minimise* (the negated objective).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlhf_book.lm.kl import kl_estimate, kl_k3
from rlhf_book.lm.checks import (as_float_array, as_groups, as_like, check_choice, check_range,
                                check_rank)
from rlhf_book.lm.ops import masked_mean, masked_sum

__all__ = [
    "AGGREGATIONS", "LOG_RATIO_CLAMP", "reinforce_advantages", "rloo_advantages",
    "token_advantages", "policy_gradient_loss", "ppo_objective", "ppo_clip_loss", "value_loss",
    "grpo_advantages", "grpo_loss", "gspo_sequence_ratio", "gspo_loss", "cispo_loss",
    "aggregate_loss", "tis_weights", "kl_penalized_token_rewards",
    "kl_penalized_sequence_rewards", "compute_gae", "dynamic_sampling_mask", "overlong_penalty",
    "clip_fraction", "approx_kl",
]

AGGREGATIONS = ("per_sequence", "per_token", "fixed_length")
# log pi - log pi_old is clamped before exp(), as verl and OpenRLHF do: a ratio of e^20 is
# already far outside any clip range, and exp(1e4) would be inf.
LOG_RATIO_CLAMP = 20.0


# ----------------------------------------------------------------------------------------------
# Every function checks its arguments in a line or two (rlhf_book.lm.checks): shapes, finite
# values and a non-empty batch when called eagerly, and the range of each hyperparameter it uses;
# a run's configuration checks the same ranges once more, in ``RLConfig``.


def _check_clips(clip_low, clip_high) -> None:
    """PPO's clip range ``[1 - clip_low, 1 + clip_high]`` must contain 1 and stay >= 0."""
    check_range(clip_low, "clip_low", 0.0, 1.0)
    check_range(clip_high, "clip_high", 0.0)


def _ratio(logp: jax.Array, old_logp: jax.Array) -> jax.Array:
    """``rho = pi_theta / pi_old = exp(log pi_theta - log pi_old)``, log-ratio clamped to +-20."""
    return jnp.exp(jnp.clip(logp - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))


# ----------------------------------------------------------------------------------------------
# §6.1.3, §6.1.4 REINFORCE and RLOO: baselines


# [guide:baselines]
def reinforce_advantages(rewards, baseline="mean") -> jax.Array:
    """REINFORCE's advantage ``A = R - b`` (book §6.1.3, eqs. 44, 45, 46; Williams 1992).

    ``rewards [N]``: one return per sequence. ``baseline`` is ``"mean"`` (the batch mean, the
    simplest baseline of §6.1.2), ``None`` (no baseline: vanilla REINFORCE) or a number (e.g.
    a moving average). Returns ``[N]``. Any baseline that does not depend on the sampled action
    leaves the expected gradient unchanged (``E[b grad log pi] = 0``) and lowers its variance;
    the batch mean includes each sample's own reward, which biases the gradient by a factor
    ``(N - 1) / N`` -- RLOO removes that.
    """
    rewards = as_float_array(rewards, "rewards", "[N]")
    if baseline is None:
        return rewards
    if isinstance(baseline, str):
        check_choice(baseline, "baseline", ("mean",))
        return rewards - jnp.mean(rewards)
    return rewards - as_float_array(baseline, "baseline")


def rloo_advantages(rewards) -> jax.Array:
    """REINFORCE leave-one-out (book §6.1.4, eqs. 47, 48; Kool et al. 2019, Ahmadian et al.
    2024): ``A_i = r_i - mean_{j != i} r_j`` within each prompt's group.

    ``rewards [B, G]`` (``G >= 2``; one prompt's group per row) -> ``[B, G]``. Adding a
    constant to every reward changes nothing, and an all-equal group has zero advantage. The
    baseline leaves the sample's own reward out, so it is independent of the sampled action and
    the gradient stays exactly unbiased.

    How: ``r_i - (sum_j r_j - r_i) / (G - 1)``, one row sum for the whole group, which equals
    eq. 49's ``G / (G - 1) * (r_i - mean_j r_j)``.
    """
    rewards = as_groups(rewards)
    # BEGIN SOLUTION
    G = rewards.shape[1]
    others = (jnp.sum(rewards, axis=1, keepdims=True) - rewards) / (G - 1)
    return rewards - others
    # END SOLUTION
# [/guide]


def token_advantages(advantages, mask) -> jax.Array:
    """Advantages per token ``[N, T]``: ``[N]`` (one per sequence, the bandit view of
    §6.2.2.2) broadcast over the sequence's tokens, ``[N, T]`` (the MDP view) as given."""
    mask = as_float_array(mask, "mask", "[N, T]")
    if (advantages := as_float_array(advantages, "advantages")).shape == mask.shape[:1]:
        return jnp.broadcast_to(advantages[:, None], mask.shape)
    return as_like(advantages, "advantages", mask, "mask [N, T] (or [N], one per sequence)")


# [guide:policy-gradient-loss]
def policy_gradient_loss(logp, advantages, mask, aggregation: str = "per_sequence",
                         max_length: int | None = None, tis=None) -> jax.Array:
    """The REINFORCE / RLOO loss ``-A * log pi(a_t | s_t)`` per token, aggregated (book §6.1.1,
    the book's REINFORCE code; eqs. 40, 46; the core-loss summary of §6.3.1).

    ``logp, mask [N, T]``; ``advantages [N]`` or ``[N, T]`` (held constant:
    ``stop_gradient``). ``tis [N, T]`` optionally multiplies each token's loss by a truncated
    importance weight (:func:`tis_weights`, eq. 71). Returns a scalar. With ``aggregation =
    "per_sequence"`` and one token per sequence this is ``-mean(A * log pi)``, rlax's
    ``policy_gradient_loss``.
    """
    logp = as_float_array(logp, "logp")
    adv = jax.lax.stop_gradient(token_advantages(advantages, mask))
    per_token = -adv * logp
    if tis is not None:
        per_token = per_token * jax.lax.stop_gradient(as_like(tis, "tis", per_token, "logp"))
    return aggregate_loss(per_token, mask, aggregation, max_length)
# [/guide]


# ----------------------------------------------------------------------------------------------
# §6.1.5 PPO


# [guide:ppo-objective]
def ppo_objective(ratio, advantages, clip_low=0.2, clip_high=0.2) -> jax.Array:
    """PPO's clipped surrogate *objective* per token, elementwise (book §6.1.5, eq. 52;
    Schulman et al. 2017; Figure 20 and its case table):

        J = min(rho * A, clip(rho, 1 - clip_low, 1 + clip_high) * A)

    ``ratio`` (``rho``) and ``advantages`` (``A``) of one shape ``[...]``; returns that shape.
    ``clip_high > clip_low`` is DAPO's clip-higher. The ``min`` makes ``J`` a pessimistic
    bound: for ``A > 0`` it is flat (zero gradient) once ``rho > 1 + clip_high``; for ``A < 0``
    once ``rho < 1 - clip_low``. On the other side of 1 the unclipped branch is chosen and the
    gradient is not zero (the book's §6.1.7 says otherwise: see the guide's errata).
    """
    advantages = as_like(advantages, "advantages", ratio := as_float_array(ratio, "ratio"), "ratio")
    _check_clips(clip_low, clip_high)
    # BEGIN SOLUTION
    clipped = jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
    return jnp.minimum(ratio * advantages, clipped * advantages)
    # END SOLUTION


def ppo_clip_loss(logp, old_logp, advantages, mask, clip_low=0.2, clip_high=0.2,
                  aggregation: str = "per_token", max_length: int | None = None,
                  tis=None) -> jax.Array:
    """PPO's clipped policy loss: ``-J`` per token (:func:`ppo_objective`) with ``rho =
    exp(logp - old_logp)``, aggregated by :func:`aggregate_loss` (book §6.1.5, eqs. 52, 53;
    the book's PPO code). ``old_logp`` and ``advantages`` are constants (``stop_gradient``); ``tis [N, T]``
    optionally weights each token (eq. 72). Returns a scalar.
    """
    old_logp = as_like(old_logp, "old_logp", logp := as_float_array(logp, "logp"), "logp")
    adv = jax.lax.stop_gradient(token_advantages(advantages, mask))
    ratio = _ratio(logp, jax.lax.stop_gradient(old_logp))
    per_token = -ppo_objective(ratio, adv, clip_low, clip_high)
    if tis is not None:
        per_token = per_token * jax.lax.stop_gradient(as_like(tis, "tis", per_token, "logp"))
    return aggregate_loss(per_token, mask, aggregation, max_length)
# [/guide]


# [guide:value-loss]
def value_loss(values, old_values, returns, mask, clip: float | None = None,
               aggregation: str = "per_sequence", max_length: int | None = None) -> jax.Array:
    """The critic's regression loss ``1/2 (V(s_t) - y_t)^2`` with PPO-style value clipping
    (book §6.1.5.2 and its value-loss code; CleanRL, TRL, verl):

        V_clip = old_V + clip(V - old_V, -clip, clip)
        loss_t = max(1/2 (V - y)^2, 1/2 (V_clip - y)^2)          (clip=None: the first term)

    ``values`` (trained), ``old_values`` (at rollout), ``returns`` (targets ``y_t``, e.g.
    GAE advantages + old values), ``mask``: all ``[N, T]``. The pessimistic ``max`` stops the
    critic moving more than ``clip`` away from its rollout-time prediction in one batch.
    """
    returns = as_like(returns, "returns", values := as_float_array(values, "values"), "values")
    old_values = jax.lax.stop_gradient(as_like(old_values, "old_values", values, "values"))
    check_range(clip, "clip", 0.0, strict=True)
    returns = jax.lax.stop_gradient(returns)
    per_token = 0.5 * jnp.square(values - returns)
    if clip is not None:
        clipped = old_values + jnp.clip(values - old_values, -clip, clip)
        per_token = jnp.maximum(per_token, 0.5 * jnp.square(clipped - returns))
    return aggregate_loss(per_token, mask, aggregation, max_length)
# [/guide]


# ----------------------------------------------------------------------------------------------
# §6.1.6 GRPO and Dr. GRPO


# [guide:grpo-advantages]
def grpo_advantages(rewards, scale: bool = True, eps: float = 1e-4) -> jax.Array:
    """Group-relative advantages (book §6.1.6, eq. 57; DeepSeekMath, Shao et al. 2024):

        A_i = (r_i - mean(r_1..r_G)) / (std(r_1..r_G) + eps)

    ``rewards [B, G]`` (``G >= 2``; one group per row) -> ``[B, G]``. ``std`` is
    Bessel-corrected (``ddof=1``), as ``torch.std`` in the book's code and TRL; ``eps = 1e-4``
    as there, added to the std (outside the square root) so an all-equal group gets ``A = 0``,
    not NaN. ``scale=False`` is Dr. GRPO (eq. 58; Liu et al. 2025): ``A_i = r_i - mean``, which
    is ``(G - 1) / G`` times RLOO's advantage (eq. 60).
    """
    rewards = as_groups(rewards)
    check_range(eps, "eps", 0.0, strict=True)
    # BEGIN SOLUTION
    centred = rewards - jnp.mean(rewards, axis=1, keepdims=True)
    if not scale:
        return centred
    std = jnp.std(rewards, axis=1, keepdims=True, ddof=1)
    return centred / (std + eps)
    # END SOLUTION
# [/guide]


# [guide:grpo-loss]
def grpo_loss(logp, old_logp, ref_logp, advantages, mask, beta=0.0, clip_low=0.2,
              clip_high=0.2, aggregation: str = "per_sequence", max_length: int | None = None,
              tis=None) -> jax.Array:
    """GRPO's loss (book §6.1.6, eqs. 55, 56, 74; its GRPO code): per token, PPO's clipped
    surrogate plus ``beta`` times the k3 estimate of ``KL(pi_theta || pi_ref)``:

        loss_t = -min(rho_t A, clip(rho_t, 1 - clip_low, 1 + clip_high) A) + beta * k3_t

    aggregated per sequence (the original GRPO, eq. 67), per token (DAPO) or over a fixed
    length (Dr. GRPO). The KL sits in the loss, so its gradient is the pathwise gradient of k3
    (TRL's convention); PPO and RLOO put it in the reward instead
    (:func:`kl_penalized_token_rewards`). ``ref_logp`` is a constant.
    """
    ref_logp = as_like(ref_logp, "ref_logp", logp := as_float_array(logp, "logp"), "logp")
    check_range(beta, "beta", 0.0)
    policy = ppo_clip_loss(logp, old_logp, advantages, mask, clip_low, clip_high, aggregation,
                           max_length, tis)
    # Aggregation is linear, so the KL term can be aggregated on its own with the same rule.
    kl = kl_k3(logp, jax.lax.stop_gradient(ref_logp))
    return policy + beta * aggregate_loss(kl, mask, aggregation, max_length)
# [/guide]


# ----------------------------------------------------------------------------------------------
# §6.1.7 GSPO and §6.1.8 CISPO


# [guide:gspo]
def gspo_sequence_ratio(logp, old_logp, mask) -> jax.Array:
    """GSPO's sequence-level ratio (book §6.1.7, eq. 63; Zheng et al. 2025):

        rho_i = (pi_theta(a_i | s) / pi_old(a_i | s))^(1 / |a_i|)

    the geometric mean of the token ratios over the completion's tokens (where ``mask`` is 1).
    ``logp``, ``old_logp``, ``mask`` ``[N, T]`` -> ``[N]``; 1 for an empty row. Positions off
    the mask never count, wherever the completion starts in its row (called eagerly, the inputs
    must be finite everywhere; under ``jit`` even a NaN off the mask does not reach the result). The
    mean log-ratio is clamped to ``+-LOG_RATIO_CLAMP`` (20), as the module's other ratios are,
    so that extreme log-probs give a finite ratio. The geometric mean keeps the ratio of a long
    sequence near 1 (a product of hundreds of token ratios would not be).

    How: ``exp`` of the masked mean of ``logp - old_logp`` over the tokens (``masked_mean``,
    which selects rather than multiplies, and gives 0 for an empty row), clipped before ``exp``.
    """
    old_logp = as_like(old_logp, "old_logp", logp := as_float_array(logp, "logp"), "logp")
    mask = as_like(mask, "mask", logp, "logp")
    # BEGIN SOLUTION
    mean_log_ratio = masked_mean(logp - old_logp, mask, axis=1)
    return jnp.exp(jnp.clip(mean_log_ratio, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    # END SOLUTION


def gspo_loss(logp, old_logp, advantages, mask, clip_low=3e-4, clip_high=4e-4) -> jax.Array:
    """GSPO's loss (book §6.1.7, eq. 64): ``-(1/N) sum_i min(rho_i A_i, clip(rho_i, 1 -
    clip_low, 1 + clip_high) A_i)`` with the sequence ratio :func:`gspo_sequence_ratio` and
    one advantage per sequence, ``advantages [N]``. The clip range is that of the GSPO paper
    (3e-4 / 4e-4), two orders of magnitude below PPO's because ``rho_i`` is a per-token
    geometric mean. Rows with no completion token are left out of the mean."""
    ratio = gspo_sequence_ratio(logp, jax.lax.stop_gradient(old_logp), mask)
    advantages = as_like(advantages, "advantages", ratio, "[N] (one per sequence)")
    objective = ppo_objective(ratio, jax.lax.stop_gradient(advantages), clip_low, clip_high)
    nonempty = jnp.sum(mask, axis=1) > 0
    return -masked_mean(objective, nonempty)
# [/guide]


# [guide:cispo]
def cispo_loss(logp, old_logp, advantages, mask, ratio_cap=5.0, aggregation: str = "per_token",
               max_length: int | None = None) -> jax.Array:
    """CISPO's loss (book §6.1.8, eqs. 65, 66; MiniMax-M1, 2025): clip the importance *weight*,
    not the objective, and hold it constant:

        loss_t = -stop_gradient(min(rho_t, ratio_cap)) * A_t * log pi_theta(a_t | s_t)

    The exercise is the per-token loss ``per_token [N, T]`` (``logp``, ``old_logp``, ``mask``
    ``[N, T]``; ``adv``, the advantages ``[N]`` or ``[N, T]`` already spread over the tokens
    as ``[N, T]``), which the last line aggregates into a scalar with :func:`aggregate_loss`
    (per token by default, eq. 65's ``1 / sum_i |a_i|``). Every token keeps a gradient ``-w A
    grad log pi``; the cap only bounds how much one token can be amplified, and no gradient
    reaches ``old_logp``. ``ratio_cap`` is TRL's absolute cap on ``rho`` (``epsilon_high``, 5.0
    recommended), not eq. 66's ``1 + eps_high``; there is no lower clip, as in MiniMax-M1 (the
    book's two-sided ``clip(rho, 1 - eps_low, 1 + eps_high)`` would *raise* the weight of a
    token whose probability fell). Log-probs of any size give a finite loss.

    How: ``rho`` from the module's ``_ratio`` (whose log-ratio is clamped to +-20 before
    ``exp``), ``jnp.minimum`` with the cap, ``jax.lax.stop_gradient`` around the weight.
    """
    old_logp = as_like(old_logp, "old_logp", logp := as_float_array(logp, "logp"), "logp")
    adv = jax.lax.stop_gradient(token_advantages(advantages, mask))
    check_range(ratio_cap, "ratio_cap", 0.0, strict=True)
    # BEGIN SOLUTION
    weight = jax.lax.stop_gradient(jnp.minimum(_ratio(logp, old_logp), ratio_cap))
    per_token = -weight * adv * logp
    # END SOLUTION
    return aggregate_loss(per_token, mask, aggregation, max_length)
# [/guide]


# ----------------------------------------------------------------------------------------------
# §6.2.2 Loss aggregation


# [guide:aggregate-loss]
def aggregate_loss(per_token_loss, mask, mode: str = "per_sequence",
                   max_length: int | None = None) -> jax.Array:
    """Reduce a per-token loss ``[N, T]`` to a scalar (book §6.2.2, eqs. 67, 68, 69), counting
    only the completion tokens, where ``mask [N, T]`` is 1 (``|a_i|`` tokens in row ``i``):

    * ``"per_sequence"`` (eq. 67, the original GRPO): ``mean_i (sum_t l_it / |a_i|)`` -- every
      sequence weighs the same, so a token of a short sequence weighs more. Rows with no
      completion token are left out of the mean over sequences (verl's convention);
    * ``"per_token"`` (eq. 68, DAPO): ``sum_it l_it / sum_i |a_i|`` -- every token weighs the
      same;
    * ``"fixed_length"`` (eq. 69, Dr. GRPO): ``sum_it l_it / (N * max_length)`` -- a constant
      normaliser (``max_length`` defaults to the padded width ``T``; TRL uses the configured
      maximum completion length).

    An all-zero mask gives 0, not NaN, in every mode. The book's example: token losses
    ``[1, 1, 1, 1, 10]`` and ``[1] * 9 + [10]`` give 2.35, 2.2 and (with ``max_length = 10``)
    1.65, the mean of 1.4 and 1.9.

    How: ``masked_mean`` and ``masked_sum`` (they select with ``jnp.where`` and give 0 for an
    empty selection): per sequence, a masked mean over ``T``, then a masked mean over the rows
    with at least one token.
    """
    per_token_loss = as_float_array(per_token_loss, "per_token_loss")
    mask = as_like(mask, "mask", per_token_loss, "per_token_loss [N, T]")
    check_choice(mode, "mode", AGGREGATIONS)
    check_range(max_length, "max_length", 0, strict=True)
    # BEGIN SOLUTION
    if mode == "per_sequence":
        per_sequence = masked_mean(per_token_loss, mask, axis=1)
        return masked_mean(per_sequence, jnp.sum(mask, axis=1) > 0)
    if mode == "per_token":
        return masked_mean(per_token_loss, mask)
    length = mask.shape[1] if max_length is None else max_length
    return masked_sum(per_token_loss, mask) / (mask.shape[0] * length)
    # END SOLUTION
# [/guide]


# ----------------------------------------------------------------------------------------------
# §6.2.4 Truncated importance sampling


# [guide:tis]
def tis_weights(learner_logp, sampler_logp, cap: float = 2.0, log_clamp: float = 10.0):
    """Truncated importance-sampling weights (book §6.2.4, eq. 70 and its TIS code; Yao et al. 2025):

        w_t = min(pi_learner(a_t) / pi_sampler(a_t), cap)

    per token, held constant (no gradient reaches either argument), to multiply each token's
    policy loss. The cap is one-sided: a ratio below 1 passes unchanged. The log-ratio is
    clamped to ``+-log_clamp`` before it is exponentiated, for safety. ``learner_logp`` and
    ``sampler_logp`` of any matching shape ``[...]``; returns that shape. The book's example:
    log-ratios ``[-12, -0.5, 0, 0.5, 1, 12]`` give ``[e^-10, 0.607, 1, 1.649, 2, 2]``.

    How: ``jnp.clip`` of the log-ratio, ``exp``, ``jnp.minimum`` with the cap, all inside
    ``jax.lax.stop_gradient``.
    """
    learner_logp = as_float_array(learner_logp, "learner_logp")
    sampler_logp = as_like(sampler_logp, "sampler_logp", learner_logp, "learner_logp")
    check_range(cap, "cap", 0.0, strict=True)
    check_range(log_clamp, "log_clamp", 0.0, strict=True)
    # BEGIN SOLUTION
    log_ratio = jnp.clip(learner_logp - sampler_logp, -log_clamp, log_clamp)
    return jax.lax.stop_gradient(jnp.minimum(jnp.exp(log_ratio), cap))
    # END SOLUTION
# [/guide]


# ----------------------------------------------------------------------------------------------
# §6.2.5, §6.2.6 Where the KL goes


# [guide:kl-in-reward]
def kl_penalized_token_rewards(scores, logp, ref_logp, mask, beta: float,
                               estimator: str = "k1") -> jax.Array:
    """PPO-style per-token rewards with the KL folded in (book §6.2.5 and its PPO code; Figure 17):

        r_t = -beta * KL_t  on every completion token,  + score on the last one

    ``scores [N]`` (the reward model's or verifier's score of each completion), ``logp``,
    ``ref_logp``, ``mask [N, T]`` -> ``[N, T]`` (0 off the completion). The KL is a constant
    here (``stop_gradient``): a reward, not a loss term, so it acts through the advantage.
    ``estimator`` is ``"k1"`` (InstructGPT, TRL's PPO default) or ``"k2"``/``"k3"``.
    """
    kl = jax.lax.stop_gradient(kl_estimate(logp, ref_logp, estimator))
    scores = as_like(scores, "scores", kl[:, 0], "[N] (one per completion)")
    mask = as_like(mask, "mask", kl, "logp [N, T]")
    check_range(beta, "beta", 0.0)
    T = mask.shape[1]
    last = T - 1 - jnp.argmax(mask[:, ::-1] > 0, axis=1)  # index of each row's last token
    at_end = (jnp.arange(T)[None, :] == last[:, None]) & (mask > 0)
    return jnp.where(mask > 0, -beta * kl, 0.0) + jnp.where(at_end, scores[:, None], 0.0)


def kl_penalized_sequence_rewards(scores, logp, ref_logp, mask, beta: float,
                                  estimator: str = "k1") -> jax.Array:
    """RLOO/REINFORCE-style sequence rewards (book §6.1.4; TRL's RLOO): the per-token
    KL summed over the completion and subtracted from the score,
    ``R = score - beta * sum_t KL_t``. ``scores [N]``, token arrays ``[N, T]`` -> ``[N]``
    (a constant, as above)."""
    kl = jax.lax.stop_gradient(kl_estimate(logp, ref_logp, estimator))
    scores = as_like(scores, "scores", kl[:, 0], "[N] (one per completion)")
    mask = as_like(mask, "mask", kl, "logp [N, T]")
    check_range(beta, "beta", 0.0)
    return scores - beta * masked_sum(kl, mask, axis=1)
# [/guide]


# ----------------------------------------------------------------------------------------------
# §6.3.2 Generalised advantage estimation


# [guide:gae]
def compute_gae(rewards, values, mask, gamma: float = 1.0, lam: float = 0.95):
    """Generalised advantage estimation over the tokens of each completion (book §6.3.2,
    eqs. 75, 76, 77 and its GAE code; Schulman et al. 2016):

        delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)
        A_t     = sum_l (gamma lam)^l delta_{t+l}

    ``rewards``, ``values``, ``mask``: ``[N, T]``; the exercise computes ``advantages
    [N, T]``, 0 off the completion, and the last lines add ``returns = advantages + values``
    (the critic's targets) and return both. The episode ends after the last masked-in token:
    ``V`` after it is 0 (no bootstrap), and positions off the mask (prompt, padding, a hole)
    are skipped, so ``s_{t+1}`` is the next completion token and a completion that starts at
    any offset gives the same numbers as when it is left-aligned. On a fully masked-in row this
    is ``rlax.truncated_generalized_advantage_estimation`` with ``discount = gamma`` and a final
    value of 0. ``lam = 1`` gives Monte-Carlo returns minus ``V``; ``lam = 0`` one-step TD.
    Works under ``jit`` and ``vmap``.

    How: backwards with one ``lax.scan`` over ``T`` (time-major, ``reverse=True``), from the
    recursion ``A_t = delta_t + gamma * lam * A_{t+1}`` (eq. 76); at a position off the mask the
    carry (next value, next advantage) passes through unchanged and the output is 0.
    """
    values = as_like(values, "values", rewards := as_float_array(rewards, "rewards"), "rewards")
    mask = as_like(mask, "mask", rewards, "rewards [N, T]")
    check_range(gamma, "gamma", 0.0, 1.0)
    check_range(lam, "lam", 0.0, 1.0)
    dtype = jnp.result_type(rewards, values)  # one dtype for the scan's carry
    rewards, values = rewards.astype(dtype), values.astype(dtype)
    gamma, lam = jnp.asarray(gamma, dtype), jnp.asarray(lam, dtype)
    # BEGIN SOLUTION
    def backwards(carry, step):
        next_value, next_advantage = carry
        r, v, m = step
        delta = r + gamma * next_value - v
        advantage = delta + gamma * lam * next_advantage
        # Off the mask nothing happens: carry the next real token's value and advantage through.
        carry = (jnp.where(m > 0, v, next_value), jnp.where(m > 0, advantage, next_advantage))
        return carry, jnp.where(m > 0, advantage, 0.0)

    zeros = jnp.zeros(mask.shape[0], rewards.dtype)
    _, advantages = jax.lax.scan(backwards, (zeros, zeros), (rewards.T, values.T, mask.T),
                                 reverse=True)
    advantages = advantages.T
    # END SOLUTION
    returns = jnp.where(mask > 0, advantages + values, 0.0)
    return advantages, returns
# [/guide]


# ----------------------------------------------------------------------------------------------
# §6.3.4 DAPO's additions, and §6.3.3 the metrics to watch


def dynamic_sampling_mask(rewards) -> jax.Array:
    """DAPO's dynamic-sampling filter (book §6.3.4; Yu et al. 2025): ``[B, G] -> bool [B]``,
    True for groups whose rewards are not all equal. A group where every completion got the
    same reward has zero group-relative advantage and contributes no gradient; DAPO drops it
    and refills the batch (the book's "reward 0 or 1 for all samples"; see the guide's errata). Under
    ``jit`` the batch size is fixed, so the loop masks such groups out instead of refilling."""
    check_rank(rewards := as_float_array(rewards, "rewards"), 2, "rewards", "[B, G]")
    return jnp.max(rewards, axis=1) > jnp.min(rewards, axis=1)


def overlong_penalty(lengths, max_length: int, cache_length: int) -> jax.Array:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13): 0 up to ``max_length -
    cache_length`` tokens, then a linear ramp to -1 at ``max_length``, and -1 beyond.
    ``lengths [N]`` -> ``[N]``, added to the task reward."""
    check_range(cache_length, "cache_length", 0, max_length, strict=True)
    start = max_length - cache_length
    return -jnp.clip((as_float_array(lengths, "lengths") - start) / cache_length, 0.0, 1.0)


def clip_fraction(logp, old_logp, advantages, mask, clip_low=0.2, clip_high=0.2) -> jax.Array:
    """Fraction of completion tokens on which PPO's clipped branch binds, i.e. whose gradient
    is zero: ``A > 0`` with ``rho > 1 + clip_high`` or ``A < 0`` with ``rho < 1 - clip_low``
    (the book's PPO and GRPO code). The book's text (§6.3.3) calls any ratio outside the
    interval "clipped"; that larger count includes tokens that still get a gradient (see the
    guide's errata)."""
    old_logp = as_like(old_logp, "old_logp", logp := as_float_array(logp, "logp"), "logp")
    adv = token_advantages(advantages, mask)
    _check_clips(clip_low, clip_high)
    ratio = _ratio(logp, old_logp)
    flat = ((adv > 0) & (ratio > 1 + clip_high)) | ((adv < 0) & (ratio < 1 - clip_low))
    return masked_mean(flat.astype(jnp.float32), mask)


def approx_kl(logp, old_logp, mask) -> jax.Array:
    """How far the policy moved from the one that sampled the batch: the mean k3 estimate of
    ``KL(pi_old || pi_theta)`` over completion tokens (CleanRL's ``approx_kl``; the book's code
    logs k2). Not the KL to the reference model."""
    old_logp = as_like(old_logp, "old_logp", logp := as_float_array(logp, "logp"), "logp")
    return masked_mean(kl_k3(old_logp, logp), as_like(mask, "mask", logp, "logp [N, T]"))
