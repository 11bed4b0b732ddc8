"""Learned proxies in closed form (book §14.2): a reward model fitted to preference pairs,
optimised exactly, against the gold reward that labelled the pairs.

:mod:`.pool` hands the optimiser a proxy with a built-in bias. Here the proxy is *learned*, so
the three questions of §14.2 can be asked without training a network:

* **how much data** (Gao et al. 2023): a linear Bradley-Terry reward model (chapter 5's loss,
  book eqs. 15, 16, 17) on a response's features, fitted to ``n`` pairs labelled by the gold reward
  itself. Its only error is estimation error -- too few pairs to pin the weights down -- which
  the optimiser finds and exploits; more pairs push the gold peak later and higher;
* **a train and a test reward model** (book Figure 39; Bai et al. 2022): two reward models from
  disjoint halves of the pairs; optimise against one, score with the other;
* **ensembles** (Coste et al. 2024): members fitted to bootstrap resamples of the pairs, combined
  by their mean, their minimum, or their mean minus ``k`` standard deviations (penalising the
  responses the members disagree on);
* **a length-controlled reward** (:func:`length_controlled`): the reward with its linear
  dependence on length regressed out, in the spirit of length-controlled AlpacaEval (Dubois et
  al. 2024);
* **the KL penalty against early stopping** (book §14.2; Gao et al. 2023): exact policy-gradient
  ascent on ``J(pi) = E_pi[r] - beta KL(pi || pi_ref)`` (book eq. 82) over the pool, for several
  ``beta``, each run recorded at every step.

The pool (:func:`feature_pool`): ``K`` responses with a quality ``q ~ N(0, 1)``, a length ``L ~
Gamma(4, 1)`` and ``N_NOISE`` heavy-tailed features that gold ignores, ``z ~ t_3`` (Student's t
with ``NOISE_DF`` = 3 degrees of freedom: think of counts of rare tokens); gold ``= q - 0.05 (L
- 4)^2`` (as in :func:`.pool.length_pool`). The features ``[q, L - 4, (L - 4)^2, z]`` can express
gold exactly, so an infinitely large preference set recovers it.

Shapes: ``K`` responses, ``F`` features, ``n`` pairs, ``M`` points of a curve, ``E`` ensemble
members.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_book.ch08_direct_alignment.losses import optimal_policy
from rlhf_book.ch14_overoptimization.pool import LENGTH_PENALTY, POOL_SIZE, Pool, exact_kl
from rlhf_book.lm.checks import as_float_array, check_choice, check_range

__all__ = ["FeaturePool", "N_NOISE", "AGGREGATES", "feature_pool", "gold_pairs",
           "fit_linear_rm", "tilt_scores", "ensemble_reward", "length_controlled", "pg_step",
           "pg_curves"]

N_NOISE = 8
NOISE_DF = 3.0
AGGREGATES = ("mean", "min", "mean_minus_std")


class FeaturePool(NamedTuple):
    """A response pool for learned proxies: ``gold [K]``, ``length [K]`` and ``features [K,
    F]`` (quality, ``L - 4``, ``(L - 4)^2``, then the noise features), float64."""

    gold: np.ndarray
    length: np.ndarray
    features: np.ndarray

    def with_proxy(self, proxy) -> Pool:
        """The :class:`~.pool.Pool` whose proxy is ``proxy [K]`` (e.g. ``features @ w``)."""
        return Pool(self.gold, np.asarray(proxy, np.float64), self.length)


def feature_pool(seed: int = 0, size: int = POOL_SIZE, n_noise: int = N_NOISE,
                 length_penalty: float = LENGTH_PENALTY) -> FeaturePool:
    """``q ~ N(0, 1)``, ``L ~ Gamma(4, 1)``, ``z ~ t_3^n_noise`` (Student's t, ``NOISE_DF``) from
    ``numpy.random.default_rng(seed)`` in that order; ``gold = q - length_penalty (L - 4)^2``;
    features ``[q, L - 4, (L - 4)^2, z] [K, 3 + n_noise]``."""
    if not isinstance(size, (int, np.integer)) or size < 2:
        raise ValueError(f"size must be an integer >= 2, got {size!r}")
    if not isinstance(n_noise, (int, np.integer)) or n_noise < 0:
        raise ValueError(f"n_noise must be an integer >= 0, got {n_noise!r}")
    check_range(length_penalty, "length_penalty", 0)
    rng = np.random.default_rng(seed)
    q = rng.standard_normal(size)
    length = rng.gamma(4.0, 1.0, size)
    z = rng.standard_t(NOISE_DF, (size, n_noise))
    features = np.column_stack([q, length - 4, (length - 4) ** 2, z])
    return FeaturePool(q - length_penalty * (length - 4) ** 2, length, features)


def gold_pairs(fpool: FeaturePool, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` preference pairs of distinct pool responses drawn uniformly, labelled by the gold
    reward through the Bradley-Terry model (book eq. 13): the first is preferred with
    probability ``sigmoid(gold_i - gold_j)``. Returns the feature differences ``phi_i - phi_j
    [n, F]`` and the labels ``[n]`` (1.0 when the first is preferred)."""
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    rng = np.random.default_rng(seed)
    K = len(fpool.gold)
    i = rng.integers(K, size=n)
    j = (i + rng.integers(1, K, size=n)) % K  # never i itself
    prefer_i = rng.random(n) < 1.0 / (1.0 + np.exp(-(fpool.gold[i] - fpool.gold[j])))
    return fpool.features[i] - fpool.features[j], prefer_i.astype(np.float64)


# [guide:linear-rm]
def fit_linear_rm(diffs, labels, l2: float = 1e-2, iters: int = 30) -> jax.Array:
    """The linear reward model ``r(y) = w . phi(y)`` that minimises the Bradley-Terry loss
    (book eqs. 15, 16, 17), summed over the pairs (so ``l2`` weighs less as ``n`` grows), plus
    ``l2/2 |w|^2``, on pairs with feature differences ``diffs [n, F]`` and labels ``[n]`` (1
    when the first response is preferred, 0 when the second; a label may be fractional).
    Logistic regression without an intercept, solved by ``iters`` plain (undamped) Newton steps
    from ``w = 0``: the loss is convex and ``l2`` keeps the Hessian positive definite, which is
    enough on this chapter's pools; nearly separable pairs with a tiny ``l2`` could need a
    damped step. Returns ``w [F]``."""
    x = as_float_array(diffs, "diffs", "[n, F]")
    y = as_float_array(labels, "labels", "[n]")
    if x.ndim != 2 or y.shape != x.shape[:1]:
        raise ValueError(f"diffs must be [n, F] and labels [n], got {x.shape} and {y.shape}")
    check_range(l2, "l2", 0, strict=True)
    eye = jnp.eye(x.shape[1], dtype=x.dtype)

    def newton(w, _):
        p = jax.nn.sigmoid(x @ w)  # P(first preferred) under the model
        grad = x.T @ (p - y) + l2 * w
        hess = (x.T * (p * (1 - p))) @ x + l2 * eye
        return w - jnp.linalg.solve(hess, grad), None

    w, _ = jax.lax.scan(newton, jnp.zeros(x.shape[1], x.dtype), None, length=iters)
    return w
# [/guide]


@jax.jit
def _tilt(proxy, betas, scores):
    ref = jnp.full(proxy.shape[-1], 1.0 / proxy.shape[-1], proxy.dtype)
    policies = jax.vmap(optimal_policy, (None, None, 0))(ref, proxy, betas)
    kl = jax.vmap(exact_kl, (0, None))(policies, ref)
    return jnp.sqrt(jnp.maximum(kl, 0.0)), policies @ scores.T


def tilt_scores(proxy, betas, scores: dict) -> dict[str, np.ndarray]:
    """The KL-regularised optimum against ``proxy [K]``, ``pi_beta ∝ exp(proxy / beta)`` from the
    uniform reference (book eq. 95), for each ``beta`` of ``betas [M]``: its exact ``sqrt_kl``
    and the mean under it of every array of ``scores`` (name -> ``[K]``), each ``[M]``. With
    ``R`` proxies at once, ``proxy [R, K]`` and scores ``[K]`` or ``[R, K]``, every result is
    ``[R, M]`` (one compiled call)."""
    proxy = as_float_array(proxy, "proxy")
    betas = as_float_array(betas, "betas", "[M]")
    check_range(jnp.min(betas), "betas", 0, strict=True)
    if proxy.ndim not in (1, 2):
        raise ValueError(f"proxy must be [K] or [R, K], got shape {proxy.shape}")
    names = list(scores)
    batch = proxy.reshape(-1, proxy.shape[-1])
    values = jnp.stack([jnp.broadcast_to(jnp.asarray(scores[n], proxy.dtype), batch.shape)
                        for n in names], axis=1) if names else jnp.zeros((batch.shape[0], 0,
                                                                           batch.shape[1]))
    sqrt_kl, means = jax.vmap(_tilt, (0, None, 0))(batch, betas, values)  # [R, M], [R, M, S]
    lead = proxy.shape[:-1]
    out = {"sqrt_kl": np.asarray(sqrt_kl, np.float64).reshape(*lead, -1)}
    for i, n in enumerate(names):
        out[n] = np.asarray(means[..., i], np.float64).reshape(*lead, -1)
    return out


def ensemble_reward(member_rewards, aggregate: str = "mean", k: float = 1.0) -> jax.Array:
    """Combine the rewards of ``E`` members, ``member_rewards [E, K]``, into one ``[K]``:
    ``"mean"``, ``"min"`` (worst-case optimisation) or ``"mean_minus_std"`` (``mean - k std``
    over members, uncertainty-weighted optimisation); Coste et al. (2024)."""
    r = as_float_array(member_rewards, "member_rewards", "[E, K]")
    if r.ndim != 2 or r.shape[0] < 2:
        raise ValueError(f"member_rewards must be [E, K] with E >= 2, got {r.shape}")
    check_choice(aggregate, "aggregate", AGGREGATES)
    check_range(k, "k", 0)
    if aggregate == "mean":
        return r.mean(axis=0)
    if aggregate == "min":
        return r.min(axis=0)
    return r.mean(axis=0) - k * r.std(axis=0, ddof=1)


def length_controlled(scores, lengths) -> jax.Array:
    """``scores`` with their least-squares linear dependence on ``lengths`` removed:
    ``s - b (L - mean L)`` with ``b = cov(s, L) / var(L)`` over every element (one slope for
    the whole set, fitted on the responses being ranked). A response is then paid for what its
    score says beyond what its length predicts; the mean score is unchanged. In the spirit of
    length-controlled AlpacaEval (Dubois et al. 2024), which regresses length out of a judge's
    preferences. Shapes: ``scores`` and ``lengths`` alike, ``[...]``."""
    s = as_float_array(scores, "scores")
    length = as_float_array(lengths, "lengths")
    if s.shape != length.shape:
        raise ValueError(f"scores and lengths must have one shape, got {s.shape} and "
                         f"{length.shape}")
    centred = length - length.mean()
    slope = jnp.sum(centred * (s - s.mean())) / jnp.maximum(jnp.sum(centred ** 2), 1e-12)
    return s - slope * centred


# [guide:pg-step]
def pg_step(logits, proxy, ref_logprobs, beta, lr, natural: bool = False) -> jax.Array:
    """One exact policy-gradient ascent step on ``J(pi) = E_pi[r] - beta KL(pi || pi_ref)``
    (book eq. 82; the KL as a penalty in the reward, §15.1, eq. 127) for a tabular policy over a pool:
    ``logits [K]`` of ``pi``, ``proxy [K]`` the reward, ``ref_logprobs [K]`` of ``pi_ref``.
    With the KL-shaped reward ``r' = proxy - beta (log pi - log pi_ref)`` and its advantage
    ``A = r' - E_pi[r']``, the gradient is ``dJ/dlogits = pi * A``: the expectation of
    REINFORCE's ``A grad log pi`` over the whole pool, so the step has no sampling noise.
    ``natural=False`` steps by ``lr K pi A`` (the plain gradient, scaled by ``K`` so that its
    first step from the uniform policy equals the natural one); ``natural=True`` by ``lr A``
    (the natural gradient of a softmax, Kakade 2001). Returns the new logits ``[K]``.

    How: log-softmax the logits; the shaped reward; subtract its mean under pi; one update."""
    logits = as_float_array(logits, "logits", "[K]")
    proxy = as_float_array(proxy, "proxy", "[K]")
    ref_logprobs = as_float_array(ref_logprobs, "ref_logprobs", "[K]")
    # BEGIN SOLUTION
    logp = jax.nn.log_softmax(logits)
    pi = jnp.exp(logp)
    shaped = proxy - beta * (logp - ref_logprobs)
    advantage = shaped - jnp.sum(pi * shaped)
    if natural:
        return logits + lr * advantage
    return logits + lr * logits.shape[0] * pi * advantage
    # END SOLUTION
# [/guide]


def pg_curves(pool: Pool, betas, steps: int, lr: float, natural: bool = False,
              every: int = 1) -> dict[str, np.ndarray]:
    """Run :func:`pg_step` from the uniform policy for ``steps`` steps on ``pool.proxy``, once
    per KL coefficient of ``betas [B]`` (vmapped, one ``lax.scan``), and record every
    ``every`` steps (and at step 0) the exact ``sqrt_kl`` to the uniform reference and the
    policy's mean ``proxy``, ``gold`` and ``length``: each ``[B, steps // every + 1]``, with
    ``step [steps // every + 1]``."""
    betas = as_float_array(betas, "betas", "[B]")
    check_range(jnp.min(betas), "betas", 0)
    if not isinstance(steps, (int, np.integer)) or steps < 1 or not isinstance(
            every, (int, np.integer)) or every < 1 or steps % every:
        raise ValueError(f"steps and every must be integers >= 1 with every dividing steps, "
                         f"got steps={steps!r}, every={every!r}")
    check_range(lr, "lr", 0, strict=True)
    K = len(pool.proxy)
    proxy = jnp.asarray(pool.proxy, jnp.float32)
    ref_logprobs = jnp.full(K, -np.log(K), jnp.float32)
    measured = {name: jnp.asarray(getattr(pool, name), jnp.float32)
                for name in ("proxy", "gold", "length")}

    def measure(logits):
        pi = jax.nn.softmax(logits)
        return {"sqrt_kl": jnp.sqrt(jnp.maximum(exact_kl(pi, jnp.exp(ref_logprobs)), 0.0)),
                **{name: pi @ v for name, v in measured.items()}}

    def run(beta):
        def chunk(logits, _):
            logits = jax.lax.fori_loop(
                0, every, lambda _, lg: pg_step(lg, proxy, ref_logprobs, beta, lr, natural),
                logits)
            return logits, measure(logits)

        start = jnp.zeros(K, jnp.float32)
        _, trace = jax.lax.scan(chunk, start, None, length=steps // every)
        return jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), measure(start), trace)

    out = jax.jit(jax.vmap(run))(betas)
    out = {k: np.asarray(v, np.float64) for k, v in out.items()}
    out["step"] = np.arange(0, steps + 1, every)
    return out
