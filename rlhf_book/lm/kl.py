"""Schulman's estimators of the KL to a reference model, from samples of the policy.

The regulariser of RLHF is the reverse KL ``KL(pi || pi_ref) = E_{y ~ pi}[log pi(y) -
log pi_ref(y)]`` (book §15.1, eqs. 127, 128, 129). It is estimated per sampled token from the
log-probabilities of the token under both models. With ``log r = log pi_ref - log pi``
(Schulman, "Approximating KL divergence", 2020):

* ``k1 = -log r``          unbiased, high variance, negative on some samples;
* ``k2 = (log r)^2 / 2``    biased, low variance, never negative;
* ``k3 = (r - 1) - log r``  unbiased (``E_pi[r] = 1``), never negative, low variance.

Chapters 6 (the KL in the reward or in the loss), 8 and 15 (which teaches them) use these.
Any shape works; ``logp`` and ``ref_logp`` have the same shape and the estimate is elementwise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlhf_book.lm.checks import as_float_array, as_like, check_choice

KL_ESTIMATORS = ("k1", "k2", "k3")
LOG_RATIO_CLAMP = 20.0  # k3's log-ratio is clamped above here: e^20 is finite in float32


def log_ratio(logp, ref_logp) -> jax.Array:
    """``log r = log pi_ref - log pi`` per sample (both arrays of one shape)."""
    logp = as_float_array(logp, "logp")
    return as_like(ref_logp, "ref_logp", logp, "logp") - logp


# [guide:kl-estimators]
def kl_k1(logp, ref_logp) -> jax.Array:
    """``k1 = log pi - log pi_ref`` per sample: the plain Monte-Carlo estimate of
    ``KL(pi || pi_ref)`` from samples of ``pi`` (book §15.1, eq. 129; Schulman 2020).
    Unbiased; negative wherever the reference likes a sampled token more than the policy."""
    return -log_ratio(logp, ref_logp)


def kl_k2(logp, ref_logp) -> jax.Array:
    """``k2 = (log pi - log pi_ref)^2 / 2`` per sample (Schulman 2020). Never negative and low
    variance, but biased; the book's PPO code logs it as ``approx_kl`` (§6.2.5)."""
    return 0.5 * jnp.square(log_ratio(logp, ref_logp))


def kl_k3(logp, ref_logp) -> jax.Array:
    """``k3 = (r - 1) - log r`` with ``log r = log pi_ref - log pi`` per sample (Schulman 2020):
    unbiased and never negative (``e^x >= 1 + x``). GRPO's KL term (book §6.2.6; DeepSeekMath;
    TRL's ``per_token_kl``; book §15.1's estimators). ``logp``, ``ref_logp`` of any matching
    shape ``[...]``; returns that shape. Accurate (positive, about ``log(r)^2 / 2``) for nearby
    models, where ``log r`` is 1e-6 in float32; the log-ratio is clamped above at 20
    (``LOG_RATIO_CLAMP``) so that extreme logits give a large finite value, never inf.

    How: ``expm1(log r) - log r``: ``expm1`` avoids the cancellation of ``exp(log r) - 1`` for
    nearby models; ``jnp.minimum`` with the clamp before it.
    """
    # BEGIN SOLUTION
    log_r = jnp.minimum(log_ratio(logp, ref_logp), LOG_RATIO_CLAMP)
    return jnp.expm1(log_r) - log_r
    # END SOLUTION
# [/guide]


def kl_estimate(logp, ref_logp, estimator: str = "k3") -> jax.Array:
    """The per-sample KL estimate named by ``estimator`` (one of :data:`KL_ESTIMATORS`)."""
    check_choice(estimator, "estimator", KL_ESTIMATORS)
    return {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}[estimator](logp, ref_logp)
