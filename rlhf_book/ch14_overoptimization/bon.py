"""Best-of-N measured from samples: the over-optimisation curve of a real policy (book §14.2;
chapter 9's best-of-N).

On the mini GPT the best-of-N distribution is not known in closed form, but ``m`` samples per
prompt, each with a proxy score (the reward model's) and a gold reward, give an unbiased
estimate of best-of-``N``'s expected gold reward for every ``N <= m`` at once: rank the
samples by the proxy; the best of a uniformly random ``N``-subset of them is the ``i``-th
lowest with probability ``C(i - 1, N - 1) / C(m, N)`` (the other ``N - 1`` members come from
the ``i - 1`` below it). Averaging over the subsets is what makes the estimate use all ``m``
samples (the U-statistic of the best-of-``N`` pick; the pass@k estimator of Chen et al. 2021
is the same idea for a 0/1 reward).

Shapes: ``proxy [..., m]`` and ``gold [..., m]`` (one row of samples per prompt); the result
is ``[...]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from rlhf_book.lm.checks import as_float_array, is_traced


def _check_n(n, m: int) -> None:
    """``n`` must be an integer in ``1..m`` (unless traced)."""
    if not is_traced(n) and (isinstance(n, bool) or not isinstance(n, (int, float, np.integer,
                                                                       np.floating))
                             or not float(n).is_integer() or not 1 <= n <= m):
        raise ValueError(f"n must be an integer in 1..{m} (the samples per prompt), got {n!r}")

__all__ = ["best_of_n_weights", "best_of_n_from_samples"]


def _log_comb(a, b):
    return gammaln(a + 1.0) - gammaln(b + 1.0) - gammaln(a - b + 1.0)


# [guide:best-of-n-from-samples]
def best_of_n_weights(m: int, n) -> jax.Array:
    """``[m]``: the probability that the best of a uniformly random ``n``-subset of ``m``
    ranked samples is the ``i``-th lowest, ``C(i - 1, n - 1) / C(m, n)`` for ``i = 1..m``
    (0 for ``i < n``); it sums to 1 (normalised, so that float32's rounding of the log-gamma
    terms does not leak mass at large ``m``). ``n`` may be traced (``1 <= n <= m``)."""
    if not isinstance(m, (int, np.integer)) or m < 1:
        raise ValueError(f"m must be an integer >= 1 (samples per prompt), got {m!r}")
    _check_n(n, m)
    i = jnp.arange(1, m + 1, dtype=jnp.float32)
    n = jnp.asarray(n, jnp.float32)
    log_w = _log_comb(i - 1.0, n - 1.0) - _log_comb(jnp.float32(m), n)
    weights = jnp.where(i >= n, jnp.exp(log_w), 0.0)
    return weights / jnp.sum(weights)


def best_of_n_from_samples(proxy, gold, n) -> jax.Array:
    """The expected ``gold`` reward of best-of-``n`` ranked by ``proxy``, estimated without
    bias from ``m >= n`` samples per prompt: ``proxy [..., m]`` and ``gold [..., m]`` ->
    ``[...]``. Sort each row by the proxy and weigh the ``i``-th lowest sample's gold by
    ``C(i - 1, n - 1) / C(m, n)``, the probability that it is the proxy's pick from a random
    ``n``-subset; among equal proxies the earlier sample wins, as ``argmax`` picks (so it
    ranks higher). ``n = 1`` is the mean gold reward, ``n = m``
    the gold reward of the proxy's top sample; ``gold = proxy`` gives the proxy's own
    best-of-``n`` score. Book §14.2 (Gao et al. 2023's best-of-N curves); chapter 9's
    best-of-N.

    How: a stable ``jnp.argsort`` of the row reversed (so that, among ties, the earlier sample
    sorts last), ``jnp.take_along_axis`` for the gold, and :func:`best_of_n_weights`."""
    proxy = as_float_array(proxy, "proxy")
    gold = as_float_array(gold, "gold")
    if proxy.shape != gold.shape or proxy.ndim == 0:
        raise ValueError(f"proxy and gold must have one shape [..., m], got {proxy.shape} and "
                         f"{gold.shape}")
    m = proxy.shape[-1]
    _check_n(n, m)
    # BEGIN SOLUTION
    # ascending by proxy; reversing first puts the earlier of equal proxies last (highest)
    order = m - 1 - jnp.argsort(proxy[..., ::-1], axis=-1, stable=True)
    ranked_gold = jnp.take_along_axis(gold, order, axis=-1)
    return ranked_gold @ best_of_n_weights(m, n).astype(ranked_gold.dtype)
    # END SOLUTION
# [/guide]
