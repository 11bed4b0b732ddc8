"""Chapter 15: regularisation. For now: the KL estimators that chapters 6 and 8 share.

Every RLHF objective keeps the policy ``pi`` close to a reference ``pi_ref`` with
``KL(pi || pi_ref) = E_{y ~ pi}[log pi(y) - log pi_ref(y)]`` (book §15.1, eq. 143 of
Appendix A; ch. 3, eq. 11). In practice the KL is estimated *per sampled token* from the
log-probabilities of the token under both models, with Schulman's three estimators
("Approximating KL divergence", 2020). With ``log r = log pi_ref - log pi`` and samples from
``pi``:

* ``k1 = -log r``                 unbiased, high variance, negative on some samples;
* ``k2 = (log r)^2 / 2``           biased (its mean is an f-divergence close to the KL for
  close distributions), low variance, always >= 0;
* ``k3 = (r - 1) - log r``         unbiased (``E_pi[r] = 1``) and always >= 0, low variance.

``k3`` is computed with ``expm1``, which avoids the cancellation of ``r - 1`` when ``pi`` and
``pi_ref`` are close, and its log-ratio is clamped above at 20 so that it stays finite for
extreme logits (the clamp only binds where the reference likes a sampled token ``e^20`` times
more than the policy; below, ``k3 = -1 - log r`` is finite anyway, so there is no clamp and
the gradient keeps pulling the policy back).

Shapes: any shape, ``logp`` and ``ref_logp`` the same; results elementwise.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlhf_book.lm.ops import as_float_array

KL_ESTIMATORS = ("k1", "k2", "k3")
LOG_RATIO_CLAMP = 20.0


def _log_ratio(logp, ref_logp) -> jax.Array:
    """``log r = ref_logp - logp`` after checking both are real arrays of the same shape."""
    logp = as_float_array(logp, "logp")
    ref_logp = as_float_array(ref_logp, "ref_logp")
    if logp.shape != ref_logp.shape:
        raise ValueError(f"ref_logp must have the shape of logp {logp.shape}, got {ref_logp.shape}")
    return ref_logp - logp


# [guide:kl-estimators]
def kl_k1(logp, ref_logp) -> jax.Array:
    """``k1 = log pi - log pi_ref`` per sample: the plain Monte-Carlo estimate of
    ``KL(pi || pi_ref)`` from samples of ``pi`` (Schulman 2020). Unbiased; negative wherever the
    reference likes a sampled token more than the policy does."""
    return -_log_ratio(logp, ref_logp)


def kl_k2(logp, ref_logp) -> jax.Array:
    """``k2 = (log pi - log pi_ref)^2 / 2`` per sample (Schulman 2020). Non-negative and low
    variance but biased; the book's PPO code logs it as ``approx_kl`` (§6.2.5)."""
    return 0.5 * jnp.square(_log_ratio(logp, ref_logp))


def kl_k3(logp, ref_logp) -> jax.Array:
    """``k3 = (r - 1) - log r`` with ``log r = log pi_ref - log pi`` per sample (Schulman 2020):
    unbiased and non-negative (``e^x >= 1 + x``). GRPO's KL term (DeepSeekMath; TRL's
    ``per_token_kl``); book §6.2.6. ``expm1`` avoids cancellation for nearby models; the
    log-ratio is clamped above at 20 so extreme logits give a large finite value, never inf."""
    log_r = jnp.minimum(_log_ratio(logp, ref_logp), LOG_RATIO_CLAMP)
    return jnp.expm1(log_r) - log_r
# [/guide]


def kl_estimate(logp, ref_logp, estimator: str = "k3") -> jax.Array:
    """The per-sample KL estimate named by ``estimator`` (one of :data:`KL_ESTIMATORS`)."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")
    return {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}[estimator](logp, ref_logp)
