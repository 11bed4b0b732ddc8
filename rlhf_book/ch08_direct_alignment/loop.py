"""Chapter 8, the loop: DPO on the mini GPT, offline and on-policy (book §8.1, §8.3-8.5).

One DPO step, all inside one compiled function:

1. **pairs** -- offline: ``batch_size`` pairs drawn from a fixed preference dataset (the
   simulated annotators' pairs, :func:`rlhf_book.data.preference_pairs`), whose reference
   log-probabilities were computed once before training (book §8.3: cache the reference
   log-probs); on-policy (online DPO, book §8.2 and §8.5): ``batch_size`` prompts, ``G``
   completions of each sampled from the *current* policy with the KV cache, scored by a reward
   (the gold reward here, as a perfect annotator), best vs worst of each group as chosen vs
   rejected (a group whose scores all tie carries no preference and gets weight 0), reference
   log-probs from the frozen SFT model;
2. **log-probs** -- the policy's sequence log-probabilities ``log pi(y|x) = sum_t log pi(y_t |
   x, y_<t)`` over the completion tokens only (book §8.3), chosen and rejected in one forward
   pass (TRL's ``concatenated_forward``);
3. **loss** -- the mean of the per-pair losses of the chosen member of the DPO family
   (:data:`LOSSES`, a table ``{name: fn}``), plus ``nll_coef`` times
   the negative log-likelihood of the chosen completions (RPO, Pang et al. 2024; TRL's
   ``rpo_alpha``), the usual remedy for *preference displacement* (book §8.2, Figure 27: both
   log-probs fall, the rejected one faster);
4. **update** -- one optax step (Adam, clipped by global norm). For DPO and cDPO, steps 2 and
   3 and the gradient are :func:`dpo_step`, the chapter's loop-level exercise.

Build with :func:`make_dpo_step` (one step; :func:`train_dpo` drives it in chunks with a
progress bar) or :func:`make_dpo_train` (``train(key)`` runs all steps in one ``lax.scan``;
``jax.jit(jax.vmap(train))(keys)`` trains one policy per seed at once). Metrics carry TRL's
``DPOTrainer`` names: ``rewards/chosen``, ``rewards/rejected``, ``rewards/accuracies``,
``rewards/margins``, ``logps/chosen``, ``logps/rejected``, ``nll``.

Shapes: ``N`` pairs, ``T`` tokens (prompt + completion, right-padded), ``B`` prompts per
on-policy step, ``G`` completions per prompt, ``Q`` prompts in the prompt set.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlhf_book import data
from rlhf_book.ch05_reward_models import preference_accuracy
from rlhf_book.ch08_direct_alignment import losses as L
from rlhf_book.ch08_direct_alignment.losses import dpo_loss
from rlhf_book.lm import gpt, sharding, tokenizer, train
from rlhf_book.lm.checks import check_choice, check_positive_ints, check_range
from rlhf_book.lm.ops import log_probs_from_logits, masked_mean, masked_sum
from rlhf_book.lm.rollout import (PolicyState, PromptSet, Reward, adam, init_policy_state,
                                  sample_groups, token_log_probs)

__all__ = [
    "LOSSES", "REFERENCE_FREE", "DPOConfig", "PreferenceBatch", "RefLogProbs",
    "encode_preference_pairs", "completion_log_probs", "pair_log_probs", "preference_losses",
    "dpo_batch_loss", "dpo_step", "DPOState", "init_dpo_state", "sample_offline_batch", "on_policy_pairs",
    "make_dpo_step", "make_dpo_train", "train_dpo", "implicit_reward_accuracy",
]

# The losses the loop trains with, ``name: fn(pc, pr, rc, rr, config) -> [N]`` per-pair losses
# (formulas in :mod:`.losses`): DPO (eq. 79), cDPO (DPO with label smoothing), robust DPO, IPO,
# SLiC's hinge, and the reference-free SimPO and ORPO (``lambda`` = ``config.beta`` times the
# odds-ratio term). For SimPO and ORPO ``pc, pr`` are per-token averages and ``rc, rr`` unused.
LOSSES: dict[str, Callable] = {
    "dpo": lambda pc, pr, rc, rr, c: L.dpo_loss(pc, pr, rc, rr, c.beta),
    "cdpo": lambda pc, pr, rc, rr, c: L.dpo_loss(pc, pr, rc, rr, c.beta, c.label_smoothing),
    "robust": lambda pc, pr, rc, rr, c: L.robust_dpo_loss(pc, pr, rc, rr, c.beta,
                                                          c.label_smoothing),
    "ipo": lambda pc, pr, rc, rr, c: L.ipo_loss(pc, pr, rc, rr, c.beta),
    "hinge": lambda pc, pr, rc, rr, c: L.hinge_loss(pc, pr, rc, rr, c.beta),
    "simpo": lambda pc, pr, rc, rr, c: L.simpo_loss(pc, pr, c.beta, c.simpo_gamma),
    "orpo": lambda pc, pr, rc, rr, c: c.beta * L.orpo_odds_ratio_loss(pc, pr),
}
# These two read the policy's per-token *average* log-probs and no reference model.
REFERENCE_FREE = ("simpo", "orpo")


@dataclasses.dataclass(frozen=True)
class DPOConfig:
    """One DPO run: ``steps`` optax steps of ``batch_size`` pairs (offline) or ``batch_size``
    prompts x ``completions_per_prompt`` samples (``on_policy``).

    * ``loss``: a key of :data:`LOSSES`; ``beta`` is DPO's KL coefficient (eqs. 78, 79; TRL's
      default 0.1), SimPO's reward scale and ORPO's ``lambda``; ``label_smoothing`` is the
      flip rate ``eps`` of ``"cdpo"`` and ``"robust"`` (it must be 0 for the other losses,
      which ignore it); ``simpo_gamma`` is SimPO's target margin.
    * ``nll_coef``: weight of the chosen completions' NLL, averaged over their tokens in the
      batch (TRL's ``rpo_alpha``: ``cross_entropy`` over every chosen token). RPO uses 1;
      ORPO is ``loss="orpo"`` with ``nll_coef=1`` (the paper's ``L_SFT + lambda L_OR``).
    * ``learning_rate`` (constant, Adam) and ``max_grad_norm`` (global-norm clipping).
    * on-policy only: ``completions_per_prompt`` (``G >= 2``: best vs worst of each group),
      ``max_new_tokens`` and ``temperature`` of the sampler.
    * ``log_every``: steps per compiled chunk in :func:`train_dpo`.

    The DPO paper's own settings (beta 0.1, lr 1e-6, batch 64) are for 7B models; the small
    GPT of the tests learns its preferences with beta 1, lr 3e-4 and 60 steps of 16 pairs
    (beta 0.5 or lr 1e-3 drift further from the reference and displace more, measured in
    ``tests/test_ch08_dpo_loop.py``).
    """

    loss: str = "dpo"
    beta: float = 0.1
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5
    nll_coef: float = 0.0
    steps: int = 100
    batch_size: int = 16
    learning_rate: float = 1e-4
    max_grad_norm: float = 1.0
    on_policy: bool = False
    completions_per_prompt: int = 4
    max_new_tokens: int = 48
    temperature: float = 1.0
    log_every: int = 10

    def __post_init__(self):
        check_choice(self.loss, "DPOConfig.loss", LOSSES)
        check_positive_ints(self, "steps", "batch_size", "completions_per_prompt",
                            "max_new_tokens", "log_every")
        if self.completions_per_prompt < 2:
            raise ValueError("DPOConfig.completions_per_prompt must be >= 2 (a pair is the best "
                             f"and the worst of a group), got {self.completions_per_prompt}")
        if not isinstance(self.on_policy, bool):
            raise ValueError(f"DPOConfig.on_policy must be a bool, got {self.on_policy!r}")
        # (a value swept inside make_dpo_train's train() is traced: check_range skips it)
        for name in ("beta", "learning_rate", "max_grad_norm", "temperature"):
            check_range(getattr(self, name), f"DPOConfig.{name}", 0, strict=True)
        check_range(self.nll_coef, "DPOConfig.nll_coef", 0)
        eps = float(self.label_smoothing)
        if self.loss in ("cdpo", "robust"):
            if not 0 <= eps < 0.5:
                raise ValueError(f"DPOConfig.label_smoothing must be in [0, 0.5) for "
                                 f"loss={self.loss!r}, got {self.label_smoothing!r}")
        elif eps != 0:
            raise ValueError(f"DPOConfig.label_smoothing must be 0 for loss={self.loss!r} (it "
                             f"is the flip rate of 'cdpo' and 'robust'), got "
                             f"{self.label_smoothing!r}")


# ----------------------------------------------------------------------------------------------
# Preference pairs as static-shape token batches


class PreferenceBatch(NamedTuple):
    """Preference pairs as tokens, all with leading axis ``N``: ``chosen`` and ``rejected``
    ``[N, T]`` (``<|bos|><|user|>prompt<|end|><|assistant|>completion<|end|>``, right-padded
    with ``<|pad|>``), their completion masks ``chosen_mask`` and ``rejected_mask`` ``[N, T]``
    (1 on the completion's tokens and its closing ``<|end|>``: the tokens whose log-probs
    count), and ``weight [N]`` (1 for a pair, 0 for a row that carries no preference)."""

    chosen: jax.Array
    chosen_mask: jax.Array
    rejected: jax.Array
    rejected_mask: jax.Array
    weight: jax.Array


class RefLogProbs(NamedTuple):
    """The frozen reference's sequence log-probs ``log pi_ref(y|x)`` of each pair's
    ``chosen`` and ``rejected`` completion, ``[N]`` each (sums over completion tokens)."""

    chosen: jax.Array
    rejected: jax.Array


def _render(prompt: str, completion: str) -> tuple[list[int], list[int]]:
    # The chat template's assistant mask is exactly the completion plus its <|end|>.
    return tokenizer.render_chat([{"role": "user", "content": prompt},
                                  {"role": "assistant", "content": completion}])


def encode_preference_pairs(pairs: Sequence[Any], length: int | None = None) -> PreferenceBatch:
    """Tokenise pairs (anything with ``prompt``, ``chosen`` and ``rejected`` texts, e.g.
    :class:`rlhf_book.data.PreferencePair`) into a :class:`PreferenceBatch` of width
    ``length`` (default: the longest sequence). The same token ids a chapter-5 reward model
    reads (``ch05.encode_conversation``), plus completion masks; every weight is 1."""
    pairs = list(pairs)
    if not pairs:
        raise ValueError("pairs must be a non-empty sequence of preference pairs, got an empty one")
    for k, p in enumerate(pairs):
        if not all(isinstance(getattr(p, f, None), str) for f in ("prompt", "chosen", "rejected")):
            raise ValueError(f"pairs[{k}] must have str attributes prompt, chosen and rejected, "
                             f"got {type(p).__name__}")
    chosen = [_render(p.prompt, p.chosen) for p in pairs]
    rejected = [_render(p.prompt, p.rejected) for p in pairs]
    longest = max(len(ids) for ids, _ in chosen + rejected)
    length = longest if length is None else length
    if not isinstance(length, int) or length < longest:
        raise ValueError(f"length must be an int >= the longest pair's {longest} tokens, "
                         f"got {length!r}")

    def pad(rows):
        tokens, _ = tokenizer.pad_batch([ids for ids, _ in rows], length)
        masks, _ = tokenizer.pad_batch([m for _, m in rows], length, pad_id=0)
        return jnp.asarray(tokens), jnp.asarray(masks, jnp.float32)

    c, c_mask = pad(chosen)
    r, r_mask = pad(rejected)
    return PreferenceBatch(c, c_mask, r, r_mask, jnp.ones(len(pairs), jnp.float32))


# ----------------------------------------------------------------------------------------------
# Sequence log-probabilities from the mini GPT (book §8.3)


def completion_log_probs(params, batch: PreferenceBatch, model_config: gpt.GPTConfig):
    """The policy's log-probs of both halves of every pair, in one forward pass over the
    ``[2N, T]`` concatenation (TRL's ``concatenated_forward``). Returns ``(chosen, rejected)``,
    each a dict of ``"sum"`` ``[N]`` (``log pi(y|x)``, eq. 79's quantity), ``"mean"`` ``[N]``
    (per-token average: SimPO, ORPO) and ``"tokens"`` ``[N, T]`` (per-token log-probs, 0 off
    the completion)."""
    n = batch.chosen.shape[0]
    tokens = jnp.concatenate([batch.chosen, batch.rejected])
    mask = jnp.concatenate([batch.chosen_mask, batch.rejected_mask])
    logp = jnp.where(mask > 0, token_log_probs(params, tokens, model_config), 0.0)
    total = L.sequence_log_probs(logp, mask)
    mean = L.sequence_log_probs(logp, mask, average=True)

    def half(s):
        return {"sum": total[s], "mean": mean[s], "tokens": logp[s]}

    return half(slice(0, n)), half(slice(n, 2 * n))


def _pair_sums(params, batch: PreferenceBatch, model_config: gpt.GPTConfig):
    chosen, rejected = completion_log_probs(params, batch, model_config)
    return chosen["sum"], rejected["sum"]


_jit_pair_sums = jax.jit(_pair_sums, static_argnums=(2,))


def pair_log_probs(params, batch: PreferenceBatch, model_config: gpt.GPTConfig,
                   chunk_size: int = 128) -> RefLogProbs:
    """Sequence log-probs ``(chosen [N], rejected [N])`` of every pair under ``params``,
    ``chunk_size`` pairs per jitted call (the last chunk is padded with copies of the first
    pair, so one compilation serves any ``N >= chunk_size``). Run once with the reference model
    before training, this is the reference-log-prob cache of book §8.3 (TRL's
    ``precompute_ref_log_probs``). Returns NumPy arrays in a :class:`RefLogProbs`."""
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    n = batch.chosen.shape[0]
    size = min(chunk_size, n)
    out_c, out_r = [], []
    for start in range(0, n, size):
        part = jax.tree.map(lambda x: x[start:start + size], batch)
        k = part.chosen.shape[0]
        if k < size:
            part = jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[:1], size - k, 0)]),
                                part)
        c, r = _jit_pair_sums(params, part, model_config)
        out_c.append(np.asarray(c)[:k])
        out_r.append(np.asarray(r)[:k])
    return RefLogProbs(np.concatenate(out_c), np.concatenate(out_r))


# ----------------------------------------------------------------------------------------------
# The loss of a batch (book eq. 79 and the family of §8.2), with TRL's metrics


def preference_losses(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                      config: DPOConfig) -> jax.Array:
    """Per-pair losses ``[N]`` of ``config.loss``. The first four arguments are sequence
    log-probs ``[N]`` (sums over completion tokens) for the reference-based losses (eq. 79 and
    family: ``h = (pc - pr) - (rc - rr)``) and per-token **averages** for the reference-free
    ones (SimPO, ORPO: the reference arguments are then ignored). IPO takes the sums as in its
    paper (TRL length-averages them first)."""
    return LOSSES[config.loss](policy_chosen, policy_rejected, ref_chosen, ref_rejected, config)


def dpo_batch_loss(params, ref_logps: RefLogProbs, batch: PreferenceBatch, config: DPOConfig,
                   model_config: gpt.GPTConfig):
    """``(loss, metrics)`` of a batch of pairs under the policy ``params``.

    ``loss = sum_i w_i l_i / sum_i w_i + nll_coef * NLL``, where ``l_i`` is the pair loss of
    ``config.loss`` (:func:`preference_losses`), ``w_i = batch.weight`` (0 for a tie) and
    ``NLL`` the mean negative log-likelihood per chosen completion token of the weighted pairs
    (TRL's ``rpo_alpha`` term). ``ref_logps`` are constants (their gradient is stopped).

    Metrics (weighted means over pairs, TRL's names): ``rewards/chosen`` and
    ``rewards/rejected`` are the implicit rewards ``beta log pi/pi_ref`` (eq. 80; for SimPO
    and ORPO ``beta`` times the average log-prob, TRL's ``CPOTrainer``), ``rewards/margins``
    their difference, ``rewards/accuracies`` the fraction with chosen > rejected (strict, as
    TRL: 0 at ``pi = pi_ref``, where every reward ties at 0, when the reference log-probs come
    from the same computation; a reference cached in other batch shapes differs from the
    policy's by float round-off, ~1e-6, which then decides those ties), ``logps/chosen`` and
    ``logps/rejected`` the policy's sequence log-probs, ``nll``, ``loss`` and
    ``loss/preference`` (the loss without the NLL term).
    """
    chosen, rejected = completion_log_probs(params, batch, model_config)
    ref_c = jax.lax.stop_gradient(jnp.asarray(ref_logps.chosen, jnp.float32))
    ref_r = jax.lax.stop_gradient(jnp.asarray(ref_logps.rejected, jnp.float32))
    w = batch.weight
    if config.loss in REFERENCE_FREE:
        losses = preference_losses(chosen["mean"], rejected["mean"], ref_c, ref_r, config)
        reward_c, reward_r = config.beta * chosen["mean"], config.beta * rejected["mean"]
    else:
        losses = preference_losses(chosen["sum"], rejected["sum"], ref_c, ref_r, config)
        reward_c = L.implicit_reward(chosen["sum"], ref_c, config.beta)
        reward_r = L.implicit_reward(rejected["sum"], ref_r, config.beta)
    preference = masked_mean(losses, w)
    # TRL: cross_entropy over every chosen completion token of the batch (a token mean).
    nll = masked_mean(-chosen["tokens"], batch.chosen_mask * w[:, None])
    loss = preference + config.nll_coef * nll
    return loss, _pair_metrics(loss, preference, nll, reward_c, reward_r, chosen["sum"],
                               rejected["sum"], w)


def _pair_metrics(loss, preference, nll, reward_c, reward_r, logp_c, logp_r, w) -> dict:
    """The scalars a DPO step logs (TRL's names; see :func:`dpo_batch_loss`): weighted means
    over pairs of the implicit rewards, their margin and accuracy, and the sequence log-probs."""

    def mean(x):
        return masked_mean(jax.lax.stop_gradient(x), w)

    reward_c, reward_r = jax.lax.stop_gradient(reward_c), jax.lax.stop_gradient(reward_r)
    return {
        "loss": loss, "loss/preference": preference, "nll": nll,
        "rewards/chosen": mean(reward_c), "rewards/rejected": mean(reward_r),
        "rewards/accuracies": mean((reward_c > reward_r).astype(jnp.float32)),
        "rewards/margins": mean(reward_c - reward_r),
        "logps/chosen": mean(logp_c), "logps/rejected": mean(logp_r),
    }


# [guide:dpo-step]
def dpo_step(params, batch: PreferenceBatch, ref_logps: RefLogProbs,
             model_config: gpt.GPTConfig, beta=0.1, label_smoothing=0.0, nll_coef=0.0):
    """The loss and gradient of one DPO update on a batch of pairs (book §8.1.1, eq. 79; the
    implementation of §8.3; Rafailov et al. 2023).

    ``batch``: a :class:`PreferenceBatch` of ``N`` pairs, read through its fields ``chosen``,
    ``rejected`` ``[N, T]`` (tokens: prompt, completion, padding; the two halves of a pair share
    the prompt), ``chosen_mask``, ``rejected_mask`` ``[N, T]`` (1 on the completion's tokens,
    its closing ``<|end|>`` included; 0 on the prompt and the padding) and ``weight [N]`` (1 for
    a pair, 0 for a row that carries no preference). ``ref_logps``: a :class:`RefLogProbs` of the
    reference model's sequence log-probs ``chosen``, ``rejected`` ``[N]``, fixed (precomputed).
    ``params`` are the policy's (the mini GPT's), ``model_config`` its configuration.

    Computed:

    1. the policy's sequence log-probs ``log pi(y|x) = sum_t log pi(y_t | x, y_<t)`` of each
       chosen and rejected completion ``[N]``, over the completion tokens only (mask 1), each
       token scored by ``gpt.forward``'s logits at the position before it;
    2. the DPO loss of each pair, eq. 79 (``label_smoothing > 0``: cDPO), and their mean over
       the pairs of weight 1;
    3. plus ``nll_coef`` times the negative log-likelihood of the chosen completions, averaged
       over their tokens (the chosen tokens of every pair of weight 1: RPO, Pang et al. 2024).

    Returns ``(loss, grads, (chosen_logps, rejected_logps))``: the scalar loss, its gradient
    with respect to ``params`` (a pytree shaped like ``params``; the reference log-probs are
    constants) and the policy's sequence log-probs of step 1. At ``pi = pi_ref`` the loss is
    ``log 2`` and, with ``nll_coef = 0``, the gradient is ``-beta / 2`` times that of the mean
    over pairs of ``log pi(y_c|x) - log pi(y_r|x)`` (eq. 81's weight is ``sigmoid(0) = 1/2``).

    How: one ``gpt.forward`` over the ``[2N, T]`` concatenation of chosen and rejected (TRL's
    ``concatenated_forward``); ``log_probs_from_logits(logits[:, :-1], tokens[:, 1:])`` padded
    with one 0 on the left, so that position ``t`` holds the log-prob of token ``t``; a
    ``masked_sum`` over ``T`` per row; ``dpo_loss`` (8.1); ``masked_mean`` with the weights;
    ``jax.value_and_grad(loss_fn, has_aux=True)``.
    """
    # BEGIN SOLUTION
    n = batch.chosen.shape[0]
    tokens = jnp.concatenate([batch.chosen, batch.rejected])
    mask = jnp.concatenate([batch.chosen_mask, batch.rejected_mask])

    def loss_fn(params):
        logits = gpt.forward(params, tokens, model_config)
        logp = jnp.pad(log_probs_from_logits(logits[:, :-1], tokens[:, 1:]), ((0, 0), (1, 0)))
        logp = jnp.where(mask > 0, logp, 0.0)
        sums = masked_sum(logp, mask, axis=1)
        chosen, rejected = sums[:n], sums[n:]
        losses = dpo_loss(chosen, rejected, ref_logps.chosen, ref_logps.rejected, beta,
                          label_smoothing)
        nll = masked_mean(-logp[:n], batch.chosen_mask * batch.weight[:, None])
        return masked_mean(losses, batch.weight) + nll_coef * nll, (chosen, rejected)

    (loss, logps), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return loss, grads, logps
    # END SOLUTION
# [/guide]


def _dpo_step_and_metrics(params, ref_logps: RefLogProbs, batch: PreferenceBatch,
                          config: DPOConfig, model_config: gpt.GPTConfig):
    """``(grads, metrics)`` of DPO or cDPO by :func:`dpo_step`, with :func:`dpo_batch_loss`'s
    metrics computed from the sequence log-probs it returns."""
    ref_c = jnp.asarray(ref_logps.chosen, jnp.float32)
    ref_r = jnp.asarray(ref_logps.rejected, jnp.float32)
    loss, grads, (pc, pr) = dpo_step(params, batch, RefLogProbs(ref_c, ref_r), model_config,
                                     config.beta, config.label_smoothing, config.nll_coef)
    w = batch.weight
    preference = masked_mean(preference_losses(pc, pr, ref_c, ref_r, config), w)
    # the chosen tokens' mean NLL, from the sequence sums (a row's log-probs add up to its sum)
    nll = -masked_sum(pc, w) / jnp.maximum(jnp.sum(batch.chosen_mask * w[:, None]), 1.0)
    metrics = _pair_metrics(loss, preference, nll, L.implicit_reward(pc, ref_c, config.beta),
                            L.implicit_reward(pr, ref_r, config.beta), pc, pr, w)
    return grads, metrics


# ----------------------------------------------------------------------------------------------
# The state, the two sources of pairs, one step


# The state of a step is the policy state shared with chapter 6's loop (offline, it holds no
# reference: the reference enters through the cached log-probs).
DPOState = PolicyState


def _optimizer(config: DPOConfig) -> optax.GradientTransformation:
    return adam(config.learning_rate, config.max_grad_norm)


def init_dpo_state(config: DPOConfig, sft_params, reward: Reward | None = None,
                   ref_params=None) -> DPOState:
    """Step 0: the policy starts at the SFT model and the reference is a frozen copy of it
    (``ref_params`` overrides), so every implicit reward starts at 0 and the DPO loss at
    ``log 2``. Offline, the state holds no reference: it enters through
    the cached log-probs."""
    ref = (sft_params if ref_params is None else ref_params) if config.on_policy else None
    return init_policy_state(sft_params, _optimizer(config), ref,
                             None if reward is None else reward.params)


def sample_offline_batch(key, pairs: PreferenceBatch, ref_logps: RefLogProbs,
                         batch_size: int) -> tuple[PreferenceBatch, RefLogProbs]:
    """One step's pairs: ``batch_size`` of the ``N`` pairs drawn uniformly at random, distinct
    within the step (unless ``batch_size > N``) and independent across steps, with their
    cached reference log-probs."""
    n = pairs.chosen.shape[0]
    idx = jax.random.choice(key, n, (batch_size,), replace=batch_size > n)

    def take(x):
        return jnp.asarray(x)[idx]

    return sharding.shard_batch((jax.tree.map(take, pairs), jax.tree.map(take, ref_logps)))


def on_policy_pairs(state: DPOState, key, config: DPOConfig, model_config: gpt.GPTConfig,
                    prompts: PromptSet, reward: Reward):
    """Online DPO's pairs (book §8.2 and §8.5; Guo et al. 2024; here labelled by a reward, the
    gold one in the tests): draw ``B = batch_size`` prompts, sample ``G`` completions of each
    from the current policy with the KV cache, score them, and pair the best (chosen) with
    the worst (rejected) of each group; a group whose best and worst scores tie gets weight 0.
    Returns ``(batch [B], ref_logps [B], info)``: the reference log-probs are the frozen
    model's and ``info`` holds the mean ``score`` of all ``B * G`` samples, the scores of the
    chosen and rejected, the fraction of groups that form a pair, and the mean completion
    length."""
    B, G = config.batch_size, config.completions_per_prompt
    gen, prompt_ids = sample_groups(jax.lax.stop_gradient(state.params), prompts, key, B, G,
                                    config.temperature, model_config,
                                    max_new_tokens=config.max_new_tokens)
    scores = reward.fn(state.reward_params, gen.tokens, gen.mask, prompt_ids).reshape(B, G)
    rows = jnp.arange(B) * G
    best = rows + jnp.argmax(scores, axis=1)
    worst = rows + jnp.argmin(scores, axis=1)
    weight = (jnp.max(scores, axis=1) > jnp.min(scores, axis=1)).astype(jnp.float32)
    batch = sharding.shard_batch(PreferenceBatch(gen.tokens[best], gen.mask[best],
                                                 gen.tokens[worst], gen.mask[worst], weight))
    ref = RefLogProbs(*_pair_sums(state.ref_params, batch, model_config))
    info = {"score": jnp.mean(scores), "score/chosen": jnp.max(scores, axis=1).mean(),
            "score/rejected": jnp.min(scores, axis=1).mean(), "pairs": jnp.mean(weight),
            "length": jnp.mean(jnp.sum(gen.mask, axis=1))}
    return batch, jax.tree.map(jax.lax.stop_gradient, ref), info


def _check_data(config: DPOConfig, model_config: gpt.GPTConfig, pairs, prompts, reward):
    """``ValueError`` unless the run has the data its mode needs, of a width the model takes."""
    if config.on_policy:
        if not isinstance(prompts, PromptSet) or not isinstance(reward, Reward):
            raise ValueError("on_policy=True needs prompts (a ch06 PromptSet, from "
                             "encode_prompts) and reward (a ch06 Reward, e.g. text_reward), "
                             f"got {type(prompts).__name__} and {type(reward).__name__}")
        width = prompts.tokens.shape[1] + config.max_new_tokens
        if width > model_config.max_seq_len:
            raise ValueError(f"prompts of {prompts.tokens.shape[1]} tokens + max_new_tokens="
                             f"{config.max_new_tokens} must fit max_seq_len="
                             f"{model_config.max_seq_len}, got {width}")
        return
    if not isinstance(pairs, PreferenceBatch):
        raise ValueError("offline DPO needs pairs (a PreferenceBatch, from "
                         f"encode_preference_pairs), got {type(pairs).__name__}")
    if pairs.chosen.shape[1] > model_config.max_seq_len:
        raise ValueError(f"pairs of {pairs.chosen.shape[1]} tokens must fit max_seq_len="
                         f"{model_config.max_seq_len}")


def make_dpo_step(config: DPOConfig, model_config: gpt.GPTConfig, pairs: PreferenceBatch | None
                  = None, ref_logps: RefLogProbs | None = None, *, prompts: PromptSet | None
                  = None, reward: Reward | None = None) -> Callable:
    """``step(state, key) -> (state, metrics)``: one whole DPO step, to be jitted.

    Offline (``config.on_policy`` False): ``pairs`` and their cached reference log-probs
    ``ref_logps`` (:func:`pair_log_probs` with the reference model). On-policy: ``prompts``
    and ``reward``. Metrics are the scalars of :func:`dpo_batch_loss` plus ``grad_norm``
    (before clipping) and, on-policy, those of :func:`on_policy_pairs`."""
    _check_data(config, model_config, pairs, prompts, reward)
    if not config.on_policy:
        if ref_logps is None:
            raise ValueError("offline DPO needs ref_logps, the reference model's log-probs of "
                             "pairs (pair_log_probs(ref_params, pairs, model_config))")
        ref_logps = RefLogProbs(jnp.asarray(ref_logps.chosen, jnp.float32),
                                jnp.asarray(ref_logps.rejected, jnp.float32))
        if ref_logps.chosen.shape != pairs.weight.shape:
            raise ValueError(f"ref_logps must hold one log-prob per pair {pairs.weight.shape}, "
                             f"got {ref_logps.chosen.shape}")
    optimizer = _optimizer(config)

    def step(state: DPOState, key):
        if config.on_policy:
            batch, ref, info = on_policy_pairs(state, key, config, model_config, prompts, reward)
        else:
            batch, ref = sample_offline_batch(key, pairs, ref_logps, config.batch_size)
            info = {}
        if config.loss in ("dpo", "cdpo"):
            grads, metrics = _dpo_step_and_metrics(state.params, ref, batch, config,
                                                   model_config)
        else:
            (_, metrics), grads = jax.value_and_grad(dpo_batch_loss, has_aux=True)(
                state.params, ref, batch, config, model_config)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "grad_norm": optax.tree.norm(grads), **info}
        return state._replace(params=params, opt_state=opt_state, step=state.step + 1), metrics

    return step


def make_dpo_train(config: DPOConfig, model_config: gpt.GPTConfig, sft_params,
                   pairs: PreferenceBatch | None = None, *, prompts: PromptSet | None = None,
                   reward: Reward | None = None, ref_params=None) -> Callable:
    """``train(key, beta=None, learning_rate=None, nll_coef=None) -> (final_state, metrics)``: all
    ``config.steps`` DPO steps from the SFT model in one ``lax.scan``, metrics with a leading
    axis of ``steps``. Pure, so ``jax.jit(jax.vmap(train))(jax.random.split(key, n_seeds))``
    trains ``n_seeds`` policies at once (purejaxrl's pattern) in one compilation.

    Offline (``pairs``): the reference log-probs of every pair are computed here, once, with
    ``ref_params`` (default: ``sft_params``), and ``train`` reads them from the cache.
    On-policy (``config.on_policy``; ``prompts`` and ``reward``): each step samples and labels
    fresh pairs (:func:`on_policy_pairs`). ``beta``, ``learning_rate`` and ``nll_coef``, when
    given, replace the config's and may be traced: ``jax.vmap(train)(keys, None, None,
    coefs)`` trains with and without the NLL term in one compilation (as chapter 6's
    ``train`` sweeps ``beta``).
    """
    _check_data(config, model_config, pairs, prompts, reward)
    ref_logps = None
    if not config.on_policy:
        ref = sft_params if ref_params is None else ref_params
        ref_logps = pair_log_probs(ref, pairs, model_config)

    def train(key, beta=None, learning_rate=None, nll_coef=None):
        swept = {k: v for k, v in (("beta", beta), ("learning_rate", learning_rate),
                                   ("nll_coef", nll_coef)) if v is not None}
        run_config = dataclasses.replace(config, **swept) if swept else config
        step = make_dpo_step(run_config, model_config, pairs, ref_logps, prompts=prompts,
                             reward=reward)
        state = init_dpo_state(run_config, sft_params, reward, ref_params)
        return jax.lax.scan(step, state, jax.random.split(key, config.steps))

    return train


def train_dpo(config: DPOConfig, model_config: gpt.GPTConfig, sft_params,
              pairs: PreferenceBatch | None = None, *, prompts: PromptSet | None = None,
              reward: Reward | None = None, ref_params=None, seed: int = 0,
              progress: bool = True, evaluate: Callable[[DPOState], dict] | None = None):
    """Run ``config.steps`` DPO steps from ``sft_params``, ``log_every`` per compiled chunk,
    with a tqdm progress bar: the steps of :func:`make_dpo_train` (its keys are drawn per
    chunk here, so the batches differ), through the one training driver
    (:func:`rlhf_book.lm.train.run_in_chunks`). ``evaluate(state)`` (optional, e.g.
    :func:`implicit_reward_accuracy` on held-out pairs) runs after each chunk. Returns
    ``(params, history)``: the trained policy and the per-step metrics."""
    _check_data(config, model_config, pairs, prompts, reward)
    ref_logps = None
    if not config.on_policy:
        ref_logps = pair_log_probs(sft_params if ref_params is None else ref_params, pairs,
                                   model_config)
    step = make_dpo_step(config, model_config, pairs, ref_logps, prompts=prompts, reward=reward)
    state = init_dpo_state(config, sft_params, reward, ref_params)
    state, history = train.run_in_chunks(
        step, state, steps=config.steps, chunk_size=config.log_every,
        key=jax.random.PRNGKey(seed), desc=f"DPO ({config.loss})", progress=progress,
        evaluate=evaluate,
        postfix=lambda h: {"loss": f"{h['loss'][-1]:.3f}",
                           "acc": f"{h['rewards/accuracies'][-1]:.2f}"})
    return state.params, history


# ----------------------------------------------------------------------------------------------
# Evaluation: the implicit reward as a reward model, and the policy's answers


def _accuracy_and_se(chosen, rejected) -> tuple[float, float]:
    acc = float(preference_accuracy(chosen, rejected, tie=0.5))
    return acc, float(np.sqrt(acc * (1.0 - acc) / max(len(chosen), 1)))


def implicit_reward_accuracy(params, ref_params, pairs: Sequence[data.PreferencePair],
                             model_config: gpt.GPTConfig, beta: float = 0.1, *,
                             ref_logps: RefLogProbs | None = None) -> dict[str, float]:
    """DPO's policy read as a reward model (book eq. 80, "your language model is secretly a
    reward model"): the implicit reward ``r = beta log pi(y|x) / pi_ref(y|x)`` of both halves
    of held-out pairs, and how often it ranks them as

    * the annotators did (``accuracy``: the labels, noisy; ceiling
      :func:`rlhf_book.data.bt_accuracy_ceiling`), and
    * the gold reward does (``gold_accuracy``, over the ``n_gold`` pairs whose gold rewards
      differ: the truth behind the votes).

    A tie counts 1/2 (chance), so a policy equal to its reference scores 0.5 on both. Also
    returns binomial standard errors (``*_se``), the mean ``margin`` ``r_c - r_r`` and the mean
    sequence log-probs ``logps/chosen``, ``logps/rejected`` under ``params`` (to watch
    preference displacement). ``ref_logps`` (optional) are the reference's, cached."""
    pairs = list(pairs)
    batch = encode_preference_pairs(pairs)
    pc, pr = pair_log_probs(params, batch, model_config)
    rc, rr = ref_logps if ref_logps is not None else pair_log_probs(ref_params, batch,
                                                                    model_config)
    r_c = beta * (np.asarray(pc) - np.asarray(rc))
    r_r = beta * (np.asarray(pr) - np.asarray(rr))
    acc, se = _accuracy_and_se(r_c, r_r)
    out = {"accuracy": acc, "accuracy_se": se, "n": len(pairs),
           "margin": float(np.mean(r_c - r_r)), "logps/chosen": float(np.mean(pc)),
           "logps/rejected": float(np.mean(pr))}
    gold = np.array([getattr(p, "gold_chosen", np.nan) - getattr(p, "gold_rejected", np.nan)
                     for p in pairs])
    keep = np.isfinite(gold) & (gold != 0)
    if keep.any():
        winner = np.where(gold > 0, r_c, r_r)[keep]  # the higher-gold half of each pair
        loser = np.where(gold > 0, r_r, r_c)[keep]
        out["gold_accuracy"], out["gold_accuracy_se"] = _accuracy_and_se(winner, loser)
    else:
        out["gold_accuracy"] = out["gold_accuracy_se"] = float("nan")
    out["n_gold"] = int(keep.sum())
    return out
