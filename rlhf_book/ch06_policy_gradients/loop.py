"""Chapter 6, the loop: on-policy RL on the mini GPT, one jitted step at a time (book ch. 6,
Figures 16, 17, 18, 19 and 22).

One RL step, all inside one compiled function:

1. **rollout** -- draw ``B`` prompts, sample ``G`` completions of each with the KV cache
   (:func:`rlhf_book.lm.sampling.generate`'s decoding loop), remembering the sampler's
   log-probabilities;
2. **score** -- a reward per completion: the chapter-5 reward model, or any Python function of
   the text (the gold reward, an arithmetic verifier) run on the host through
   ``jax.pure_callback``, as real systems call verifiers;
3. **reference** -- log-probabilities of the sampled tokens under the policy at rollout
   (``pi_old``) and under the frozen reference model (``pi_ref``), the per-token KL;
4. **advantages** -- by the algorithm's rule (batch-mean REINFORCE, RLOO, GRPO, Dr. GRPO, or
   GAE on a value head for PPO), with the KL either folded into the rewards (REINFORCE, RLOO,
   PPO) or added to the loss (GRPO and its descendants), as the book's §6.1.4 describes;
5. **update** -- ``epochs`` passes over the batch in ``minibatches``, each an optax step
   (clipped by global norm), all inside ``lax.scan``. For GRPO and Dr. GRPO on the whole batch
   a step's loss and gradient are :func:`grpo_step`, the chapter's loop-level exercise.

The algorithm is a name in :data:`ALGORITHMS`; :class:`RLConfig` holds the rest. Build with
:func:`make_rl_step` (one step, for a Python loop with a progress bar: :func:`train_rl`) or
:func:`make_train` (``train(key)`` runs all steps in one ``lax.scan``; ``jax.jit(jax.vmap(
train))(keys)`` trains one policy per seed at once).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rlhf_book.ch05_reward_models import reward_scores
from rlhf_book.ch06_policy_gradients import losses as L
from rlhf_book.ch06_policy_gradients.losses import (LOG_RATIO_CLAMP, aggregate_loss,
                                                    grpo_advantages, ppo_objective)
from rlhf_book.lm.checks import (as_float_array, as_groups, check_choice, check_positive_ints,
                                 check_range)
from rlhf_book.lm.kl import KL_ESTIMATORS, kl_estimate, kl_k3
from rlhf_book.lm import gpt, tokenizer, train
from rlhf_book.lm.ops import log_probs_from_logits, masked_mean, masked_sum
from rlhf_book.lm.rollout import (PolicyState, PromptSet, Reward, adam, encode_prompts,
                                  init_policy_state, sample_groups, text_reward, token_log_probs)

__all__ = [
    "ALGORITHMS", "Algorithm", "RLConfig", "PromptSet", "encode_prompts", "Reward",
    "reward_model_reward", "text_reward", "token_log_probs", "RLState", "init_rl_state",
    "Rollout", "rollout", "grpo_step", "make_rl_step", "make_train", "train_rl",
]


# ----------------------------------------------------------------------------------------------
# The algorithms as configuration (book §6.3.1, Table 2)


class Algorithm(NamedTuple):
    """What distinguishes one policy-gradient algorithm from another (book §6.3.1, Table 2):

    * ``advantage``: ``"batch_mean"`` (REINFORCE), ``"rloo"``, ``"grpo"``, ``"dr_grpo"`` or
      ``"gae"`` (PPO's learned value function);
    * ``loss``: ``"pg"`` (no ratio: ``-A log pi``), ``"ppo"`` (token ratio, clipped objective),
      ``"gspo"`` (sequence ratio, clipped objective) or ``"cispo"`` (token ratio, clipped weight);
    * ``kl``: ``"reward"`` (folded into the reward before the advantage) or ``"loss"``;
    * ``aggregation``: one of :data:`~.losses.AGGREGATIONS`;
    * ``clip``: default ``(clip_low, clip_high)``; ``dynamic_sampling``: DAPO's group filter.
    """

    advantage: str
    loss: str
    kl: str
    aggregation: str
    clip: tuple[float, float] = (0.2, 0.2)
    dynamic_sampling: bool = False


ALGORITHMS: dict[str, Algorithm] = {
    # Williams 1992: a batch-mean baseline, KL summed into the sequence reward (Figure 17).
    "reinforce": Algorithm("batch_mean", "pg", "reward", "per_sequence"),
    # Ahmadian et al. 2024: leave-one-out baseline, KL in the reward (Figure 18).
    "rloo": Algorithm("rloo", "pg", "reward", "per_sequence"),
    # Schulman et al. 2017 as in the book's PPO code: per-token KL in the rewards, GAE on a value head.
    "ppo": Algorithm("gae", "ppo", "reward", "per_sequence"),
    # DeepSeekMath: group-normalised advantages, token ratio, KL in the loss (Figure 22).
    "grpo": Algorithm("grpo", "ppo", "loss", "per_sequence"),
    # Liu et al. 2025: no std, fixed-length normaliser.
    "dr_grpo": Algorithm("dr_grpo", "ppo", "loss", "fixed_length"),
    # Yu et al. 2025: clip-higher, token-level loss, dynamic sampling.
    "dapo": Algorithm("grpo", "ppo", "loss", "per_token", (0.2, 0.28), True),
    # Zheng et al. 2025: the sequence-level, length-normalised ratio with a tiny clip range.
    "gspo": Algorithm("grpo", "gspo", "loss", "per_sequence", (3e-4, 4e-4)),
    # MiniMax-M1: clipped, stop-gradient IS weights; clip = (unused, absolute cap on rho).
    "cispo": Algorithm("grpo", "cispo", "loss", "per_token", (0.0, 5.0)),
}


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """One RL run. ``steps`` RL steps of ``prompts_per_step`` prompts x ``group_size``
    completions; each batch is used for ``epochs`` passes in ``minibatches`` optimizer steps.

    ``beta`` weighs the KL to the reference model (in the reward or in the loss, by
    algorithm), estimated per token with ``kl_estimator`` (None: k1 when the KL is a reward,
    as InstructGPT; k3 when it is a loss term, as GRPO). ``clip_low``/``clip_high`` None take
    the algorithm's defaults (``ALGORITHMS[...].clip``). ``tis_cap`` (None: off) multiplies each
    token's loss by the truncated importance weight between the learner's and the sampler's
    log-probabilities (§6.2.4). ``truncation_penalty`` replaces the score of a completion that
    did not stop within ``max_new_tokens`` (book §6.2: score only what ends in EOS); None keeps
    the score. PPO's critic is a linear value head on the policy's last hidden state, trained
    with ``vf_coef`` times the (clipped, ``value_clip``) value loss; GAE uses ``gamma``, ``lam``.
    """

    algorithm: str = "grpo"
    steps: int = 60
    prompts_per_step: int = 16
    group_size: int = 8
    max_new_tokens: int = 32
    temperature: float = 1.0
    learning_rate: float = 2e-5
    max_grad_norm: float = 1.0
    epochs: int = 1
    minibatches: int = 1
    beta: float = 0.02
    kl_estimator: str | None = None
    clip_low: float | None = None
    clip_high: float | None = None
    tis_cap: float | None = None
    truncation_penalty: float | None = None
    gamma: float = 1.0
    lam: float = 0.95
    vf_coef: float = 0.1
    value_clip: float | None = 0.2
    whiten_advantages: bool = True
    log_every: int = 10

    def __post_init__(self):
        check_choice(self.algorithm, "RLConfig.algorithm", sorted(ALGORITHMS))
        check_positive_ints(self, "steps", "prompts_per_step", "group_size", "max_new_tokens",
                            "epochs", "minibatches", "log_every")
        if self.group_size < 2 and self.algo.advantage in ("rloo", "grpo", "dr_grpo"):
            raise ValueError(f"RLConfig.group_size must be >= 2 for {self.algorithm}'s group "
                             f"baseline, got {self.group_size}")
        if (self.prompts_per_step * self.group_size) % self.minibatches:
            raise ValueError(f"RLConfig.minibatches={self.minibatches} must divide the "
                             f"{self.prompts_per_step * self.group_size} sequences of a step")
        check_choice(self.kl_estimator, "RLConfig.kl_estimator", (None, *KL_ESTIMATORS))
        # Swept values (beta, learning_rate inside make_train's train) are traced: not checked.
        # None means "the algorithm's default" (clips) or "off" (tis_cap, value_clip).
        for name in ("learning_rate", "beta", "max_grad_norm", "vf_coef", "clip_low",
                     "clip_high", "tis_cap", "value_clip"):
            check_range(getattr(self, name), f"RLConfig.{name}", 0)
        check_range(self.temperature, "RLConfig.temperature (RL samples)", 0, strict=True)
        check_range(self.gamma, "RLConfig.gamma", 0, 1)
        check_range(self.lam, "RLConfig.lam", 0, 1)

    @property
    def algo(self) -> Algorithm:
        return ALGORITHMS[self.algorithm]

    @property
    def clip(self) -> tuple[float, float]:
        low, high = self.algo.clip
        return (low if self.clip_low is None else self.clip_low,
                high if self.clip_high is None else self.clip_high)

    @property
    def estimator(self) -> str:
        if self.kl_estimator is not None:
            return self.kl_estimator
        return "k1" if self.algo.kl == "reward" else "k3"


# ----------------------------------------------------------------------------------------------
# Prompts and rewards


def reward_model_reward(rm_params, model_config: gpt.GPTConfig, pooling: str = "last") -> Reward:
    """Score completions with a chapter-5 reward model, reading prompt and completion in the
    chat template exactly as it was trained (``<|bos|>...<|assistant|>answer<|end|>``)."""

    def fn(params, tokens, mask, prompt_ids):
        del prompt_ids
        real = (tokens != tokenizer.PAD).astype(jnp.int32)
        return reward_scores(params, tokens, real, model_config, pooling)

    return Reward(fn, rm_params)


# ----------------------------------------------------------------------------------------------
# Log-probabilities of sampled tokens, and the rollout


# The state of a step is the policy state shared with chapter 8's loop.
RLState = PolicyState


def _optimizer(config: RLConfig) -> optax.GradientTransformation:
    return adam(config.learning_rate, config.max_grad_norm)


def init_rl_state(config: RLConfig, model_config: gpt.GPTConfig, lm_params, reward: Reward,
                  ref_params=None) -> RLState:
    """The state at step 0: the policy starts from ``lm_params`` (the SFT model), the reference
    is ``ref_params`` (default: a frozen copy of ``lm_params``); PPO gets a zero value head."""
    params = {"lm": lm_params}
    if config.algo.advantage == "gae":
        params["value"] = {"w": jnp.zeros((model_config.d_model,), jnp.float32),
                           "b": jnp.zeros((), jnp.float32)}
    return init_policy_state(params, _optimizer(config),
                             lm_params if ref_params is None else ref_params, reward.params)


class Rollout(NamedTuple):
    """One batch of experience, ``N = B * G`` rows in prompt-major order: ``tokens``,
    ``mask`` (1 on completion tokens), ``sampler_logp``, ``old_logp``, ``ref_logp``,
    ``old_values`` (PPO; zeros otherwise) all ``[N, T]``; ``scores`` (the reward) and
    ``rewards`` (after the KL when the KL is a reward) ``[N]``; ``prompt_ids [N]``,
    ``stopped [N]`` (ended with ``<|end|>``)."""

    tokens: jax.Array
    mask: jax.Array
    sampler_logp: jax.Array
    old_logp: jax.Array
    ref_logp: jax.Array
    old_values: jax.Array
    scores: jax.Array
    prompt_ids: jax.Array
    stopped: jax.Array


def _values(params, hidden):
    return hidden @ params["value"]["w"] + params["value"]["b"]


def rollout(state: RLState, key, config: RLConfig, model_config: gpt.GPTConfig,
            prompts: PromptSet, reward: Reward) -> Rollout:
    """Steps 1-3 of the loop: sample, score, and log-probs under ``pi_old`` and ``pi_ref``."""
    gen, prompt_ids = sample_groups(state.params["lm"], prompts, key, config.prompts_per_step,
                                    config.group_size, config.temperature, model_config,
                                    max_new_tokens=config.max_new_tokens)
    tokens, mask = gen.tokens, gen.mask
    lm = jax.lax.stop_gradient(state.params["lm"])
    if config.algo.advantage == "gae":
        old_logp, hidden = token_log_probs(lm, tokens, model_config, config.temperature,
                                              return_hidden=True)
        old_values = jnp.where(mask > 0, _values(state.params, hidden), 0.0)
    elif config.epochs * config.minibatches == 1 and config.tis_cap is None:
        # The batch serves one gradient step from the parameters that sampled it, so pi_old
        # is the sampler: its log-probs came with the tokens (TRL skips this forward pass
        # too). They equal a recomputation up to float round-off.
        old_logp = gen.logprobs
        old_values = jnp.zeros_like(old_logp)
    else:
        old_logp = token_log_probs(lm, tokens, model_config, config.temperature)
        old_values = jnp.zeros_like(old_logp)
    ref_logp = token_log_probs(state.ref_params, tokens, model_config, config.temperature)
    scores = reward.fn(state.reward_params, tokens, mask, prompt_ids)
    stopped = gen.stopped
    if config.truncation_penalty is not None:
        scores = jnp.where(stopped, scores, config.truncation_penalty)
    return Rollout(tokens, mask, gen.logprobs, jnp.where(mask > 0, old_logp, 0.0),
                   jnp.where(mask > 0, ref_logp, 0.0), old_values, scores, prompt_ids, stopped)


# ----------------------------------------------------------------------------------------------
# Step 4: advantages, and step 5: the update


def _masked_whiten(x, mask, eps=1e-8):
    """``(x - mean) / std`` over the masked-in entries (the book's PPO code whitens padding
    too: see the guide's errata)."""
    mean = masked_mean(x, mask)
    var = masked_mean(jnp.square(x - mean), mask)
    return jnp.where(mask > 0, (x - mean) * jax.lax.rsqrt(var + eps), 0.0)


def _advantages(config: RLConfig, batch: Rollout):
    """``(advantages [N] or [N, T], returns [N, T], keep [N])`` for the algorithm."""
    algo, B, G = config.algo, config.prompts_per_step, config.group_size
    mask = batch.mask
    zeros = jnp.zeros_like(mask)
    keep = jnp.ones(mask.shape[0], bool)
    if algo.advantage == "gae":
        rewards = L.kl_penalized_token_rewards(batch.scores, batch.old_logp, batch.ref_logp, mask,
                                               config.beta, config.estimator)
        adv, returns = L.compute_gae(rewards, batch.old_values, mask, config.gamma, config.lam)
        if config.whiten_advantages:
            adv = _masked_whiten(adv, mask)
        return adv, returns, keep
    if algo.kl == "reward":
        rewards = L.kl_penalized_sequence_rewards(batch.scores, batch.old_logp, batch.ref_logp,
                                                  mask, config.beta, config.estimator)
    else:
        rewards = batch.scores
    if algo.advantage == "batch_mean":
        adv = L.reinforce_advantages(rewards, "mean")
    elif algo.advantage == "rloo":
        adv = L.rloo_advantages(rewards.reshape(B, G)).reshape(-1)
    else:
        grouped = rewards.reshape(B, G)
        adv = L.grpo_advantages(grouped, scale=algo.advantage == "grpo").reshape(-1)
        if algo.dynamic_sampling:
            keep = jnp.repeat(L.dynamic_sampling_mask(grouped), G)
    return adv, zeros, keep


def _loss(params, config: RLConfig, model_config: gpt.GPTConfig, mb: dict):
    """The minibatch loss: the algorithm's policy loss (+ KL term, + value loss)."""
    algo = config.algo
    clip_low, clip_high = config.clip
    mask = mb["mask"] * mb["keep"][:, None]
    need_values = algo.advantage == "gae"
    out = token_log_probs(params["lm"], mb["tokens"], model_config, config.temperature,
                             return_hidden=need_values)
    logp, hidden = out if need_values else (out, None)
    logp = jnp.where(mask > 0, logp, 0.0)
    tis = None
    if config.tis_cap is not None:
        tis = L.tis_weights(mb["old_logp"], mb["sampler_logp"], config.tis_cap)
    agg = algo.aggregation
    T = mask.shape[1]
    if algo.loss == "pg":
        policy = L.policy_gradient_loss(logp, mb["adv"], mask, agg, T, tis)
    elif algo.loss == "ppo":
        policy = L.ppo_clip_loss(logp, mb["old_logp"], mb["adv"], mask, clip_low, clip_high,
                                 agg, T, tis)
    elif algo.loss == "gspo":
        policy = L.gspo_loss(logp, mb["old_logp"], mb["adv"], mask, clip_low, clip_high)
    else:
        policy = L.cispo_loss(logp, mb["old_logp"], mb["adv"], mask, clip_high, agg, T)
    kl = kl_estimate(logp, mb["ref_logp"], config.estimator)
    loss = policy
    if algo.kl == "loss":
        loss = loss + config.beta * L.aggregate_loss(kl, mask, agg, T)
    metrics = _policy_metrics(policy, logp, mb, mask, config)
    if need_values:
        values = jnp.where(mask > 0, _values(params, hidden), 0.0)
        vf = L.value_loss(values, mb["old_values"], mb["returns"], mask, config.value_clip, agg, T)
        loss = loss + config.vf_coef * vf
        metrics["value_loss"] = vf
    return loss, metrics


def _policy_metrics(policy, logp, mb: dict, mask, config: RLConfig) -> dict:
    """What a minibatch step logs about the policy: its loss without the KL and value terms,
    the fraction of tokens whose clip binds, and how far it moved from ``pi_old``."""
    clip_low, clip_high = config.clip
    return {"policy_loss": policy,
            "clip_fraction": L.clip_fraction(logp, mb["old_logp"], mb["adv"], mask,
                                             clip_low, clip_high),
            "approx_kl": L.approx_kl(logp, mb["old_logp"], mask)}


# [guide:grpo-step]
def grpo_step(params, tokens, mask, rewards, old_logp, ref_logp, model_config, beta=0.0,
              clip_low=0.2, clip_high=0.2, aggregation="per_sequence", scale=True,
              temperature=1.0):
    """The loss and gradient of one GRPO update on a fixed rollout (book §6.1.6, eqs. 55, 56,
    57; PPO's clipped surrogate, eq. 52; the aggregations of §6.2.2, eqs. 67, 68, 69).

    The rollout: ``B`` prompts with ``G`` completions each, ``N = B * G`` rows in prompt-major
    order (row ``b * G + g`` is completion ``g`` of prompt ``b``). ``tokens [N, T]`` (prompt,
    completion, padding), ``mask [N, T]`` (1 on completion tokens; position 0 is never one),
    ``rewards [B, G]`` (one per completion), ``old_logp`` and ``ref_logp [N, T]``: the
    log-probs of the sampled tokens under the policy that sampled them and under the reference
    model (0 off the mask). ``params`` are the policy's (the mini GPT's), ``model_config`` its
    configuration.

    Computed, in order:

    1. ``A`` [B, G], the group advantage of eq. 57 (Bessel-corrected std, ``eps = 1e-4``;
       ``scale=False``: Dr. GRPO's ``r - mean``, eq. 58), one per completion, shared by its
       tokens;
    2. ``logp [N, T]``: ``log pi_theta(tokens[:, t] | tokens[:, :t])`` under
       ``softmax(logits / temperature)`` of ``gpt.forward``, 0 where ``mask`` is 0;
    3. per completion token, ``-min(rho A, clip(rho, 1 - clip_low, 1 + clip_high) A) + beta *
       k3`` with ``rho = exp(logp - old_logp)`` (log-ratio clamped to +-20) and ``k3 =
       exp(ref_logp - logp) - (ref_logp - logp) - 1``, the KL estimate of eq. 56;
    4. ``loss``: the policy term and the KL term each reduced by ``aggregation``
       (``"per_sequence"``, eq. 67, rows without a completion token left out;
       ``"per_token"``, eq. 68; ``"fixed_length"``, eq. 69, with ``max_length = T``) and added.

    Returns ``(loss, grads, logp)``: the scalar loss, its gradient with respect to ``params``
    (a pytree shaped like ``params``; the advantages, ``old_logp`` and ``ref_logp`` are
    constants) and the ``logp [N, T]`` of step 2. A group whose rewards all tie has ``A = 0``
    and adds nothing to the policy's gradient. At the old policy (``rho = 1``) the gradient is
    REINFORCE's with advantage ``A``, plus ``beta`` times that of the KL.

    How: ``grpo_advantages`` (6.3), broadcast over each row's tokens; inside a ``loss_fn(params)``
    the logits of ``gpt.forward``, ``log_probs_from_logits`` of ``logits[:, :-1] / temperature``
    and ``tokens[:, 1:]`` padded with one 0 on the left; ``ppo_objective`` (6.2) on the clamped
    ratio; ``kl_k3``; ``aggregate_loss`` (6.6) for each term; ``jax.value_and_grad(loss_fn,
    has_aux=True)`` returns the loss, the log-probs as the auxiliary output, and the gradient.
    """
    rewards = as_groups(rewards)
    tokens = jnp.asarray(tokens)
    if rewards.size != tokens.shape[0]:
        raise ValueError(f"rewards must have shape [B, G] with B * G = N = {tokens.shape[0]} "
                         f"rows of tokens, got {rewards.shape}")
    mask = as_float_array(mask, "mask", "[N, T]")
    # BEGIN SOLUTION
    adv = jnp.broadcast_to(grpo_advantages(rewards, scale).reshape(-1, 1), mask.shape)

    def loss_fn(params):
        logits = gpt.forward(params, tokens, model_config)
        logp = log_probs_from_logits(logits[:, :-1] / temperature, tokens[:, 1:])
        logp = jnp.where(mask > 0, jnp.pad(logp, ((0, 0), (1, 0))), 0.0)
        ratio = jnp.exp(jnp.clip(logp - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
        policy = aggregate_loss(-ppo_objective(ratio, adv, clip_low, clip_high), mask,
                                aggregation)
        kl = aggregate_loss(kl_k3(logp, ref_logp), mask, aggregation)
        return policy + beta * kl, logp

    (loss, logp), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, grads, logp
    # END SOLUTION
# [/guide]


def _runs_grpo_step(config: RLConfig) -> bool:
    """Whether a minibatch step is exactly :func:`grpo_step`: group advantages (GRPO or
    Dr. GRPO), PPO's token ratio and the k3 KL in the loss, no dynamic sampling or truncated
    importance sampling, and the whole batch in one minibatch (so every group is whole when
    its advantages are computed). Every other configuration takes :func:`_loss`."""
    algo = config.algo
    return (algo.advantage in ("grpo", "dr_grpo") and algo.loss == "ppo" and algo.kl == "loss"
            and not algo.dynamic_sampling and config.estimator == "k3"
            and config.tis_cap is None and config.minibatches == 1)


def _loss_and_grads(params, config: RLConfig, model_config: gpt.GPTConfig, mb: dict):
    """``(loss, grads, metrics)`` of one minibatch: :func:`grpo_step` where it applies
    (:func:`_runs_grpo_step`), else the gradient of :func:`_loss`."""
    if not _runs_grpo_step(config):
        (loss, metrics), grads = jax.value_and_grad(_loss, has_aux=True)(
            params, config, model_config, mb)
        return loss, grads, metrics
    clip_low, clip_high = config.clip
    rewards = mb["rewards"].reshape(config.prompts_per_step, config.group_size)
    loss, grads, logp = grpo_step(params["lm"], mb["tokens"], mb["mask"], rewards,
                                  mb["old_logp"], mb["ref_logp"], model_config, config.beta,
                                  clip_low, clip_high, config.algo.aggregation,
                                  config.algo.advantage == "grpo", config.temperature)
    policy = L.ppo_clip_loss(logp, mb["old_logp"], mb["adv"], mb["mask"], clip_low, clip_high,
                             config.algo.aggregation, mb["mask"].shape[1])
    return loss, {"lm": grads}, _policy_metrics(policy, logp, mb, mb["mask"], config)


def _update(state: RLState, key, config: RLConfig, model_config: gpt.GPTConfig, batch: Rollout):
    """``epochs`` shuffled passes over the batch in ``minibatches`` optax steps (lax.scan)."""
    adv, returns, keep = _advantages(config, batch)
    data = {"tokens": batch.tokens, "mask": batch.mask, "old_logp": batch.old_logp,
            "sampler_logp": batch.sampler_logp, "ref_logp": batch.ref_logp,
            "old_values": batch.old_values, "adv": adv, "returns": returns, "keep": keep,
            "rewards": batch.scores}
    N, M = batch.tokens.shape[0], config.minibatches
    optimizer = _optimizer(config)

    def sgd_step(carry, idx):
        params, opt_state = carry
        # One minibatch is the whole batch: no gather (on a mesh, a gather of rows would move
        # every row to every device).
        mb = data if M == 1 else jax.tree.map(lambda x: x[idx], data)
        loss, grads, metrics = _loss_and_grads(params, config, model_config, mb)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **metrics}
        return (optax.apply_updates(params, updates), opt_state), metrics

    def epoch(carry, key):
        order = jax.random.permutation(key, N) if M > 1 else jnp.arange(N)
        return jax.lax.scan(sgd_step, carry, order.reshape(M, N // M))

    (params, opt_state), metrics = jax.lax.scan(epoch, (state.params, state.opt_state),
                                                jax.random.split(key, config.epochs))
    metrics = jax.tree.map(jnp.mean, metrics)
    return state._replace(params=params, opt_state=opt_state, step=state.step + 1), metrics


def make_rl_step(config: RLConfig, model_config: gpt.GPTConfig, prompts: PromptSet,
                 reward: Reward) -> Callable:
    """``step(state, key) -> (state, metrics)``: one whole RL step (rollout, score, reference,
    advantages, update), to be jitted. Metrics are scalars: the mean reward (``score``), the
    KL to the reference (``kl``, the sum over a completion's tokens of ``kl_estimator``,
    averaged), completion ``length`` in tokens, ``stopped`` fraction, the fraction of groups
    ``kept`` by dynamic sampling, and the update's ``loss``, ``policy_loss``,
    ``clip_fraction``, ``approx_kl``, ``grad_norm`` (and ``value_loss`` for PPO)."""

    def step(state: RLState, key):
        k_roll, k_update = jax.random.split(key)
        batch = rollout(state, k_roll, config, model_config, prompts, reward)
        state, metrics = _update(state, k_update, config, model_config, batch)
        kl = kl_estimate(batch.old_logp, batch.ref_logp, config.estimator)
        metrics.update(
            score=jnp.mean(batch.scores),
            kl=jnp.mean(masked_sum(kl, batch.mask, axis=1)),
            length=jnp.mean(jnp.sum(batch.mask, axis=1)),
            stopped=jnp.mean(batch.stopped.astype(jnp.float32)),
        )
        if config.algo.dynamic_sampling:
            grouped = batch.scores.reshape(config.prompts_per_step, config.group_size)
            metrics["kept"] = jnp.mean(L.dynamic_sampling_mask(grouped).astype(jnp.float32))
        return state, metrics

    return step


def make_train(config: RLConfig, model_config: gpt.GPTConfig, lm_params, prompts: PromptSet,
               reward: Reward, ref_params=None) -> Callable:
    """``train(key, beta=None, learning_rate=None) -> (final_state, metrics)``: all
    ``config.steps`` RL steps in one ``lax.scan`` (purejaxrl's pattern), metrics with a leading
    axis of ``steps``. Pure, so ``jax.jit(jax.vmap(train))(jax.random.split(key, n_seeds))``
    trains ``n_seeds`` policies from the same start at once. ``beta`` and ``learning_rate``,
    when given, replace the config's and may be traced: ``jax.vmap(train)(keys, betas)``
    sweeps the KL coefficient in one compilation instead of one per value."""

    def train(key, beta=None, learning_rate=None):
        swept = {k: v for k, v in (("beta", beta), ("learning_rate", learning_rate))
                 if v is not None}
        run_config = dataclasses.replace(config, **swept) if swept else config
        step = make_rl_step(run_config, model_config, prompts, reward)
        state = init_rl_state(run_config, model_config, lm_params, reward, ref_params)
        return jax.lax.scan(step, state, jax.random.split(key, config.steps))

    return train


def train_rl(config: RLConfig, model_config: gpt.GPTConfig, lm_params, prompts: PromptSet,
             reward: Reward, *, ref_params=None, seed: int = 0, progress: bool = True,
             evaluate: Callable[[RLState], dict] | None = None):
    """Run ``config.steps`` RL steps from ``lm_params``, ``log_every`` steps per compiled chunk,
    through the one training driver (:func:`rlhf_book.lm.train.run_in_chunks`) with a progress
    bar; ``evaluate(state)`` (optional, e.g. a held-out evaluation) runs after each chunk.
    Returns ``(lm_params, history)``: the trained policy and the per-step metrics."""
    step = make_rl_step(config, model_config, prompts, reward)
    state = init_rl_state(config, model_config, lm_params, reward, ref_params)
    state, history = train.run_in_chunks(
        step, state, steps=config.steps, chunk_size=config.log_every,
        key=jax.random.PRNGKey(seed), desc=f"RL ({config.algorithm})", progress=progress,
        evaluate=evaluate,
        postfix=lambda h: {"score": f"{h['score'][-1]:+.3f}", "kl": f"{h['kl'][-1]:.3f}"})
    return state.params["lm"], history
