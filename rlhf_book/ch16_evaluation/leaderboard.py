"""Leaderboards from pairwise battles: Elo and Bradley-Terry (book §16.3, human evaluation
reported as Elo; chapter 5's Bradley-Terry model, eq. 13).

A battle shows two models the same prompt and records which answer a judge prefers. Elo turns
battles into ratings one at a time, each update moving the two ratings by ``K`` times the
surprise, so the final ratings depend on the *order* of the battles; the Bradley-Terry maximum
likelihood fit (what Chatbot Arena reports since 2023; Chiang et al. 2024) uses all battles at
once and does not.
On the Elo scale a gap of 400 points means odds of 10 to 1: ``P(A beats B) = 1 / (1 +
10^((R_B - R_A) / 400))``, which is Bradley-Terry's ``sigma(r_A - r_B)`` with ``r = R ln(10) /
400``.

Shapes: ``M`` battles, ``P`` players. ``pairs [M, 2]`` holds the two players' indices,
``outcomes [M]`` the first player's score (1 win, 0 loss, 1/2 a tie).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_book.ch14_overoptimization.proxies import fit_linear_rm
from rlhf_book.lm.checks import check_range, is_traced

__all__ = ["ELO_SCALE", "elo_expected", "elo_update", "elo_ratings", "bt_ratings",
           "bootstrap_ratings"]

ELO_SCALE = 400.0 / math.log(10.0)  # Elo points per unit of Bradley-Terry reward


def elo_expected(r_a, r_b) -> jax.Array:
    """The expected score of A against B, ``1 / (1 + 10^((R_B - R_A) / 400))``: 0.7597 for
    1200 against 1000."""
    return jax.nn.sigmoid((jnp.asarray(r_a, jnp.float32) - r_b) / ELO_SCALE)


# [guide:elo]
def elo_update(r_a, r_b, s_a, k: float = 32.0) -> tuple[jax.Array, jax.Array]:
    """One Elo update after a battle (book §16.3): with ``E_A = 1 / (1 + 10^((R_B - R_A) /
    400))`` the expected score of A,

        R_A' = R_A + K (S_A - E_A),     R_B' = R_B - K (S_A - E_A),

    ``S_A`` A's score (1 win, 0 loss, 1/2 a tie). The points A gains are the points B loses.
    1200 beating 1000 with ``K = 32``: ``(1207.69, 992.31)``. ``r_a``, ``r_b``, ``s_a``:
    scalars or arrays ``[...]`` of one shape (many battles at once, elementwise); returns two
    arrays ``[...]``.

    How: :func:`elo_expected`, then the two lines.
    """
    check_range(k, "k", 0, strict=True)
    # BEGIN SOLUTION
    change = k * (jnp.asarray(s_a, jnp.float32) - elo_expected(r_a, r_b))
    return r_a + change, r_b - change
    # END SOLUTION
# [/guide]


def _check_battles(pairs, outcomes, n_players: int):
    if isinstance(n_players, bool) or not isinstance(n_players, int) or n_players < 2:
        raise ValueError(f"n_players must be an int >= 2, got {n_players!r}")
    if is_traced(pairs) or is_traced(outcomes):  # under jit or vmap: shapes only
        return pairs, outcomes
    pairs = np.asarray(pairs)
    outcomes = np.asarray(outcomes, np.float32)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or not np.issubdtype(pairs.dtype, np.integer):
        raise ValueError(f"pairs must be an int array [M, 2], got {pairs.dtype} {pairs.shape}")
    if outcomes.shape != pairs.shape[:1]:
        raise ValueError(f"outcomes must be [M] = {pairs.shape[:1]}, got {outcomes.shape}")
    if pairs.size and (pairs.min() < 0 or pairs.max() >= n_players):
        raise ValueError(f"pairs must hold player indices in [0, {n_players}), got "
                         f"{pairs.min()}..{pairs.max()}")
    if np.any((outcomes < 0) | (outcomes > 1)):
        raise ValueError("outcomes must lie in [0, 1] (1 a win of the first player)")
    return jnp.asarray(pairs), jnp.asarray(outcomes)


# [guide:elo-ratings]
def elo_ratings(pairs, outcomes, n_players: int, k: float = 32.0,
                initial: float = 1000.0) -> jax.Array:
    """Elo ratings after playing the battles in order (book §16.3): every player starts at
    ``initial`` and each battle applies :func:`elo_update` to its two players. Reorder the
    battles and the ratings change -- recent battles weigh more. ``pairs [M, 2]`` (int),
    ``outcomes [M]`` -> ``[P]``. Jits and vmaps (over orders, or bootstrap resamples) with
    ``n_players`` static.

    How: ``jax.lax.scan`` over the battles with the ratings ``[P]`` as the carry; read the two
    ratings, update, write them back with ``.at[i].set``.
    """
    check_range(k, "k", 0, strict=True)
    pairs, outcomes = _check_battles(pairs, outcomes, n_players)
    # BEGIN SOLUTION
    def battle(ratings, game):
        (a, b), s = game
        new_a, new_b = elo_update(ratings[a], ratings[b], s, k)
        return ratings.at[a].set(new_a).at[b].set(new_b), None

    start = jnp.full(n_players, initial, jnp.float32)
    ratings, _ = jax.lax.scan(battle, start, (pairs, outcomes))
    return ratings
    # END SOLUTION
# [/guide]


# [guide:bt-ratings]
def bt_ratings(pairs, outcomes, n_players: int, initial: float = 1000.0,
               l2: float = 1e-3) -> jax.Array:
    """Bradley-Terry ratings on the Elo scale (book eq. 13; chapter 5): the strengths ``r`` that
    maximise ``sum log sigma(r_a - r_b)`` over the battles (a tie counts half to each side),
    fitted by Newton's method as chapter 14's linear reward model on one-hot features, then
    shown as ``initial + 400 / ln 10 * (r - mean r)``. Order-free: any permutation of the
    battles gives the same ratings. ``l2`` keeps a player who never lost finite. ``-> [P]``."""
    pairs, outcomes = _check_battles(pairs, outcomes, n_players)
    eye = jnp.eye(n_players, dtype=jnp.float32)
    strengths = fit_linear_rm(eye[pairs[:, 0]] - eye[pairs[:, 1]], outcomes, l2=l2)
    return initial + ELO_SCALE * (strengths - strengths.mean())
# [/guide]


def bootstrap_ratings(key, pairs, outcomes, n_players: int, rate=bt_ratings,
                      n_boot: int = 200) -> np.ndarray:
    """Ratings recomputed on ``n_boot`` resamples of the battles (drawn with replacement, so in
    a random order): ``[n_boot, P]``, whose percentiles are the leaderboard's intervals (Chatbot
    Arena's bootstrap). ``rate`` is :func:`bt_ratings` or :func:`elo_ratings` (or any function
    of ``(pairs, outcomes, n_players)`` that vmaps); one compiled, vmapped call."""
    pairs, outcomes = _check_battles(pairs, outcomes, n_players)
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive int, got {n_boot!r}")
    m = pairs.shape[0]
    idx = jax.random.randint(key, (n_boot, m), 0, m)
    resampled = jax.jit(jax.vmap(lambda i: rate(pairs[i], outcomes[i], n_players)))
    return np.asarray(resampled(idx))
