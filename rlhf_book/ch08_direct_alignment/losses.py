"""Chapter 8: direct alignment algorithms -- DPO and its family, as pure functions.

Book chapter 8 ("Direct alignment algorithms"). DPO (Rafailov et al. 2023) fits the policy to
preference pairs directly: the KL-regularised RLHF objective (eq. 78) has the closed-form
optimum ``pi*(y|x) = pi_ref(y|x) exp(r(x, y) / beta) / Z(x)`` (eq. 95), so the reward is
``beta log pi*/pi_ref + beta log Z`` (eq. 100); in the Bradley-Terry likelihood of a pair the
``log Z`` cancels (eqs. 101, 102, 103, 104), which leaves a loss on log-probabilities alone
(eqs. 79, 105).

Every loss here takes **sequence** log-probabilities ``[N]``, one per pair: the sum of the
completion's token log-probabilities (prompt and padding excluded; :func:`sequence_log_probs`
computes it from token log-probs and a mask), or their per-token average for the
length-normalised methods (SimPO, ORPO). ``N`` is the number of pairs. Every loss returns the
**per-pair** losses ``[N]``, as TRL and the book's code compute them; the caller takes the
mean (or a weighted mean). The reference model's log-probs are constants: pass them from a
frozen model (the losses stop their gradient too).

Notation: ``h = (pc - pr) - (rc - rr)``, the policy's log-ratio of chosen to rejected minus the
reference's, with ``pc, pr`` the policy's and ``rc, rr`` the reference's sequence log-probs of
the chosen and rejected completions (the book's code calls ``h`` ``logits``, §8.3).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlhf_book.lm.checks import as_float_array, as_float_vectors, as_like, check_range, check_rank
from rlhf_book.lm.ops import masked_mean, masked_sum

__all__ = [
    "log_partition", "optimal_policy", "regularized_objective", "reward_from_policy",
    "population_dpo_loss", "sequence_log_probs", "dpo_logits", "implicit_reward", "dpo_loss",
    "dpo_gradient_weight", "robust_dpo_loss", "ipo_loss", "hinge_loss", "simpo_loss",
    "orpo_odds_ratio_loss", "kto_loss",
]

_PAIR_NAMES = ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps",
               "ref_rejected_logps")
_AVERAGE_NAMES = ("avg_chosen_logps", "avg_rejected_logps")


# ----------------------------------------------------------------------------------------------
# Sequence log-probabilities: log pi(y|x) is the sum over the completion's tokens (book §8.3)


# [guide:sequence-log-probs]
def sequence_log_probs(token_log_probs, mask, average: bool = False) -> jax.Array:
    """``log pi(y|x) = sum_t log pi(y_t | x, y_<t)`` over the completion tokens (``mask`` 1),
    or its per-token mean with ``average=True`` (SimPO, ORPO). Shapes: ``token_log_probs [N, T]``,
    ``mask [N, T]``; returns ``[N]``. A row with no completion token gives 0."""
    token_log_probs = as_float_array(token_log_probs, "token_log_probs")
    check_rank(token_log_probs, 2, "token_log_probs", "[N, T]")
    mask = as_like(mask, "mask", token_log_probs, "token_log_probs")
    if average:
        return masked_mean(token_log_probs, mask, axis=1)
    return masked_sum(token_log_probs, mask, axis=1)
# [/guide]


# ----------------------------------------------------------------------------------------------
# §8.1.2 The derivation, on a finite response set: responses y = 0 .. K-1 of one prompt, with
# probabilities under the reference ``ref_probs [K]`` and rewards ``rewards [K]``.


# [guide:dpo-derivation]
def log_partition(ref_probs, rewards, beta) -> jax.Array:
    """``log Z = log sum_y pi_ref(y) exp(r(y) / beta)`` (book eq. 87), by ``logsumexp``. A
    scalar; ``ref_probs [K]`` and ``rewards [K]``."""
    ref_probs, rewards = as_float_vectors((ref_probs, "ref_probs"), (rewards, "rewards"))
    check_range(beta, "beta", 0, strict=True)
    return jax.nn.logsumexp(jnp.log(ref_probs) + rewards / beta)


def optimal_policy(ref_probs, rewards, beta) -> jax.Array:
    """The maximiser of the KL-regularised objective, ``pi*(y) = pi_ref(y) exp(r(y) / beta) /
    Z`` (book eq. 95), ``[K]``: the reference tilted towards reward, more sharply the smaller
    ``beta``. ``ref_probs [K]`` (a distribution), ``rewards [K]``, ``beta > 0``. A reward
    shift is absorbed by ``Z``. The result stays exact for a tiny ``beta`` (0.005 with rewards
    of order 1, where ``exp(r / beta)`` overflows float32: all the mass on the best response)
    and tends to ``pi_ref`` as ``beta`` grows.

    How: in log space, ``log pi_ref + r / beta - log Z`` with ``log Z`` a ``logsumexp``
    (the module's ``log_partition``), then ``exp``.
    """
    # BEGIN SOLUTION
    log_z = log_partition(ref_probs, rewards, beta)
    return jnp.exp(jnp.log(jnp.asarray(ref_probs)) + jnp.asarray(rewards) / beta - log_z)
    # END SOLUTION


def regularized_objective(probs, ref_probs, rewards, beta) -> jax.Array:
    """``J(pi) = E_pi[r] - beta KL(pi || pi_ref)`` (book eq. 78, written for one prompt as eq.
    82) for a distribution ``probs [K]``. Its maximum is ``beta log Z``, reached only at
    :func:`optimal_policy`: ``J(pi) = beta log Z - beta KL(pi || pi*)`` (eq. 94, the end of
    the derivation of eqs. 88, 89, 90, 91, 92, 93)."""
    probs, ref_probs, rewards = as_float_vectors((probs, "probs"), (ref_probs, "ref_probs"),
                                                 (rewards, "rewards"))
    check_range(beta, "beta", 0)
    # 0 log 0 = 0: a response the policy never gives contributes nothing to the KL.
    safe = jnp.where(probs > 0, probs, 1.0)
    log_ratio = jnp.where(probs > 0, jnp.log(safe) - jnp.log(ref_probs), 0.0)
    return jnp.sum(probs * rewards) - beta * jnp.sum(probs * log_ratio)


def reward_from_policy(policy_probs, ref_probs, beta, log_z=0.0) -> jax.Array:
    """Invert eq. 95: ``r(y) = beta log pi*(y) / pi_ref(y) + beta log Z`` (book eq. 100),
    ``[K]``. Without ``log_z`` this is DPO's implicit reward (eq. 80): the true reward shifted
    by ``-beta log Z``, the same for every response of the prompt."""
    policy_probs, ref_probs = as_float_vectors((policy_probs, "policy_probs"), (ref_probs, "ref_probs"))
    check_range(beta, "beta", 0), check_range(log_z, "log_z")
    log_ratio = jnp.log(policy_probs) - jnp.log(ref_probs)
    return beta * log_ratio + beta * log_z
# [/guide]


# [guide:population-dpo]
def population_dpo_loss(policy_logits, ref_probs, rewards, beta) -> jax.Array:
    """The DPO loss averaged over **every** ordered pair of a finite response set, each
    labelled by the Bradley-Terry probability of the true reward, ``p(i > j) = sigmoid(r_i -
    r_j)`` (book eq. 96): the loss of infinite, fully covering preference data (eq. 105).
    ``policy_logits [K]`` define ``pi = softmax(policy_logits)``; ``ref_probs [K]``,
    ``rewards [K]``, ``beta > 0``. Returns a scalar: the mean over the ``K (K - 1)`` ordered
    pairs ``(i, j)``, ``i != j``, of ``-p(i > j) log sigmoid(beta h_ij)``, with ``h_ij`` the
    implicit reward margin of ``i`` over ``j``. Its minimiser is ``pi*`` of eq. 95, which is
    what DPO claims.

    How: ``[K, K]`` arrays at once: the implicit rewards ``beta (log pi - log pi_ref)``, their
    pairwise differences, ``sigmoid`` of the reward differences, ``log_sigmoid``, and a sum off
    the diagonal divided by ``K (K - 1)``.
    """
    policy_logits, ref_probs, rewards = as_float_vectors(
        (policy_logits, "policy_logits"), (ref_probs, "ref_probs"), (rewards, "rewards"))
    check_range(beta, "beta", 0, strict=True)
    # BEGIN SOLUTION
    log_pi = jax.nn.log_softmax(policy_logits)
    implicit = beta * (log_pi - jnp.log(ref_probs))  # [K]
    margin = implicit[:, None] - implicit[None, :]  # [K, K]: beta h of the pair (i, j)
    p_true = jax.nn.sigmoid(rewards[:, None] - rewards[None, :])
    K = rewards.shape[0]
    off_diagonal = 1.0 - jnp.eye(K)
    # pair (i, j) with i preferred w.p. p_true[i, j]: -log sigmoid(margin[i, j]) in that case
    losses = -p_true * jax.nn.log_sigmoid(margin)
    return jnp.sum(losses * off_diagonal) / (K * (K - 1))
    # END SOLUTION
# [/guide]


# ----------------------------------------------------------------------------------------------
# §8.1 DPO: the loss (eq. 79), the implicit reward (eq. 80), the gradient (eqs. 81, 108)


# [guide:dpo-loss]
def dpo_logits(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
               ref_rejected_logps) -> jax.Array:
    """``h = (pc - pr) - (rc - rr)`` ``[N]``: how much more the policy prefers the chosen
    completion than the reference does (the book's code calls it ``logits``; book §8.3). The
    reference terms are constants (``stop_gradient``)."""
    logps = (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    pc, pr, rc, rr = as_float_vectors(*zip(logps, _PAIR_NAMES))
    return (pc - pr) - jax.lax.stop_gradient(rc - rr)


def implicit_reward(policy_logps, ref_logps, beta=0.1) -> jax.Array:
    """DPO's implicit reward ``beta log pi(y|x) / pi_ref(y|x)`` ``[N]`` (book eq. 80). It equals
    the reward of eq. 100 up to ``beta log Z(x)``, a shift per prompt that no pairwise comparison
    can see; logged as ``chosen_rewards`` and ``rejected_rewards`` (book §8.3)."""
    policy_logps, ref_logps = as_float_vectors((policy_logps, "policy_logps"), (ref_logps, "ref_logps"))
    check_range(beta, "beta", 0, strict=True)
    return beta * (policy_logps - jax.lax.stop_gradient(ref_logps))


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             beta=0.1, label_smoothing=0.0) -> jax.Array:
    """The DPO loss of each pair, ``-log sigmoid(beta h)`` ``[N]`` (book eq. 79, the same as eq.
    105; Rafailov et al. 2023); the loss of a batch is their mean.

    ``h = (log pi(y_c) - log pi_ref(y_c)) - (log pi(y_r) - log pi_ref(y_r))`` is the implicit
    reward margin of the pair (the module's ``dpo_logits``). ``label_smoothing = eps > 0`` is
    conservative DPO (cDPO; TRL's ``sigmoid`` loss): each label is taken to be flipped with
    probability ``eps``, so the loss is the cross-entropy against a soft target, ``-(1 - eps) log
    sigmoid(beta h) - eps log sigmoid(-beta h)``, whose optimum is a finite ``h* = log((1 -
    eps) / eps) / beta`` instead of ``h -> infinity``.

    Shapes: four ``[N]`` sequence log-probs; returns ``[N]``. At ``pi = pi_ref`` every ``h`` is
    0 and every loss is ``log 2``; finite for any ``h`` (``h = +-1e4`` gives losses 0 and
    ``1e4`` at ``beta = 1``).

    How: ``jax.nn.log_sigmoid``, never ``log(sigmoid(.))``, which is ``log 0`` for a large
    negative argument.
    """
    check_range(beta, "beta", 0, strict=True)
    check_range(label_smoothing, "label_smoothing", 0, 0.5)
    # BEGIN SOLUTION
    h = dpo_logits(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                   ref_rejected_logps)
    return (-(1.0 - label_smoothing) * jax.nn.log_sigmoid(beta * h)
            - label_smoothing * jax.nn.log_sigmoid(-beta * h))
    # END SOLUTION
# [/guide]


# [guide:dpo-gradient-weight]
def dpo_gradient_weight(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                        ref_rejected_logps, beta=0.1) -> jax.Array:
    """The weight ``w = sigmoid(-beta h)`` ``[N]`` of each pair in DPO's gradient (book eqs. 81,
    108): ``grad L = -beta E[w (grad log pi(y_c) - grad log pi(y_r))]``, with ``h`` the implicit
    reward margin of :func:`dpo_loss` and four ``[N]`` sequence log-probs as its inputs. ``w``
    is near 1 when the implicit reward ranks the pair the wrong way round and near 0 when it
    already ranks it right by a wide margin; ``1/2`` at ``pi = pi_ref``.
    """
    check_range(beta, "beta", 0, strict=True)
    # BEGIN SOLUTION
    h = dpo_logits(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                   ref_rejected_logps)
    return jax.nn.sigmoid(-beta * h)
    # END SOLUTION
# [/guide]


# ----------------------------------------------------------------------------------------------
# §8.2 The family (the book names them; the formulas are the papers' and TRL's)


# [guide:dpo-family]
def robust_dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                    ref_rejected_logps, beta=0.1, label_smoothing=0.1) -> jax.Array:
    """Robust DPO (Chowdhury et al. 2024; TRL's ``robust``): the per-pair loss
    ``[-(1 - eps) log sigmoid(beta h) + eps log sigmoid(-beta h)] / (1 - 2 eps)`` ``[N]``,
    unbiased under labels flipped with probability ``eps < 1/2``. Unlike cDPO
    (:func:`dpo_loss` with ``label_smoothing``) its expectation over the noisy labels equals the
    clean DPO loss. Four ``[N]`` log-probs; returns ``[N]``."""
    check_range(beta, "beta", 0, strict=True)
    check_range(label_smoothing, "label_smoothing", 0, 0.5 - 1e-6)
    h = dpo_logits(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                   ref_rejected_logps)
    return (-(1.0 - label_smoothing) * jax.nn.log_sigmoid(beta * h)
            + label_smoothing * jax.nn.log_sigmoid(-beta * h)) / (1.0 - 2.0 * label_smoothing)


def ipo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             beta=0.1) -> jax.Array:
    """IPO (Azar et al. 2023): ``(h - 1 / (2 beta))^2`` per pair ``[N]``, with ``h`` the implicit
    reward margin of :func:`dpo_loss` on four ``[N]`` sequence log-probs, taken as given (sums,
    as in the paper; TRL length-averages them first). A squared loss pulls ``h`` to the finite
    target ``1 / (2 beta)`` even when every label agrees, where DPO's ``h`` grows without
    bound. IPO is the PsiPO family's choice ``Psi = identity`` (the book's §8.2 ``Psi(q) =
    log(q / (1 - q))`` is the choice that gives back DPO; see the guide's errata).
    """
    check_range(beta, "beta", 0, strict=True)
    # BEGIN SOLUTION
    h = dpo_logits(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                   ref_rejected_logps)
    return jnp.square(h - 1.0 / (2.0 * beta))
    # END SOLUTION


def hinge_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
               beta=0.1) -> jax.Array:
    """SLiC's hinge (Zhao et al. 2023; TRL's ``hinge``): ``relu(1 - beta h)`` per pair ``[N]``,
    zero once the margin ``beta h`` reaches 1."""
    check_range(beta, "beta", 0, strict=True)
    h = dpo_logits(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                   ref_rejected_logps)
    return jax.nn.relu(1.0 - beta * h)
# [/guide]


# [guide:simpo-orpo]
def simpo_loss(avg_chosen_logps, avg_rejected_logps, beta=2.0, gamma=1.0) -> jax.Array:
    """SimPO (Meng et al. 2024): ``-log sigmoid(beta (ac - ar) - gamma)`` per pair ``[N]``, on
    the **per-token average** log-probs ``ac, ar`` ``[N]`` (``sequence_log_probs(...,
    average=True)``). No reference model, and a target margin ``gamma`` (the book mentions only
    the length normalisation, §8.2). Finite for any margin.

    How: ``jax.nn.log_sigmoid``, never ``log(sigmoid(.))``.
    """
    ac, ar = as_float_vectors(*zip((avg_chosen_logps, avg_rejected_logps), _AVERAGE_NAMES))
    check_range(beta, "beta", 0, strict=True), check_range(gamma, "gamma")
    # BEGIN SOLUTION
    return -jax.nn.log_sigmoid(beta * (ac - ar) - gamma)
    # END SOLUTION


def _log1mexp(x):
    """``log(1 - exp(x))`` for ``x < 0``, accurate on both sides of ``-log 2`` (Maechler 2012)."""
    return jnp.where(x < -jnp.log(2.0), jnp.log1p(-jnp.exp(x)), jnp.log(-jnp.expm1(x)))


def orpo_odds_ratio_loss(avg_chosen_logps, avg_rejected_logps) -> jax.Array:
    """ORPO's odds-ratio term (Hong et al. 2024; book §8.2): ``-log sigmoid(log odds(y_c) - log
    odds(y_r))`` per pair ``[N]``, with ``odds(y) = P / (1 - P)`` and ``P = exp(average token
    log-prob)`` from ``avg_chosen_logps, avg_rejected_logps [N]``. ORPO adds ``lambda`` times
    its mean to the chosen completion's NLL, with no reference model. The averages must be
    ``< 0`` (``P < 1``; the lines above keep them at most ``-1e-6``). Accurate, with a finite
    gradient, for ``P`` within ``1e-6`` of 1: averages ``-1e-6`` and ``-3e-6`` (odds ratio about
    3) give ``log(4/3)``.

    How: ``log odds = a - log(1 - e^a)``, with ``log(1 - e^a)`` computed as ``log1mexp(a)``
    (the module's ``_log1mexp``, ``log(-expm1(a))`` near 0) so that ``P`` near 1 keeps its
    digits: in float32 ``1 - exp(a)`` keeps one.
    """
    ac, ar = as_float_vectors(*zip((avg_chosen_logps, avg_rejected_logps), _AVERAGE_NAMES))
    # P = 1 exactly has infinite odds: keep the log-prob a hair below 0.
    ac, ar = jnp.minimum(ac, -1e-6), jnp.minimum(ar, -1e-6)
    # BEGIN SOLUTION
    log_odds = (ac - _log1mexp(ac)) - (ar - _log1mexp(ar))
    return -jax.nn.log_sigmoid(log_odds)
    # END SOLUTION
# [/guide]


def kto_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
             kl_reference_point, beta=0.1, desirable_weight=1.0,
             undesirable_weight=1.0) -> jax.Array:
    """KTO (Ethayarajh et al. 2024; TRL's ``KTOTrainer``): unpaired good and bad completions
    scored against a reference point ``z0``, an estimate of ``KL(pi || pi_ref)`` (detached and
    clamped at 0). With ``r = log pi / pi_ref``, a desirable completion costs
    ``lambda_D (1 - sigmoid(beta (r - z0)))`` and an undesirable one
    ``lambda_U (1 - sigmoid(beta (z0 - r)))``. The book does not cover KTO.

    Shapes: ``policy_chosen_logps``/``ref_chosen_logps`` ``[N_D]`` (desirable),
    ``policy_rejected_logps``/``ref_rejected_logps`` ``[N_U]`` (undesirable; the two counts
    may differ), ``kl_reference_point`` a scalar. Returns the per-completion losses
    ``[N_D + N_U]``, the desirable ones first."""
    pc, rc = as_float_vectors(*zip((policy_chosen_logps, ref_chosen_logps), _PAIR_NAMES[::2]))
    pr, rr = as_float_vectors(*zip((policy_rejected_logps, ref_rejected_logps), _PAIR_NAMES[1::2]))
    z0 = as_float_array(kl_reference_point, "kl_reference_point", "[]")
    z0 = jnp.maximum(jax.lax.stop_gradient(z0), 0.0)
    check_range(beta, "beta", 0, strict=True)
    check_range(desirable_weight, "desirable_weight", 0), check_range(undesirable_weight, "undesirable_weight", 0)
    chosen_ratio = pc - jax.lax.stop_gradient(rc)
    rejected_ratio = pr - jax.lax.stop_gradient(rr)
    chosen = desirable_weight * (1.0 - jax.nn.sigmoid(beta * (chosen_ratio - z0)))
    rejected = undesirable_weight * (1.0 - jax.nn.sigmoid(beta * (z0 - rejected_ratio)))
    return jnp.concatenate([chosen, rejected])
