"""Chapter 15's math: the KL to a reference, its estimators, where it goes, and the other
regularisers of §15.3.

In the book's order:

* §15.1, eq. 128: the exact KL of two categorical distributions from their logits,
  :func:`exact_kl`, and of a whole generation, :func:`sequence_kl` (the exact KL of each
  position's next-token distributions, summed over the completion);
* §15.1, eq. 129: the Monte-Carlo form and Schulman's estimators :func:`kl_k1`,
  :func:`kl_k2`, :func:`kl_k3` (:func:`kl_estimate` picks one by name; they live in
  :mod:`rlhf_book.lm.kl` because chapters 6 and 8 use them too), summed per sequence by
  :func:`sequence_kl_estimate`;
* §15.1.2, the implementation example done right: :func:`generation_kl` (the snippet's
  ``kl_approx`` and ``kl_full``, masked and per sequence) and :func:`torch_kl_div` (what
  PyTorch's ``F.kl_div`` computes, to show the snippet's erratum);
* the KL as a reward penalty vs as a loss term (§15.1.2; §6.2.5, §6.2.6): the gradient each
  estimator gives, exact by enumeration over a categorical policy --
  :func:`estimator_loss_gradient` (``k`` in the loss, pathwise), :func:`estimator_reward_gradient`
  (``k`` in the reward, score function) -- beside the true gradient :func:`kl_gradient`;
* §15.3.1 pretraining gradients: InstructGPT's PPO-ptx, :func:`ppo_ptx_objective` and
  :func:`ptx_loss` (eq. 137), and DPO with an NLL term, :func:`dpo_nll_loss` (eqs. 138, 139);
* §15.3.2 margins: :func:`margin_bt_loss` (eq. 140, Llama 2) and :func:`margin_dpo_loss`
  (the same offset on DPO's implicit reward).

Direction convention (book §15.1, eqs. 127, 128, 129; Schulman, "Approximating KL divergence",
2020). The regulariser is the *reverse* KL from the policy to the reference,
``KL(pi || pi_ref) = E_{y ~ pi}[log pi(y) - log pi_ref(y)]``, estimated from samples of ``pi``
scored under both models. With ``log r = log pi_ref - log pi`` per sampled token:

* ``k1 = -log r``                 unbiased, high variance, negative on some samples;
* ``k2 = (log r)^2 / 2``           biased (its mean is an f-divergence close to the KL for
  close distributions), low variance, always >= 0;
* ``k3 = (r - 1) - log r``         unbiased (``E_pi[r] = 1``) and always >= 0, low variance.

``k3`` is computed with ``expm1``, which avoids the cancellation of ``r - 1`` when ``pi`` and
``pi_ref`` are close, and its log-ratio is clamped above at 20 so that it stays finite for
extreme logits (the clamp only binds where the reference likes a sampled token ``e^20`` times
more than the policy; below, ``k3 = -1 - log r`` is finite anyway, so there is no clamp and
the gradient keeps pulling the policy back).

Shapes: ``N`` sequences (``B`` in the book's snippet), ``T`` token positions, ``V`` vocabulary.
The estimators take any shape, ``logp`` and ``ref_logp`` the same, and work elementwise.
Masks are 1 on the completion tokens (the ones sampled from ``pi``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import xlogy

from rlhf_book.ch08_direct_alignment.losses import dpo_logits
from rlhf_book.lm.checks import (as_float_array, as_float_vectors, as_like, check_choice,
                                 check_range, check_rank)
# Schulman's estimators live in lm (chapters 6 and 8 use them too); chapter 15 teaches them.
from rlhf_book.lm.kl import (KL_ESTIMATORS, LOG_RATIO_CLAMP, kl_estimate, kl_k1,  # noqa: F401
                             kl_k2, kl_k3)
from rlhf_book.lm.ops import masked_sum, next_token_log_probs

__all__ = [
    "KL_ESTIMATORS", "LOG_RATIO_CLAMP", "LLAMA2_MARGINS", "exact_kl", "sequence_kl", "kl_k1",
    "kl_k2", "kl_k3", "kl_estimate", "sequence_kl_estimate", "GenerationKL", "generation_kl",
    "torch_kl_div", "kl_gradient", "estimator_loss_gradient", "estimator_reward_gradient",
    "TORCH_REDUCTIONS", "ppo_ptx_objective", "ptx_loss", "dpo_nll_loss", "margin_like",
    "margin_bt_loss", "margin_dpo_loss",
]


# ----------------------------------------------------------------------------------------------
# §15.1, eq. 128: the exact KL of two categorical distributions, and of a generation


# [guide:exact-kl]
def exact_kl(logits_p, logits_q) -> jax.Array:
    """``KL(p || q) = sum_v p(v) (log p(v) - log q(v))`` over the last (vocabulary) axis, with
    ``p = softmax(logits_p)`` and ``q = softmax(logits_q)`` (book §15.1, eq. 128).

    Shapes: ``logits_p [..., V]``, ``logits_q`` the same; returns ``[...]``. Log-probabilities
    are valid logits (``log_softmax`` leaves them unchanged). For the book's regulariser pass
    the policy first: ``exact_kl(logits, ref_logits)`` is ``KL(pi || pi_ref)``; the other way
    round it is the forward KL ``KL(pi_ref || pi)``.

    Stable for logits of any size: a category with ``p(v) = 0`` (``exp`` underflows, or a
    logit of ``-inf``) contributes exactly 0 (``0 log 0 = 0``). Where ``q(v) = 0 < p(v)`` the
    result is ``+inf``, which is the KL's value. At logits of +-1e4 the result and its gradient
    are finite, and two equal rows give exactly 0.

    How: the log-probabilities come from ``log_softmax``, never from ``log(softmax)``; the
    log-ratio is selected with ``jnp.where(p > 0, ...)`` before the product, as ``xlogy`` does,
    so that a ``-inf - -inf = NaN`` never reaches the sum or its gradient.
    """
    logits_p = as_float_array(logits_p, "logits_p", values="logits")
    logits_q = as_like(logits_q, "logits_q", logits_p, "logits_p", values="logits")
    # BEGIN SOLUTION
    logp = jax.nn.log_softmax(logits_p, axis=-1)
    logq = jax.nn.log_softmax(logits_q, axis=-1)
    p = jnp.exp(logp)
    # Select before multiplying: -inf - (-inf) = NaN at a p = 0 entry never reaches the sum.
    log_ratio = jnp.where(p > 0, logp - logq, 0.0)
    return jnp.sum(p * log_ratio, axis=-1)
    # END SOLUTION


def sequence_kl(logits, ref_logits, mask) -> jax.Array:
    """The exact KL between the policy's and the reference's next-token distributions at each
    position, summed over a generation's completion tokens (book §15.1.2, the snippet's
    ``kl_full``, per sequence and masked):

        sequence_kl_n = sum_t mask_nt KL(pi(. | y_<t) || pi_ref(. | y_<t))

    ``logits [N, T, V]`` (policy), ``ref_logits [N, T, V]`` (reference) and ``mask [N, T]``,
    where position ``t`` holds the distribution the token at position ``t`` was drawn from (a
    causal LM's output shifted by one: pass ``logits[:, :-1]`` with ``mask[:, 1:]``, or call
    :func:`generation_kl`). Returns ``[N]``; a row with no completion token gives 0, and
    positions off the mask never reach the result, whatever they hold.

    By the chain rule of the KL, ``KL(pi(y|x) || pi_ref(y|x)) = E_{y ~ pi}[sum_t
    KL(pi(. | y_<t) || pi_ref(. | y_<t))]`` over whole completions, so on a sampled completion
    this is an unbiased estimate of the sequence KL that is exact over each position's
    vocabulary and random only through the prefixes. If generation used a temperature, divide
    both models' logits by it first: the KL is then that of the distributions sampled from.

    How: :func:`exact_kl` at every position, then a ``masked_sum`` over ``T`` (a select, not a
    product, so garbage off the mask cannot turn into NaN).
    """
    logits = as_float_array(logits, "logits", "[N, T, V]", values="logits")
    ref_logits = as_like(ref_logits, "ref_logits", logits, "logits", values="logits")
    mask = as_like(mask, "mask", logits[..., 0], "[N, T]")
    # BEGIN SOLUTION
    return masked_sum(exact_kl(logits, ref_logits), mask, axis=1)
    # END SOLUTION
# [/guide]


# ----------------------------------------------------------------------------------------------
# §15.1, eq. 129: the Monte-Carlo form, Schulman's estimators


# [guide:sequence-kl-estimate]
def sequence_kl_estimate(logp, ref_logp, mask, estimator: str = "k1") -> jax.Array:
    """The sampled estimate of a completion's KL: the per-token estimate summed over its
    tokens, ``sum_t mask_t k(log pi(y_t | y_<t), log pi_ref(y_t | y_<t))`` (book §15.1.2, the
    snippet's ``kl_approx`` with a mask; TRL's RLOO sums k1 the same way).

    ``logp``, ``ref_logp`` (log-probs of the sampled tokens under the policy and the reference)
    and ``mask``: ``[N, T]``; returns ``[N]``. With k1 the sum is the sequence log-ratio ``log
    pi(y|x) - log pi_ref(y|x)``. With k1 or k3 it is unbiased for the sequence KL
    ``KL(pi(y|x) || pi_ref(y|x))``: each token's estimate has conditional mean ``KL(pi(. |
    y_<t) || pi_ref(. | y_<t))`` given its prefix, and those sum to the sequence KL in
    expectation (the chain rule). A sum of per-token k3 is not k3 of the sequence log-ratio,
    and both are unbiased; a sum of per-token k2 stays biased.
    """
    k = kl_estimate(logp, ref_logp, estimator)
    return masked_sum(k, as_like(mask, "mask", k, "logp [N, T]"), axis=1)
# [/guide]


# ----------------------------------------------------------------------------------------------
# §15.1.2 The implementation example, done right


class GenerationKL(NamedTuple):
    """Both KL measurements of each generation, ``[N]`` each."""

    sampled: jax.Array  # the per-token estimate summed (k1: the book's ``kl_approx``)
    exact: jax.Array    # the exact next-token KL summed (the book's ``kl_full``, fixed)


# [guide:generation-kl]
def generation_kl(logits, ref_logits, tokens, mask, estimator: str = "k1") -> GenerationKL:
    """The book's §15.1.2 snippet done right: how far each generation is from the reference,
    from the two models' logits on it.

    ``tokens [N, T]`` (integer ids: prompt, completion, padding); ``logits [N, T, V]`` and
    ``ref_logits [N, T, V]``, the policy's and the reference's outputs on ``tokens`` (position
    ``t`` predicts token ``t + 1``; the book's ``model.forward(generated_tokens[:, :-1])`` is
    the first ``T - 1`` positions of this); ``mask [N, T]``, 1 on the completion tokens
    (position 0 is never a target). The reference is a constant (``stop_gradient``). Returns
    ``GenerationKL(sampled [N], exact [N])``:

    * ``sampled``: :func:`sequence_kl_estimate` over the completion, by default k1, which is
      ``log pi(y|x) - log pi_ref(y|x)`` -- the book's ``kl_approx = seq_logprob -
      ref_seq_logprob`` restricted to the completion;
    * ``exact``: :func:`sequence_kl` over the completion's positions -- what the book's
      ``kl_full`` was meant to be (its ``'batchmean'`` is ``exact.mean()`` when the mask
      covers every position).

    The snippet's ``kl_full`` returns NaN as written, has no mask and gives one scalar where
    ``kl_approx`` gives ``[N]``: see :func:`torch_kl_div` and the errata of the chapter guide
    (book §15.1.2).
    """
    logits = as_float_array(logits, "logits", "[N, T, V]", values="logits")
    ref_logits = as_like(ref_logits, "ref_logits", logits, "logits", values="logits")
    check_rank(tokens := jnp.asarray(tokens), 2, "tokens", "[N, T] (integer ids)")
    ref_logits = jax.lax.stop_gradient(ref_logits)
    targets = as_like(mask, "mask", tokens, "tokens")[:, 1:]
    logp = next_token_log_probs(logits, tokens)
    ref_logp = next_token_log_probs(ref_logits, tokens)
    return GenerationKL(sampled=sequence_kl_estimate(logp, ref_logp, targets, estimator),
                        exact=sequence_kl(logits[:, :-1], ref_logits[:, :-1], targets))
# [/guide]


TORCH_REDUCTIONS = ("none", "sum", "mean", "batchmean")


def torch_kl_div(input, target, reduction: str = "mean", log_target: bool = False) -> jax.Array:
    """What PyTorch's ``torch.nn.functional.kl_div(input, target, reduction=...,
    log_target=...)`` computes, in JAX, to show the erratum of the book's snippet (§15.1.2).
    Pointwise:

        log_target=False:  xlogy(target, target) - target * input    (target: probabilities)
        log_target=True:   exp(target) * (target - input)             (target: log-probs)

    ``input`` is always log-probabilities. With ``input = log q`` and ``target = p`` the sum
    is ``KL(p || q)``: the *second* argument is the first argument of the KL. Reductions as in
    PyTorch: ``"none"`` (elementwise), ``"sum"``, ``"mean"`` (over every element: PyTorch's
    default, which is not the KL), ``"batchmean"`` (the sum divided by ``input.shape[0]``).
    ``input`` and ``target`` must have one shape (PyTorch would broadcast).

    The book's ``F.kl_div(ref_logprobs, logprobs, reduction='batchmean')`` (§15.1.2) is NaN
    here as in PyTorch; ``F.kl_div(ref_logprobs, logprobs, log_target=True, reduction='sum') /
    B`` is ``KL(pi || pi_ref)`` summed over positions and averaged over the batch.
    """
    target = as_like(target, "target", input := as_float_array(input, "input"), "input")
    check_choice(reduction, "reduction", TORCH_REDUCTIONS)
    if log_target:
        pointwise = jnp.exp(target) * (target - input)
    else:
        pointwise = xlogy(target, target) - target * input
    if reduction == "none":
        return pointwise
    if reduction == "sum":
        return jnp.sum(pointwise)
    if reduction == "mean":
        return jnp.mean(pointwise)
    return jnp.sum(pointwise) / input.shape[0]


# ----------------------------------------------------------------------------------------------
# The KL as a reward penalty vs as a loss term: the gradient each estimator gives, exact by
# enumeration over a categorical policy pi = softmax(z) (one sampled token, a "bandit").


# [guide:kl-gradients]
def kl_gradient(logits, ref_logits, direction: str = "reverse") -> jax.Array:
    """The true gradient, with respect to the policy's logits ``z``, of the reverse KL
    ``KL(pi || pi_ref)`` (``direction="reverse"``, the book's regulariser) or of the forward
    KL ``KL(pi_ref || pi)`` (``"forward"``), with ``pi = softmax(logits)`` and ``pi_ref =
    softmax(ref_logits)``. ``[..., V] -> [..., V]``, one gradient per row.

    In closed form, with ``d = log pi - log pi_ref``:

        reverse:  grad_z KL(pi || pi_ref) = pi * (d - E_pi[d])
        forward:  grad_z KL(pi_ref || pi) = pi - pi_ref

    (here by ``jax.grad`` of :func:`exact_kl`). Near ``pi_ref`` the two agree to first order --
    both KLs have the Fisher information as their Hessian there -- and differ at second order.
    """
    check_choice(direction, "direction", ("reverse", "forward"))
    ref_logits = as_like(ref_logits, "ref_logits", logits := as_float_array(logits, "logits"), "logits")
    ref_logits = jax.lax.stop_gradient(ref_logits)
    if direction == "reverse":
        return jax.grad(lambda z: jnp.sum(exact_kl(z, ref_logits)))(logits)
    return jax.grad(lambda z: jnp.sum(exact_kl(ref_logits, z)))(logits)


def estimator_loss_gradient(logits, ref_logits, estimator: str = "k3") -> jax.Array:
    """The expected gradient of a KL estimator used directly as a loss term (the KL "in the
    loss", as GRPO does with k3): ``E_{y ~ pi}[grad_z k(y)]``, where ``y`` is sampled from
    ``pi`` and held fixed and ``k`` is differentiated through ``log pi(y)``. Exact, by
    enumeration over the ``V`` outcomes of ``pi = softmax(logits)``; ``logits, ref_logits
    [..., V] -> [..., V]``. ``jax.grad`` of the batch mean of ``k`` over samples from ``pi``
    converges to it.

    With ``log r = log pi_ref(y) - log pi(y)``, so ``grad log r = -grad log pi(y)``:

    * k1: ``grad k1 = grad log pi(y)``, and ``E_pi[grad log pi] = sum_y grad pi(y) = 0``:
      **zero** in expectation. As a loss, k1 does not regularise at all: the score-function
      term that carries the KL's gradient is missing.
    * k2: ``grad k2 = (log pi(y) - log pi_ref(y)) grad log pi(y)``, whose mean is ``grad
      KL(pi || pi_ref)`` (differentiate ``sum_y pi (log pi - log pi_ref)``; the ``sum_y pi grad
      log pi`` term is 0): **the true gradient**, although k2's *value* is biased.
    * k3: ``grad k3 = (1 - r) grad log pi(y)``, whose mean is ``-sum_y pi_ref(y) grad log
      pi(y) = grad KL(pi_ref || pi)``: the gradient of the **forward** KL, not of the reverse KL
      that k3's value estimates (they agree to first order near ``pi_ref``;
      :func:`kl_gradient`). k3's clamp zeroes the gradient of a token the reference likes more
      than ``e^20`` times as much as the policy, so the identity needs no such token.

    For sequences, per-token k2 summed in the loss differentiates each position's KL with its
    prefix held fixed: its mean is the gradient of ``sum_t E_{y_<t}[KL(pi(. | y_<t) || pi_ref(.
    | y_<t))]`` with the prefixes' distribution frozen, which is not the gradient of the
    sequence KL (the tests show both on a two-token example).
    """
    ref_logits = as_like(ref_logits, "ref_logits", logits := as_float_array(logits, "logits"), "logits")
    ref_logp = jax.lax.stop_gradient(jax.nn.log_softmax(ref_logits, axis=-1))

    def expected_estimate(z):
        logp = jax.nn.log_softmax(z, axis=-1)
        probs = jax.lax.stop_gradient(jnp.exp(logp))  # y ~ pi: the sampling is not differentiated
        return jnp.sum(probs * kl_estimate(logp, ref_logp, estimator))

    return jax.grad(expected_estimate)(logits)


def estimator_reward_gradient(logits, ref_logits, estimator: str = "k1") -> jax.Array:
    """The expected gradient of the KL penalty when the estimate goes into the *reward* (PPO,
    RLOO, REINFORCE: the penalty is a number, ``stop_gradient``-ed, that acts through the
    policy-gradient term): ``E_{y ~ pi}[k(y) grad_z log pi(y)]``, the score-function gradient
    of ``E_pi[k]`` with ``k`` held fixed. The policy ascends ``score - beta k``, so its update
    gets ``-beta`` times this. Exact, by enumeration, as in :func:`estimator_loss_gradient`;
    ``[..., V] -> [..., V]``.

    Since ``grad E_pi[k] = E_pi[k grad log pi] + E_pi[grad k]`` (the product rule), this is
    ``grad E_pi[k]`` minus the loss gradient:

    * k1: ``grad KL(pi || pi_ref)``, **the true gradient** (k1's loss gradient is 0);
    * k2: ``grad D2 - grad KL(pi || pi_ref)``, with ``D2 = E_pi[(log pi - log pi_ref)^2 / 2]``
      (the mean of k2);
    * k3: ``grad KL(pi || pi_ref) - grad KL(pi_ref || pi)``: k3 is unbiased for every ``pi``,
      so ``grad E_pi[k3]`` is the true gradient, and its loss part is the forward KL's.

    So k1 is the estimator whose gradient is right in the reward and k2 the one whose gradient
    is right in the loss; k3 is right only with both parts (in either place alone it is not).
    A baseline subtracted from the reward changes the variance of a sampled gradient, not
    these means.
    """
    ref_logits = as_like(ref_logits, "ref_logits", logits := as_float_array(logits, "logits"), "logits")
    ref_logp = jax.lax.stop_gradient(jax.nn.log_softmax(ref_logits, axis=-1))

    def surrogate(z):
        logp = jax.nn.log_softmax(z, axis=-1)
        reward = jax.lax.stop_gradient(jnp.exp(logp) * kl_estimate(logp, ref_logp, estimator))
        return jnp.sum(reward * logp)  # sum_y pi(y) k(y) log pi(y), weights held fixed

    return jax.grad(surrogate)(logits)
# [/guide]


# ----------------------------------------------------------------------------------------------
# §15.3.1 Pretraining gradients


# [guide:ppo-ptx]
def ppo_ptx_objective(rl_objective, pretrain_logp, gamma) -> jax.Array:
    """InstructGPT's PPO-ptx objective (book §15.3.1, eq. 137; Ouyang et al. 2022, eq. 2), to
    *maximise*:

        J(theta) = E_{(x, y) ~ pi}[r(x, y) - beta KL-penalty] + gamma E_{x ~ D_pretrain}[log pi(x)]

    ``rl_objective`` (a scalar: the RL part, as estimated on the rollout batch),
    ``pretrain_logp [M]`` (the policy's log-likelihoods of ``M`` pretraining documents; in
    this term ``x`` is a document, not a prompt) and ``gamma >= 0``. Returns
    ``rl_objective + gamma * mean(pretrain_logp)``; ``gamma = 0`` is plain PPO.

    The convention for ``gamma`` is the paper's: a weight on the pretraining
    *log-likelihood* added to the RL objective -- in a loss it multiplies the pretraining NLL
    (:func:`ptx_loss`). Its numerical value depends on how that log-likelihood is normalised
    (per document or per token) and on the scale of the reward, so a ``gamma`` carries over
    between codebases only together with both.
    """
    pretrain_logp = as_float_array(pretrain_logp, "pretrain_logp", "[M]")
    return -ptx_loss(-as_float_array(rl_objective, "rl_objective", "[]"), -jnp.mean(pretrain_logp), gamma)


def ptx_loss(rl_loss, pretrain_nll, gamma) -> jax.Array:
    """PPO-ptx as a loss to minimise: ``rl_loss + gamma * pretrain_nll`` (book eq. 137 negated;
    InstructGPT). ``rl_loss`` is the RL loss of the step (e.g. PPO's clipped loss), and
    ``pretrain_nll`` the policy's negative log-likelihood on a pretraining batch (e.g.
    ``lm.ops.next_token_loss``, a per-token mean); both scalars, ``gamma >= 0``. The gradient is
    the RL gradient plus ``gamma`` times the pretraining gradient: the "pretraining gradient
    mix" that keeps the policy's language modelling from degrading. ``ptx_loss(-J_RL,
    -mean(pretrain_logp), gamma) = -ppo_ptx_objective(J_RL, pretrain_logp, gamma)``.
    """
    check_range(gamma, "gamma", 0)
    rl_loss = as_float_array(rl_loss, "rl_loss", "[]")
    return rl_loss + gamma * as_float_array(pretrain_nll, "pretrain_nll", "[]")
# [/guide]


# [guide:dpo-nll]
def dpo_nll_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                 ref_rejected_logps, chosen_lengths, beta=0.1, alpha=1.0) -> jax.Array:
    """DPO plus a length-normalised NLL on the chosen completion (book §15.3.1, eqs. 138, 139;
    Pang et al. 2024, iterative RPO), averaged over the ``N`` pairs:

        l_i = -log sigmoid(beta h_i) - alpha log pi(c_i^w, y_i^w | x_i) / (|c_i^w| + |y_i^w|)

    with ``h = (pc - pr) - (rc - rr)`` (chapter 8's ``dpo_logits``; the reference terms are
    constants). Shapes: the four sequence log-probs ``[N]`` and ``chosen_lengths [N]``, the
    number of tokens the chosen log-prob sums over (``|c| + |y|``: reasoning plus answer in
    IRPO; the book leaves ``c`` undefined), each > 0. ``beta > 0``, ``alpha >= 0``; ``alpha =
    0`` is chapter 8's ``dpo_loss``. The NLL keeps the chosen text likely in absolute terms,
    which counters the displacement of chapter 8 (both log-probs falling). Chapter 8's loop
    (``nll_coef``, TRL's ``rpo_alpha``) averages the NLL over all chosen tokens of the batch
    instead of per pair; the two agree when the chosen completions have one length.
    """
    check_range(beta, "beta", 0, strict=True)
    check_range(alpha, "alpha", 0)
    h = dpo_logits(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                   ref_rejected_logps)
    lengths = as_like(chosen_lengths, "chosen_lengths", h, "policy_chosen_logps")
    return jnp.mean(-jax.nn.log_sigmoid(beta * h) - alpha * policy_chosen_logps / lengths)
# [/guide]


# ----------------------------------------------------------------------------------------------
# §15.3.2 Margin-based regularisation

_REWARD_NAMES = ("chosen_rewards", "rejected_rewards")

LLAMA2_MARGINS = {"small": (1.0, 2.0 / 3.0, 1.0 / 3.0, 0.0), "large": (3.0, 2.0, 1.0, 0.0)}
"""Llama 2's two margin scales (Touvron et al. 2023, Table 27) for its four preference
ratings, in the order "significantly better", "better", "slightly better", "negligibly
better / unsure" (not in the book, which gives the rating-gap example 5 - 2 = 3 of ch. 5)."""


def margin_like(margin, rewards: jax.Array) -> jax.Array:
    """A margin as a float array: a scalar (one margin for every pair) or one per pair,
    ``[N]`` like ``rewards``."""
    margin = as_float_array(margin, "margin")
    return margin if margin.ndim == 0 else as_like(margin, "margin", rewards, "the pairs [N]")


# [guide:margin-losses]
def margin_bt_loss(chosen_rewards, rejected_rewards, margin) -> jax.Array:
    """Llama 2's margin loss per pair (book §15.3.2, eq. 140 = ch. 5's eq. 18; Touvron et al.
    2023):

        l_i = -log sigmoid(r(y_c) - r(y_r) - m_i) = softplus(-(r(y_c) - r(y_r) - m_i))

    ``chosen_rewards [N]``, ``rejected_rewards [N]``, ``margin`` a scalar or ``[N]`` (from the
    preference rating: :data:`LLAMA2_MARGINS`, or a Likert gap); returns ``[N]``. Its mean is
    chapter 5's ``bradley_terry_loss(..., margin)``. As a regulariser, a pair keeps pulling the
    rewards apart until their gap exceeds its margin by a few units, so pairs rated more
    strongly end up further apart: the reward scale tracks preference strength instead of
    growing without bound on the easy pairs. ``m = 0`` is the Bradley-Terry loss; for ``m >
    0`` the loss is larger at every gap. Finite for any gap (softplus).
    """
    r_c, r_r = as_float_vectors(*zip((chosen_rewards, rejected_rewards), _REWARD_NAMES))
    return jax.nn.softplus(-(r_c - r_r - margin_like(margin, r_c)))


def margin_dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                    ref_rejected_logps, margin, beta=0.1) -> jax.Array:
    """Eq. 140's margin applied to DPO's implicit reward ``beta log pi/pi_ref`` (book eq. 80):
    ``mean(-log sigmoid(beta h - m))`` with ``h = (pc - pr) - (rc - rr)``. This is the form
    of DPO with an offset (ODPO, Amini et al. 2024), where the offset grows with how much
    better the chosen response is scored; the book's §15.3.2 names reward margins in direct
    alignment (reward-weighted DPO, RPO, REBEL) without giving formulas. Shapes: four ``[N]``
    sequence log-probs, ``margin`` a scalar or ``[N]``; returns a scalar. ``m = 0`` is chapter
    8's ``dpo_loss``; it equals the mean of :func:`margin_bt_loss` on the implicit rewards.
    """
    check_range(beta, "beta", 0, strict=True)
    h = dpo_logits(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                   ref_rejected_logps)
    return jnp.mean(jax.nn.softplus(-(beta * h - margin_like(margin, h))))
# [/guide]
