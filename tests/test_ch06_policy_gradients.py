"""Chapter 6 (policy gradients): advantages, surrogate losses, aggregation, GAE, where the KL
goes, the DAPO helpers -- and the exercises' grading checks (chapter 15's KL estimators have
their own file; they are also used here inside GRPO's loss).

Expected values come from the book's worked examples, plain float64 Python loops written from
the equations (the graders' oracles in ``rlhf_book.textbook.checks``, and a few more here), an independent library (``rlax``/``distrax``, skipped when not installed), or
math: invariants (group advantages sum to zero, RLOO's baseline leaves the sample out, eq. 60,
eq. 73's one-step gradient), ``jax.grad`` against central finite differences in float64, and
Monte-Carlo means accepted within a few standard errors. The training loop
(``ch06_policy_gradients.loop``) is tested elsewhere.
"""

import math
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf_book import ch15_regularization as ch15
from rlhf_book.ch06_policy_gradients import losses as L
from rlhf_book.ch06_policy_gradients import loop as ch06_loop
from rlhf_book.lm import gpt, kl
from rlhf_book.lm.ops import log_probs_from_logits
from rlhf_book.textbook import catalog, stubs
from rlhf_book.textbook.checks import Mismatch
from rlhf_book.textbook.checks import ch06_policy_gradients as checks
from rlhf_book.textbook.checks.ch06_policy_gradients import (aggregate_loop, gae_loop, grpo_loop,
                                                             rloo_loop)

MODES = ("per_sequence", "per_token", "fixed_length")


def f32(x):
    return jnp.asarray(np.asarray(x, np.float32))


def central_difference(f, x, eps=1e-6):
    """d f / d x of a scalar function of a float64 array, by central differences."""
    x = np.asarray(x, np.float64)
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[i] = eps
        grad[i] = (float(f(x + step)) - float(f(x - step))) / (2 * eps)
    return grad


# ----------------------------------------------------------------------------------------------
# Plain float64 loops, written from the book's equations








def ppo_token_loop(logp, old, adv, low=0.2, high=0.2):
    """``-min(rho A, clip(rho, 1 - low, 1 + high) A)`` per token (eq. 52, negated)."""
    logp, old, adv = (np.asarray(x, np.float64) for x in (logp, old, adv))
    out = np.zeros(logp.shape)
    for i in np.ndindex(logp.shape):
        rho = math.exp(logp[i] - old[i])
        out[i] = -min(rho * adv[i], min(max(rho, 1 - low), 1 + high) * adv[i])
    return out


def k3_loop(logp, ref):
    logp, ref = np.asarray(logp, np.float64), np.asarray(ref, np.float64)
    return np.exp(ref - logp) - (ref - logp) - 1.0




def gae_nstep_loop(rewards, values, gamma, lam):
    """Eq. 75 and the first line of eq. 77 on one full episode: the lambda-weighted mixture
    ``(1 - lam) sum_n lam^(n-1) A^(n)`` of n-step advantages, where every ``n`` past the end
    of the episode gives the full return (so their weights add up to ``lam^(m-1)``)."""
    r, v = np.asarray(rewards, np.float64), list(np.asarray(values, np.float64)) + [0.0]
    T = len(r)
    out = np.zeros(T)
    for t in range(T):
        m = T - t  # steps left, this one included

        def n_step(n):
            return sum(gamma ** l * r[t + l] for l in range(n)) + gamma ** n * v[t + n] - v[t]

        out[t] = sum((1 - lam) * lam ** (n - 1) * n_step(n) for n in range(1, m)) \
            + lam ** (m - 1) * n_step(m)
    return out


def gae_done_loop(rewards, values, done, gamma, lam):
    """The book's the book's GAE code: one packed row, episodes separated by ``done`` (1 at the last
    token of an episode)."""
    T = len(rewards)
    out, next_v, gae = np.zeros(T), 0.0, 0.0
    for t in reversed(range(T)):
        not_done = 1.0 - done[t]
        delta = rewards[t] + gamma * not_done * next_v - values[t]
        gae = delta + gamma * lam * not_done * gae
        out[t] = gae
        next_v = values[t]
    return out


def random_batch(seed, N=6, T=7, spread=0.3):
    """Log-probs, advantages and a right-padded mask with one empty row (float64)."""
    rng = np.random.default_rng(seed)
    mask = (np.arange(T)[None] < rng.integers(1, T + 1, N)[:, None]).astype(np.float64)
    mask[1] = 0.0
    old = -rng.uniform(0.1, 3.0, (N, T))
    logp = old + spread * rng.standard_normal((N, T))
    # stay off the kinks of the clip at 1 +- 0.2, where the gradient is ambiguous
    ratio = np.exp(logp - old)
    for edge in (0.8, 1.2):
        logp = np.where(np.abs(ratio - edge) < 2e-3, logp + 5e-3, logp)
    return {"logp": logp, "old": old, "ref": old + 0.2 * rng.standard_normal((N, T)),
            "adv": rng.standard_normal(N), "adv_t": rng.standard_normal((N, T)), "mask": mask,
            "rng": rng}


# ----------------------------------------------------------------------------------------------
# §6.2.2 loss aggregation: the book's example and its gradient demo


def _w1():
    """The book's two sequences, padded to a width of 12 (> L_max = 10)."""
    losses = np.zeros((2, 12))
    losses[0, :5] = [1, 1, 1, 1, 10]
    losses[1, :10] = [1] * 9 + [10]
    mask = np.zeros((2, 12))
    mask[0, :5] = 1
    mask[1, :10] = 1
    return losses, mask


@pytest.mark.parametrize("mode, value, short, long", [
    ("per_sequence", 2.35, 0.1, 0.05),          # (2.8 + 1.9) / 2; weights 1/(2*5), 1/(2*10)
    ("per_token", 2.2, 1 / 15, 1 / 15),         # 33 / 15
    ("fixed_length", 1.65, 0.05, 0.05),         # (1.4 + 1.9) / 2 with L_max = 10
])
def test_aggregation_reproduces_the_books_w1(mode, value, short, long):
    losses, mask = _w1()
    garbage = np.where(mask > 0, losses, 1e4)
    kwargs = {"max_length": 10} if mode == "fixed_length" else {}
    assert float(L.aggregate_loss(f32(garbage), f32(mask), mode, **kwargs)) == \
        pytest.approx(value, abs=1e-6)
    assert aggregate_loop(losses, mask, mode, 10) == pytest.approx(value, abs=1e-12)
    grad = np.asarray(jax.grad(lambda x: L.aggregate_loss(x, f32(mask), mode, **kwargs))(
        f32(garbage)))
    np.testing.assert_allclose(grad, np.where(mask > 0, [[short], [long]], 0.0), atol=1e-7)


def test_the_books_gradient_demo_w2():
    """Book §6.2.2.1's script: ratio = 1, advantages 2, 4- and 7-token completions, L_max 7."""
    mask = f32([[1, 1, 1, 1, 0, 0, 0], [1] * 7])
    ratio, advs = f32(np.ones((2, 7))), f32(np.full((2, 7), 2.0))
    per_row = [float(L.aggregate_loss(ratio[i:i + 1] * advs[i:i + 1], mask[i:i + 1]))
               for i in range(2)]
    fixed = [float(L.aggregate_loss(ratio[i:i + 1] * advs[i:i + 1], mask[i:i + 1],
                                    "fixed_length", 7)) for i in range(2)]
    np.testing.assert_allclose(per_row, [2.0, 2.0], atol=1e-6)          # masked_mean
    np.testing.assert_allclose(fixed, [1.1429, 2.0], atol=1e-4)         # masked_sum / 7
    assert float(L.aggregate_loss(ratio, mask, "per_token")) == pytest.approx(1.0)

    def grad(mode, with_advs=True, **kwargs):
        def fn(r):
            return L.aggregate_loss(r * advs if with_advs else r, mask, mode, **kwargs)

        return np.asarray(jax.grad(fn)(ratio))

    expect = lambda a, b: np.asarray(mask) * np.array([[a], [b]])  # noqa: E731
    np.testing.assert_allclose(grad("per_sequence"), expect(0.25, 0.1429), atol=1e-4)
    np.testing.assert_allclose(grad("fixed_length", max_length=7), expect(0.1429, 0.1429),
                               atol=1e-4)
    # the book prints 0.0909 = 1/11 for the token-level version, which leaves out the
    # advantages (an erratum (see the chapter guide)); with them every token gets 2/11
    np.testing.assert_allclose(grad("per_token", with_advs=False), expect(1 / 11, 1 / 11),
                               atol=1e-7)
    np.testing.assert_allclose(grad("per_token"), expect(2 / 11, 2 / 11), atol=1e-7)


@pytest.mark.parametrize("mode", MODES)
def test_aggregation_matches_the_loop_and_leaves_padding_out(mode):
    b = random_batch(0)
    per_token = b["rng"].standard_normal(b["mask"].shape)
    garbage = np.where(b["mask"] > 0, per_token, 1e4)
    got = float(L.aggregate_loss(f32(garbage), f32(b["mask"]), mode))
    assert got == pytest.approx(aggregate_loop(per_token, b["mask"], mode), abs=1e-5)
    got = float(L.aggregate_loss(f32(garbage), jnp.asarray(b["mask"] > 0), mode, max_length=12))
    assert got == pytest.approx(aggregate_loop(per_token, b["mask"], mode, 12), abs=1e-5)
    assert float(L.aggregate_loss(f32(garbage), f32(np.zeros_like(garbage)), mode)) == 0.0


# ----------------------------------------------------------------------------------------------
# §6.1.3, §6.1.4, §6.1.5, §6.1.6 advantages: REINFORCE, RLOO, GRPO, Dr. GRPO


GROUPS = [  # rewards, GRPO (ddof=1, +1e-4), Dr. GRPO, RLOO -- worked in float64
    ([1, 0, 0, 0], [1.4997, -0.4999, -0.4999, -0.4999], [0.75, -0.25, -0.25, -0.25],
     [1, -1 / 3, -1 / 3, -1 / 3]),
    ([1, 1, 0, 0], [0.8659, 0.8659, -0.8659, -0.8659], [0.5, 0.5, -0.5, -0.5],
     [2 / 3, 2 / 3, -2 / 3, -2 / 3]),
    ([1] + [0] * 7, [2.4742] + [-0.3535] * 7, [0.875] + [-0.125] * 7, [1] + [-1 / 7] * 7),
    ([1] * 7 + [0], [0.3535] * 7 + [-2.4742], [0.125] * 7 + [-0.875], [1 / 7] * 7 + [-1]),
    ([0.9, 0.1, 0.5, 0.3], [1.3171, -1.0244, 0.1463, -0.4390], [0.45, -0.35, 0.05, -0.15],
     [0.6, -0.4667, 0.0667, -0.2]),
    ([1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]),
    ([1, 0, 0, 1], [0.8659, -0.8659, -0.8659, 0.8659], [0.5, -0.5, -0.5, 0.5],   # RLOO's example
     [2 / 3, -2 / 3, -2 / 3, 2 / 3]),
]


@pytest.mark.parametrize("rewards, grpo, dr_grpo, rloo", GROUPS)
def test_group_advantages_reproduce_the_books_w4(rewards, grpo, dr_grpo, rloo):
    r = f32([rewards])
    np.testing.assert_allclose(L.grpo_advantages(r)[0], grpo, atol=1.5e-4)
    np.testing.assert_allclose(L.grpo_advantages(r)[0], grpo_loop([rewards])[0], atol=1e-5)
    np.testing.assert_allclose(L.grpo_advantages(r, scale=False)[0], dr_grpo, atol=1e-6)
    np.testing.assert_allclose(L.rloo_advantages(r)[0], rloo, atol=1e-4)
    np.testing.assert_allclose(L.rloo_advantages(r)[0], rloo_loop([rewards])[0], atol=1e-6)


@pytest.mark.parametrize("k, std, a_correct, a_wrong", [
    (1, 0.3536, 2.4742, -0.3535), (2, 0.4629, 1.6198, -0.5399), (3, 0.5175, 1.2074, -0.7244),
    (4, 0.5345, 0.9352, -0.9352), (5, 0.5175, 0.7244, -1.2074), (6, 0.4629, 0.5399, -1.6198),
    (7, 0.3536, 0.3535, -2.4742)])
def test_grpo_binary_groups_of_eight_w4b(k, std, a_correct, a_wrong):
    rewards = [[1.0] * k + [0.0] * (8 - k)]
    adv = np.asarray(L.grpo_advantages(f32(rewards)))[0]
    assert adv[0] == pytest.approx(a_correct, abs=1.5e-4)
    assert adv[-1] == pytest.approx(a_wrong, abs=1.5e-4)
    # the GRPO / Dr. GRPO ratio is 1 / (std + eps): low-variance groups are up-weighted (see the guide's errata)
    dr = np.asarray(L.grpo_advantages(f32(rewards), scale=False))[0]
    assert adv[0] / dr[0] == pytest.approx(1 / (std + 1e-4), rel=2e-4)


@settings(max_examples=15, deadline=None)
@given(st.sampled_from([2, 3, 8]), st.sampled_from([1, 3]), st.integers(0, 2 ** 31 - 1))
def test_group_advantage_invariants(G, B, seed):
    rng = np.random.default_rng(seed)
    rewards = (rng.standard_normal((B, G)) if rng.random() < 0.5
               else rng.integers(0, 2, (B, G)).astype(np.float64))
    grpo = np.asarray(L.grpo_advantages(f32(rewards)))
    dr = np.asarray(L.grpo_advantages(f32(rewards), scale=False))
    rloo = np.asarray(L.rloo_advantages(f32(rewards)))
    for adv in (grpo, dr, rloo):
        assert np.all(np.isfinite(adv))
        np.testing.assert_allclose(adv.sum(axis=1), 0.0, atol=1e-5)   # zero-sum per group
    np.testing.assert_allclose(rloo, G / (G - 1) * dr, atol=1e-5)     # eq. 60
    np.testing.assert_allclose(rloo, rloo_loop(rewards), atol=1e-5)
    np.testing.assert_allclose(grpo, grpo_loop(rewards), atol=1e-4)
    # RLOO leaves the sample out: changing r_i does not move i's own baseline r_i - A_i
    i = int(rng.integers(G))
    changed = rewards.copy()
    changed[:, i] += rng.normal() * 5
    baseline = rewards[:, i] - rloo[:, i]
    new_baseline = changed[:, i] - np.asarray(L.rloo_advantages(f32(changed)))[:, i]
    np.testing.assert_allclose(new_baseline, baseline, atol=1e-5)


def test_grpo_std_is_bessel_corrected_and_eps_sits_outside_the_root():
    rewards = [[1.0, 0.0, 0.0, 0.0]]
    assert float(L.grpo_advantages(f32(rewards))[0, 0]) != pytest.approx(1.7317, abs=1e-3)  # ddof=0
    got = float(L.grpo_advantages(f32([[1.0, 0.0]]), eps=1.0)[0, 0])
    assert got == pytest.approx(0.5 / (math.sqrt(0.5) + 1.0), abs=1e-6)
    # eps -> 0: invariant to shift and positive scale of the rewards (eps = 0 itself raises: an
    # all-equal group would give 0 / 0)
    r = np.random.default_rng(1).standard_normal((3, 5))
    np.testing.assert_allclose(L.grpo_advantages(f32(3 * r + 7), eps=1e-9),
                               grpo_loop(r, eps=0.0), atol=1e-4)
    with pytest.raises(ValueError, match="eps must be > 0"):
        L.grpo_advantages(f32(r), eps=0.0)


def test_all_equal_rewards_give_zero_advantages_and_no_nan():
    rewards = f32([[0.0] * 4, [1.0] * 4, [0.37] * 4])
    for adv in (L.grpo_advantages(rewards), L.grpo_advantages(rewards, scale=False),
                L.rloo_advantages(rewards)):
        np.testing.assert_array_equal(np.asarray(adv), np.zeros((3, 4)))
    assert not np.any(np.asarray(L.dynamic_sampling_mask(rewards)))


def test_reinforce_baselines_and_the_bandit_view_w5():
    adv = L.reinforce_advantages(f32([3.0, 1.0]))                 # batch-mean baseline 2
    np.testing.assert_allclose(adv, [1.0, -1.0])
    np.testing.assert_allclose(L.token_advantages(adv, jnp.ones((2, 4))),
                               [[1, 1, 1, 1], [-1, -1, -1, -1]])
    np.testing.assert_allclose(L.reinforce_advantages(f32([3.0, 1.0]), None), [3.0, 1.0])
    np.testing.assert_allclose(L.reinforce_advantages(f32([3.0, 1.0]), 0.5), [2.5, 0.5])
    # the self-inclusive mean is (K - 1) / K times the leave-one-out advantage (X4)
    r = np.random.default_rng(2).standard_normal(5)
    np.testing.assert_allclose(L.reinforce_advantages(f32(r)), 4 / 5 * rloo_loop([r])[0],
                               atol=1e-5)
    adv_t = f32(np.arange(8.0).reshape(2, 4))
    np.testing.assert_array_equal(L.token_advantages(adv_t, jnp.ones((2, 4))), adv_t)


# ----------------------------------------------------------------------------------------------
# §6.1.5 PPO: the case table , the loss, value clipping


CASE_TABLE = [  # A, rho, J, dJ/drho for eps = 0.2 (never exactly at 1 +- eps)
    (+1, 0.5, 0.5, 1.0), (+1, 0.9, 0.9, 1.0), (+1, 1.0, 1.0, 1.0), (+1, 1.1, 1.1, 1.0),
    (+1, 1.5, 1.2, 0.0), (-1, 0.5, -0.8, 0.0), (-1, 0.9, -0.9, -1.0), (-1, 1.0, -1.0, -1.0),
    (-1, 1.1, -1.1, -1.0), (-1, 1.5, -1.5, -1.0)]


@pytest.mark.parametrize("A, rho, J, dJ", CASE_TABLE)
def test_ppo_case_table_w3(A, rho, J, dJ):
    assert float(L.ppo_objective(f32(rho), f32(A))) == pytest.approx(J, abs=1e-6)
    assert float(jax.grad(L.ppo_objective)(f32(rho), f32(A))) == pytest.approx(dJ, abs=1e-6)
    # the loss per token, differentiated by log pi: d(-J)/dlogp = -dJ/drho * rho (the PPO column of the CISPO table)
    old = f32([[-1.0]])
    logp = f32([[-1.0 + math.log(rho)]])
    loss = lambda lp: L.ppo_clip_loss(lp, old, f32([A]), f32([[1.0]]))  # noqa: E731
    assert float(loss(logp)) == pytest.approx(-J, abs=1e-6)
    assert float(jax.grad(loss)(logp)[0, 0]) == pytest.approx(-dJ * rho, abs=1e-6)


def test_ppo_clip_higher_uses_each_side_of_the_range():
    rho = f32([1.25, 1.35, 0.75, 0.85])
    adv = f32([1.0, 1.0, -1.0, -1.0])
    np.testing.assert_allclose(L.ppo_objective(rho, adv, 0.2, 0.28), [1.25, 1.28, -0.8, -0.85],
                               atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("per_token_adv", [False, True])
def test_ppo_clip_loss_matches_the_loop(mode, per_token_adv):
    b = random_batch(3, spread=0.5)
    adv = b["adv_t"] if per_token_adv else b["adv"]
    adv_tok = adv if per_token_adv else np.broadcast_to(adv[:, None], b["mask"].shape)
    got = L.ppo_clip_loss(f32(b["logp"]), f32(b["old"]), f32(adv), f32(b["mask"]), 0.2, 0.28,
                          aggregation=mode)
    expected = aggregate_loop(ppo_token_loop(b["logp"], b["old"], adv_tok, 0.2, 0.28),
                              b["mask"], mode)
    assert float(got) == pytest.approx(expected, abs=1e-5)


def test_clipped_tokens_get_zero_gradient_only_on_the_side_the_advantage_pushes():
    rho = np.array([1.5, 0.5, 0.5, 1.5, 1.05, 0.95])
    adv = np.array([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    old = np.full((6, 1), -2.0)
    logp = old + np.log(rho)[:, None]
    grad = np.asarray(jax.grad(lambda lp: L.ppo_clip_loss(
        lp, f32(old), f32(adv), f32(np.ones((6, 1)))))(f32(logp)))[:, 0]
    # pushed past the trust region in the advantage's direction: flat, no gradient
    np.testing.assert_array_equal(grad[:2], [0.0, 0.0])
    # outside the region on the other side, and inside it: -A rho / (number of tokens)
    np.testing.assert_allclose(grad[2:], -adv[2:] * rho[2:] / 6, rtol=1e-6)
    # clip_fraction counts exactly the tokens whose gradient is zero (the book's pg2 > pg1)
    frac = L.clip_fraction(f32(logp), f32(old), f32(adv), f32(np.ones((6, 1))))
    assert float(frac) == pytest.approx(np.mean(grad == 0.0))
    # CleanRL's |rho - 1| > eps would count 4 of 6 (an erratum (see the chapter guide)); ours counts 2
    assert float(frac) == pytest.approx(2 / 6)


def test_clip_fraction_and_approx_kl_on_a_random_batch():
    b = random_batch(4, spread=0.6)
    mask = b["mask"] > 0
    rho = np.exp(b["logp"] - b["old"])
    adv = np.broadcast_to(b["adv"][:, None], rho.shape)
    flat = ((adv > 0) & (rho > 1.2)) | ((adv < 0) & (rho < 0.8))
    got = L.clip_fraction(f32(b["logp"]), f32(b["old"]), f32(b["adv"]), f32(b["mask"]))
    assert float(got) == pytest.approx(flat[mask].mean(), abs=1e-6)
    # CleanRL's approx_kl: mean((rho - 1) - log rho), the k3 estimate of KL(pi_old || pi)
    got = L.approx_kl(f32(b["logp"]), f32(b["old"]), f32(b["mask"]))
    assert float(got) == pytest.approx(((rho - 1) - np.log(rho))[mask].mean(), rel=1e-4)


@pytest.mark.parametrize("values, old_values, target, clip, loss, dloss", [
    (1.0, 0.0, 2.0, None, 0.5, -1.0),      # no clipping: 1/2 (V - y)^2
    (1.0, 0.0, 2.0, 0.2, 1.62, 0.0),       # clipped branch 1/2 (0.2 - 2)^2 is larger: flat in V
    (1.0, 0.0, 0.5, 0.2, 0.125, 0.5),      # unclipped branch is larger: its gradient V - y
    (0.1, 0.0, 1.0, 0.2, 0.405, -0.9),     # inside the clip range: both branches agree
    (-1.0, 0.0, -2.0, 0.2, 1.62, 0.0),     # the same on the other side
])
def test_value_loss_clipping_cases(values, old_values, target, clip, loss, dloss):
    def fn(v):
        return L.value_loss(v, f32([[old_values]]), f32([[target]]), f32([[1.0]]), clip=clip)

    assert float(fn(f32([[values]]))) == pytest.approx(loss, abs=1e-6)
    assert float(jax.grad(fn)(f32([[values]]))[0, 0]) == pytest.approx(dloss, abs=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_value_loss_matches_cleanrl_formula(mode):
    b = random_batch(5)
    rng = b["rng"]
    v, old_v, y = (rng.standard_normal(b["mask"].shape) for _ in range(3))
    per_token = 0.5 * np.maximum((v - y) ** 2, (old_v + np.clip(v - old_v, -0.3, 0.3) - y) ** 2)
    got = L.value_loss(f32(v), f32(old_v), f32(y), f32(b["mask"]), clip=0.3, aggregation=mode)
    assert float(got) == pytest.approx(aggregate_loop(per_token, b["mask"], mode), abs=1e-5)
    got = L.value_loss(f32(v), f32(old_v), f32(y), f32(b["mask"]), aggregation=mode)
    assert float(got) == pytest.approx(aggregate_loop(0.5 * (v - y) ** 2, b["mask"], mode),
                                       abs=1e-5)


# ----------------------------------------------------------------------------------------------
# §6.1.1 REINFORCE's loss, §6.1.6 GRPO's loss, eq. 73


def test_policy_gradient_loss_is_the_books_snippet_c1_and_takes_tis():
    b = random_batch(6)
    logp, adv, mask = b["logp"], b["adv"], b["mask"]
    # the book's REINFORCE code: loss = -mean_b(sum_t(logp * mask) * A): a sum over tokens, a mean over sequences
    c1 = -np.mean((logp * mask).sum(axis=1) * adv)
    got = L.policy_gradient_loss(f32(logp), f32(adv), f32(mask), "fixed_length", max_length=1)
    assert float(got) == pytest.approx(c1, abs=1e-5)
    tis = b["rng"].uniform(0.2, 2.0, mask.shape)
    for mode in MODES:
        got = L.policy_gradient_loss(f32(logp), f32(adv), f32(mask), mode, tis=f32(tis))
        expected = aggregate_loop(-adv[:, None] * logp * tis, mask, mode)
        assert float(got) == pytest.approx(expected, abs=1e-5)
    grad = jax.grad(lambda lp: L.policy_gradient_loss(lp, f32(adv), f32(mask), "per_token"))(
        f32(logp))
    np.testing.assert_allclose(grad, -adv[:, None] * mask / mask.sum(), atol=1e-6)


def test_grpo_loss_is_ppo_plus_beta_k3_in_the_loss():
    b = random_batch(7, spread=0.5)
    args = (f32(b["logp"]), f32(b["old"]), f32(b["ref"]), f32(b["adv"]), f32(b["mask"]))
    ppo = L.ppo_clip_loss(args[0], args[1], args[3], args[4], aggregation="per_sequence")
    assert float(L.grpo_loss(*args)) == pytest.approx(float(ppo), abs=1e-6)
    adv_tok = np.broadcast_to(b["adv"][:, None], b["mask"].shape)
    per_token = ppo_token_loop(b["logp"], b["old"], adv_tok) + 0.1 * k3_loop(b["logp"], b["ref"])
    for mode in MODES:
        got = L.grpo_loss(*args, beta=0.1, aggregation=mode)
        assert float(got) == pytest.approx(aggregate_loop(per_token, b["mask"], mode), abs=1e-5)
    # the KL term's gradient is k3's pathwise gradient beta (1 - pi_ref / pi) per token
    kl_grad = jax.grad(lambda lp: L.grpo_loss(lp, *args[1:], beta=0.1, aggregation="per_token")
                       - L.grpo_loss(lp, *args[1:], beta=0.0, aggregation="per_token"))(args[0])
    expected = 0.1 * (1 - np.exp(b["ref"] - b["logp"])) * b["mask"] / b["mask"].sum()
    np.testing.assert_allclose(kl_grad, expected, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_one_gradient_step_grpo_is_reinforce_eq_73(mode):
    """At pi_theta = pi_old the clipped surrogate's gradient is -A grad log pi (eq. 73)."""
    b = random_batch(8)
    logp, mask = f32(b["logp"]), f32(b["mask"])
    g_grpo = jax.grad(lambda lp: L.grpo_loss(lp, logp, f32(b["ref"]), f32(b["adv"]), mask,
                                             aggregation=mode))(logp)
    g_pg = jax.grad(lambda lp: L.policy_gradient_loss(lp, f32(b["adv"]), mask, mode))(logp)
    np.testing.assert_allclose(g_grpo, g_pg, atol=1e-7)


def test_stop_gradients_old_policy_reference_and_advantages():
    b = random_batch(9, spread=0.5)
    logp, old, ref, mask = (f32(b[k]) for k in ("logp", "old", "ref", "mask"))
    adv = f32(b["adv"])
    grads = jax.grad(lambda o, r, a: L.grpo_loss(logp, o, r, a, mask, beta=0.1),
                     argnums=(0, 1, 2))(old, ref, adv)
    grads += jax.grad(lambda o, a: L.ppo_clip_loss(logp, o, a, mask), argnums=(0, 1))(old, adv)
    grads += jax.grad(lambda o, a: L.cispo_loss(logp, o, a, mask), argnums=(0, 1))(old, adv)
    grads += jax.grad(lambda o, a: L.gspo_loss(logp, o, a, mask, 0.2, 0.2),
                      argnums=(0, 1))(old, adv)
    grads += (jax.grad(lambda a: L.policy_gradient_loss(logp, a, mask))(adv),)
    for g in grads:
        np.testing.assert_array_equal(np.asarray(g), 0.0)


# ----------------------------------------------------------------------------------------------
# §6.1.7 GSPO  and §6.1.8 CISPO 


def test_gspo_sequence_ratio_w10():
    old = np.full((3, 5), -2.0)
    logp = old + np.array([[0.1, -0.2, 0.3, 0, 0], [0.05] * 5, [0.7] * 5])
    mask = np.array([[1, 1, 1, 0, 0], [1] * 5, [0] * 5])
    ratio = L.gspo_sequence_ratio(f32(logp), f32(old), f32(mask))
    np.testing.assert_allclose(ratio, [1.0689, 1.0513, 1.0], atol=1e-4)
    np.testing.assert_allclose(ratio[:2], [math.exp(0.2 / 3), math.exp(0.05)], rtol=1e-6)
    # the un-normalised sequence ratios would be exp(0.2) = 1.2214 and exp(0.25) = 1.284


def gspo_token_level(logp, old, adv, mask, low, high):
    """verl's GSPO-token form: ``s_it = sg(s_i) pi_t / sg(pi_t)``, clipped like PPO, averaged
    per sequence then over sequences -- its value and gradient equal GSPO's eq. 64."""
    length = jnp.maximum(jnp.sum(mask, axis=1), 1)
    s = jnp.exp(jnp.sum((logp - old) * mask, axis=1) / length)
    s_tok = jax.lax.stop_gradient(s)[:, None] * jnp.exp(logp - jax.lax.stop_gradient(logp))
    J = jnp.minimum(s_tok * adv[:, None], jnp.clip(s_tok, 1 - low, 1 + high) * adv[:, None])
    per_seq = jnp.sum(J * mask, axis=1) / length
    rows = jnp.sum(mask, axis=1) > 0
    return -jnp.sum(jnp.where(rows, per_seq, 0.0)) / jnp.sum(rows)


@pytest.mark.parametrize("low, high", [(0.5, 0.5), (3e-4, 4e-4), (0.02, 0.03)])
def test_gspo_loss_matches_the_loop_and_the_token_level_form(low, high):
    b = random_batch(10, spread=0.05)
    logp, old, adv, mask = (f32(b[k]) for k in ("logp", "old", "adv", "mask"))
    got = L.gspo_loss(logp, old, adv, mask, low, high)
    ratio = np.ones(len(b["adv"]))
    loop = []
    for n in range(len(ratio)):
        tokens = [b["logp"][n, t] - b["old"][n, t] for t in range(mask.shape[1]) if b["mask"][n, t]]
        if tokens:
            rho = math.exp(sum(tokens) / len(tokens))
            a = b["adv"][n]
            loop.append(-min(rho * a, min(max(rho, 1 - low), 1 + high) * a))
    assert float(got) == pytest.approx(sum(loop) / len(loop), abs=1e-5)
    assert float(got) == pytest.approx(float(gspo_token_level(logp, old, adv, mask, low, high)),
                                       abs=1e-5)
    g = jax.grad(L.gspo_loss)(logp, old, adv, mask, low, high)
    g_tok = jax.grad(gspo_token_level)(logp, old, adv, mask, low, high)
    np.testing.assert_allclose(g, g_tok, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(g)[np.asarray(b["mask"]) == 0], 0.0)


def test_gspo_with_one_token_per_row_is_ppo_per_sequence():
    b = random_batch(11, spread=0.5)
    one = np.zeros_like(b["mask"])
    one[np.arange(len(one)), b["rng"].integers(0, one.shape[1], len(one))] = 1.0
    one[1] = 0.0
    args = f32(b["logp"]), f32(b["old"]), f32(b["adv"]), f32(one)
    gspo = L.gspo_loss(*args, clip_low=0.2, clip_high=0.28)
    ppo = L.ppo_clip_loss(*args, clip_low=0.2, clip_high=0.28, aggregation="per_sequence")
    assert float(gspo) == pytest.approx(float(ppo), abs=1e-6)
    np.testing.assert_allclose(jax.grad(L.gspo_loss)(*args, 0.2, 0.28),
                               jax.grad(L.ppo_clip_loss)(*args, 0.2, 0.28, "per_sequence"),
                               atol=1e-7)


@pytest.mark.parametrize("A, rho, ppo, cispo", [
    (+1, 0.5, -0.5, -0.5), (+1, 1.0, -1.0, -1.0), (+1, 1.5, 0.0, -1.2),
    (-1, 0.5, 0.0, 0.5), (-1, 1.0, 1.0, 1.0), (-1, 1.5, 1.5, 1.2)])
def test_cispo_vs_ppo_gradient_weights_w11(A, rho, ppo, cispo):
    """d loss / d log pi for one token, eps = 0.2. The worked table gives CISPO -0.8 / +0.8 at
    rho = 0.5 with its two-sided clip; ours is TRL's upper cap, so the weight there is rho
    itself (an erratum (see the chapter guide): MiniMax-M1 and TRL effectively have no lower bound)."""
    old, mask = f32([[-1.0]]), f32([[1.0]])
    logp = f32([[-1.0 + math.log(rho)]])
    g_ppo = jax.grad(lambda lp: L.ppo_clip_loss(lp, old, f32([A]), mask))(logp)
    g_cispo = jax.grad(lambda lp: L.cispo_loss(lp, old, f32([A]), mask, ratio_cap=1.2))(logp)
    assert float(g_ppo[0, 0]) == pytest.approx(ppo, abs=1e-6)
    assert float(g_cispo[0, 0]) == pytest.approx(cispo, abs=1e-6)
    value = L.cispo_loss(logp, old, f32([A]), mask, ratio_cap=1.2)
    assert float(value) == pytest.approx(cispo * float(logp[0, 0]), abs=1e-6)  # -w A log pi


@pytest.mark.parametrize("mode", MODES)
def test_cispo_matches_the_loop_and_the_unclipped_ppo_gradient(mode):
    b = random_batch(12, spread=0.6)
    logp, old, adv, mask = (f32(b[k]) for k in ("logp", "old", "adv_t", "mask"))
    w = np.minimum(np.exp(b["logp"] - b["old"]), 1.5)
    got = L.cispo_loss(logp, old, adv, mask, ratio_cap=1.5, aggregation=mode)
    expected = aggregate_loop(-w * b["adv_t"] * b["logp"], b["mask"], mode)
    assert float(got) == pytest.approx(expected, abs=1e-5)
    # with the cap above every ratio CISPO's gradient is PPO's without any clipping
    cap = float(np.exp(b["logp"] - b["old"]).max()) + 1.0
    g_cispo = jax.grad(L.cispo_loss)(logp, old, adv, mask, cap, mode)
    g_ppo = jax.grad(L.ppo_clip_loss)(logp, old, adv, mask, 1.0, 1e6, mode)
    np.testing.assert_allclose(g_cispo, g_ppo, atol=1e-6)
    assert np.all(np.asarray(g_cispo)[(b["mask"] > 0) & (b["adv_t"] != 0)] != 0)


# ----------------------------------------------------------------------------------------------
# §6.2.4 truncated importance sampling 


def test_tis_weights_w9():
    log_ratio = np.array([-12.0, -0.5, 0.0, 0.5, 1.0, 12.0])
    w = L.tis_weights(f32(log_ratio - 2.0), f32(np.full(6, -2.0)))
    np.testing.assert_allclose(w, [4.54e-5, 0.6065, 1.0, 1.6487, 2.0, 2.0], rtol=1e-3)
    np.testing.assert_allclose(w, np.minimum(np.exp(np.clip(log_ratio, -10, 10)), 2.0),
                               rtol=1e-5)
    np.testing.assert_allclose(L.tis_weights(f32([0.0]), f32([-1.0]), cap=3.0), [math.e],
                               rtol=1e-6)
    grad = jax.grad(lambda x: jnp.sum(L.tis_weights(x, f32(np.zeros(6)))))(f32(log_ratio))
    np.testing.assert_array_equal(grad, 0.0)


def test_tis_with_sampler_equal_to_learner_changes_nothing_and_multiplies_otherwise():
    b = random_batch(13, spread=0.5)
    args = f32(b["logp"]), f32(b["old"]), f32(b["adv"]), f32(b["mask"])
    ones = L.tis_weights(f32(b["old"]), f32(b["old"]))
    np.testing.assert_array_equal(ones, 1.0)
    assert float(L.ppo_clip_loss(*args, tis=ones)) == float(L.ppo_clip_loss(*args))
    # eq. 72: the PPO term of each token times min(pi_learner_old / pi_sampler, C)
    sampler = b["old"] + 0.7 * b["rng"].standard_normal(b["old"].shape)
    tis = np.minimum(np.exp(b["old"] - sampler), 2.0)
    adv_tok = np.broadcast_to(b["adv"][:, None], b["mask"].shape)
    expected = aggregate_loop(ppo_token_loop(b["logp"], b["old"], adv_tok) * tis, b["mask"],
                              "per_token")
    got = L.ppo_clip_loss(*args, tis=L.tis_weights(f32(b["old"]), f32(sampler)))
    assert float(got) == pytest.approx(expected, abs=1e-5)


# ----------------------------------------------------------------------------------------------
# §6.2.5-6.2.6 where the KL goes 


def test_kl_folded_into_per_token_rewards_w8():
    logp, ref = f32([[-1.0, -0.5, -2.0, -0.1]]), f32([[-1.2, -0.5, -1.5, -0.3]])
    rewards = L.kl_penalized_token_rewards(f32([1.0]), logp, ref, jnp.ones((1, 4)), beta=0.1)
    np.testing.assert_allclose(rewards, [[-0.02, 0.0, 0.05, 0.98]], atol=1e-7)
    # returns (gamma = 1) are GAE with lam = 1 and zero values
    adv, _ = L.compute_gae(rewards, jnp.zeros((1, 4)), jnp.ones((1, 4)), 1.0, 1.0)
    np.testing.assert_allclose(adv, [[1.01, 1.03, 1.03, 0.98]], atol=1e-6)
    seq = L.kl_penalized_sequence_rewards(f32([1.0]), logp, ref, jnp.ones((1, 4)), beta=0.1)
    np.testing.assert_allclose(seq, [1.01], atol=1e-6)  # 1 - 0.1 * (0.2 + 0 - 0.5 + 0.2)
    # after a prompt and before padding the score still lands on the last completion token
    wide = lambda x, fill: jnp.concatenate(  # noqa: E731
        [jnp.full((1, 2), fill), x, jnp.full((1, 3), fill)], axis=1)
    mask = wide(jnp.ones((1, 4)), 0.0)
    shifted = L.kl_penalized_token_rewards(f32([1.0]), wide(logp, -9.0), wide(ref, -0.1), mask,
                                           0.1)
    np.testing.assert_allclose(shifted, wide(rewards, 0.0), atol=1e-7)
    # the KL here is a reward: a constant for the gradient
    grad = jax.grad(lambda lp: jnp.sum(L.kl_penalized_token_rewards(
        f32([1.0]), lp, ref, jnp.ones((1, 4)), 0.1, "k3")))(logp)
    np.testing.assert_array_equal(grad, 0.0)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_penalised_rewards_match_the_loop(estimator):
    b = random_batch(14)
    d = b["ref"] - b["logp"]
    kl = {"k1": -d, "k2": 0.5 * d ** 2, "k3": np.expm1(d) - d}[estimator]
    scores = b["rng"].standard_normal(len(d))
    mask = b["mask"]
    got = L.kl_penalized_token_rewards(f32(scores), f32(b["logp"]), f32(b["ref"]), f32(mask), 0.05,
                                       estimator)
    expected = np.where(mask > 0, -0.05 * kl, 0.0)
    for n in range(len(mask)):
        if mask[n].any():
            expected[n, np.flatnonzero(mask[n])[-1]] += scores[n]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    got = L.kl_penalized_sequence_rewards(f32(scores), f32(b["logp"]), f32(b["ref"]), f32(mask),
                                          0.05, estimator)
    np.testing.assert_allclose(got, scores - 0.05 * (kl * mask).sum(axis=1), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# §6.3.2 GAE: Figure 21's example and two episodes


W6_REWARDS = [0, 0, 0, 0, 0, 0.73]
W6_VALUES = [0.45, 0.55, 0.62, 0.68, 0.71, 0.73]


@pytest.mark.parametrize("lam, expected", [
    (0.0, [0.10, 0.07, 0.06, 0.03, 0.02, 0.0]),
    (0.5, [0.155, 0.11, 0.08, 0.04, 0.02, 0.0]),
    (0.95, [0.26266138, 0.1712225, 0.10655, 0.049, 0.02, 0.0]),
    (1.0, [0.28, 0.18, 0.11, 0.05, 0.02, 0.0]),
])
def test_gae_lambda_sweep_on_figure_21_w6(lam, expected):
    with jax.enable_x64(True):
        r, v = jnp.asarray([W6_REWARDS]), jnp.asarray([W6_VALUES])
        adv, ret = L.compute_gae(r, v, jnp.ones((1, 6)), gamma=1.0, lam=lam)
        np.testing.assert_allclose(adv[0], expected, atol=1e-8)
        np.testing.assert_allclose(ret[0], np.asarray(W6_VALUES) + expected, atol=1e-8)
    adv32, _ = L.compute_gae(f32([W6_REWARDS]), f32([W6_VALUES]), jnp.ones((1, 6)), 1.0, lam)
    np.testing.assert_allclose(adv32[0], expected, atol=1e-6)


@pytest.mark.parametrize("lam, first, second", [
    (1.0, [0.8, 0.6, 0.4], [0.4, 0.2]),
    (0.95, [0.751, 0.58, 0.4], [0.39, 0.2]),
    (0.0, [0.2, 0.2, 0.4], [0.2, 0.2]),
])
def test_gae_two_episodes_w7_one_per_row_equal_the_packed_done_mask_loop(lam, first, second):
    """Our GAE has no done mask: each row is one episode. A packed worked example puts two episodes in
    one row separated by done; in two rows we get the same numbers."""
    rewards = f32([[0, 0, 1.0], [0, 0.5, 7.0]])     # padding holds garbage
    values = f32([[0.2, 0.4, 0.6], [0.1, 0.3, -4.0]])
    mask = f32([[1, 1, 1], [1, 1, 0]])
    adv, ret = L.compute_gae(rewards, values, mask, 1.0, lam)
    np.testing.assert_allclose(adv, [first, second + [0.0]], atol=1e-6)
    packed = gae_done_loop([0, 0, 1.0, 0, 0.5], [0.2, 0.4, 0.6, 0.1, 0.3], [0, 0, 1, 0, 1],
                           1.0, lam)
    np.testing.assert_allclose(packed, first + second, atol=1e-12)
    np.testing.assert_allclose(ret, np.where(np.asarray(mask) > 0,
                                             np.asarray(adv) + np.asarray(values), 0.0), atol=1e-7)
    if lam == 0.95:
        np.testing.assert_allclose(np.asarray(ret)[0], [0.951, 0.98, 1.0], atol=1e-6)
        np.testing.assert_allclose(np.asarray(ret)[1, :2], [0.49, 0.5], atol=1e-6)


@pytest.mark.parametrize("shift", [1, 4])
def test_gae_ignores_where_the_completion_starts(shift):
    rng = np.random.default_rng(17)
    N, T = 4, 6
    rewards, values = rng.standard_normal((N, T)), rng.standard_normal((N, T))
    mask = (np.arange(T)[None] < np.array([[6], [3], [1], [5]])).astype(np.float64)
    adv, ret = L.compute_gae(f32(rewards), f32(values), f32(mask), 0.97, 0.9)
    prompt = lambda x, fill: np.concatenate([np.full((N, shift), fill), x], axis=1)  # noqa: E731
    adv2, ret2 = L.compute_gae(f32(prompt(rewards, 3.0)), f32(prompt(values, -2.0)),
                               f32(prompt(mask, 0.0)), 0.97, 0.9)
    np.testing.assert_allclose(np.asarray(adv2)[:, shift:], adv, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ret2)[:, shift:], ret, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(adv2)[:, :shift], 0.0)
    np.testing.assert_array_equal(np.asarray(ret2)[:, :shift], 0.0)


@pytest.mark.parametrize("gamma, lam", [(1.0, 0.95), (0.9, 0.0), (0.8, 1.0), (0.99, 0.7)])
def test_gae_matches_the_loops_and_eq_77s_mixture_of_n_step_advantages(gamma, lam):
    rng = np.random.default_rng(18)
    N, T = 5, 8
    rewards, values = rng.standard_normal((N, T)), rng.standard_normal((N, T))
    mask = (rng.random((N, T)) < 0.7).astype(np.float64)  # holes anywhere
    with jax.enable_x64(True):
        adv, ret = L.compute_gae(jnp.asarray(rewards), jnp.asarray(values), jnp.asarray(mask),
                                 gamma, lam)
        adv, ret = np.asarray(adv), np.asarray(ret)
    np.testing.assert_allclose(adv, gae_loop(rewards, values, mask, gamma, lam), atol=1e-12)
    np.testing.assert_allclose(ret, np.where(mask > 0, adv + values, 0.0), atol=1e-12)
    for n in range(N):
        idx = np.flatnonzero(mask[n])
        if len(idx):
            np.testing.assert_allclose(adv[n, idx], gae_nstep_loop(rewards[n, idx],
                                                                   values[n, idx], gamma, lam),
                                       atol=1e-12)
    if lam == 1.0:  # Monte-Carlo return minus V
        full = L.compute_gae(jnp.asarray(rewards, jnp.float32), jnp.asarray(values, jnp.float32),
                             jnp.ones((N, T)), gamma, 1.0)[0]
        mc = np.array([[sum(gamma ** (k - t) * rewards[n, k] for k in range(t, T))
                        for t in range(T)] for n in range(N)])
        np.testing.assert_allclose(full, mc - values, atol=1e-5)


def test_gae_matches_rlax():
    rlax = pytest.importorskip("rlax")
    rng = np.random.default_rng(19)
    N, T = 4, 9
    rewards, values = rng.standard_normal((N, T)), rng.standard_normal((N, T))

    @jax.jit
    def both(gamma, lam):  # gamma and lam traced: one compilation for every pair
        theirs = jax.vmap(lambda r, v: rlax.truncated_generalized_advantage_estimation(
            r, gamma * jnp.ones_like(r), lam, jnp.concatenate([v, jnp.zeros(1)])))(
                f32(rewards), f32(values))
        return L.compute_gae(f32(rewards), f32(values), jnp.ones((N, T)), gamma, lam)[0], theirs

    for gamma in (1.0, 0.9):
        for lam in (0.0, 0.95, 1.0):
            ours, theirs = both(gamma, lam)
            np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_gae_gradient_is_linear_in_the_rewards():
    gamma, lam = 0.9, 0.8
    r, v = f32(np.zeros((1, 6))), f32(np.linspace(0, 1, 6)[None])
    jac = jax.jacobian(lambda x: L.compute_gae(x, v, jnp.ones((1, 6)), gamma, lam)[0][0])(r)[:, 0]
    t = np.arange(6)
    expected = np.where(t[None] >= t[:, None], (gamma * lam) ** (t[None] - t[:, None]), 0.0)
    np.testing.assert_allclose(jac, expected, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# §6.3.4 DAPO's dynamic sampling and overlong penalty


def test_dynamic_sampling_mask_keeps_groups_with_contrast():
    rewards = f32([[0, 0, 0], [1, 1, 1], [0, 1, 0], [0.5, 0.5, 0.5], [0.2, 0.3, 0.2]])
    np.testing.assert_array_equal(L.dynamic_sampling_mask(rewards),
                                  [False, False, True, False, True])
    assert L.dynamic_sampling_mask(rewards).dtype == jnp.bool_


def test_overlong_penalty_is_dapos_soft_punishment():
    lengths = np.arange(0, 26)
    L_max, L_cache = 20, 4
    expected = [0.0 if n <= L_max - L_cache else
                ((L_max - L_cache) - n) / L_cache if n <= L_max else -1.0 for n in lengths]
    np.testing.assert_allclose(L.overlong_penalty(f32(lengths), L_max, L_cache), expected,
                               atol=1e-7)
    np.testing.assert_allclose(L.overlong_penalty(jnp.asarray(lengths), 20, 20)[:3],
                               [0.0, -0.05, -0.1], atol=1e-7)


# ----------------------------------------------------------------------------------------------
# jax.grad against central finite differences (float64)


def _fd_cases(b):
    logp, old, ref, mask = (jnp.asarray(b[k]) for k in ("logp", "old", "ref", "mask"))
    adv, adv_t = jnp.asarray(b["adv"]), jnp.asarray(b["adv_t"])
    values = jnp.asarray(b["rng"].standard_normal(b["mask"].shape))
    returns = values + jnp.asarray(b["rng"].standard_normal(b["mask"].shape))
    # trained values on both sides of the clip range old +- 0.2, away from its kinks
    moved = values + jnp.asarray(b["rng"].choice([-0.5, -0.1, 0.05, 0.15, 0.45],
                                                 b["mask"].shape))
    tis = jnp.asarray(b["rng"].uniform(0.5, 2.0, b["mask"].shape))
    return {
        "ppo_clip_loss/per_token": (lambda x: L.ppo_clip_loss(x, old, adv, mask, 0.2, 0.28), logp),
        "ppo_clip_loss/fixed_length+tis": (lambda x: L.ppo_clip_loss(
            x, old, adv_t, mask, aggregation="fixed_length", max_length=9, tis=tis), logp),
        "grpo_loss/beta": (lambda x: L.grpo_loss(x, old, ref, adv, mask, beta=0.1), logp),
        "gspo_loss": (lambda x: L.gspo_loss(x, old, adv, mask, 0.2, 0.2), logp),
        "policy_gradient_loss": (lambda x: L.policy_gradient_loss(x, adv_t, mask), logp),
        "value_loss/clip": (lambda x: L.value_loss(x, values, returns, mask, clip=0.2), moved),
        "aggregate_loss/per_sequence": (lambda x: L.aggregate_loss(x, mask), logp),
        "compute_gae/returns": (lambda x: jnp.sum(L.compute_gae(x, values, mask, 0.9, 0.8)[1]),
                                returns),
        "kl_k3": (lambda x: jnp.sum(ch15.kl_k3(x, ref)), logp),
        "gspo_sequence_ratio": (lambda x: jnp.sum(L.gspo_sequence_ratio(x, old, mask)), logp),
    }


@pytest.mark.parametrize("name", list(_fd_cases(random_batch(20))))
def test_gradients_match_central_finite_differences(name):
    with jax.enable_x64(True):
        b = random_batch(20, N=4, T=5, spread=0.4)
        fn, x = _fd_cases(b)[name]
        x = np.asarray(x, np.float64)
        fn = jax.jit(fn)
        grad = np.asarray(jax.jit(jax.grad(fn))(jnp.asarray(x)))
        assert grad.dtype == np.float64
        np.testing.assert_allclose(grad, central_difference(lambda y: fn(jnp.asarray(y)), x),
                                   atol=1e-7)


# ----------------------------------------------------------------------------------------------
# Independent library: rlax


def test_ppo_clip_loss_matches_rlax():
    rlax = pytest.importorskip("rlax")
    b = random_batch(21, spread=0.5)
    mask = b["mask"] > 0
    ratio = np.exp(b["logp"] - b["old"])
    adv = np.broadcast_to(b["adv"][:, None], ratio.shape)
    expected = rlax.clipped_surrogate_pg_loss(f32(ratio[mask]), f32(adv[mask]), 0.2)
    got = L.ppo_clip_loss(f32(b["logp"]), f32(b["old"]), f32(b["adv"]), f32(b["mask"]))
    assert float(got) == pytest.approx(float(expected), abs=1e-6)
    # a worked vector: ratios [0.5, 0.9, 1.1, 1.5], A [1, -1, 1, -1] -> 0.2
    rho, a = np.array([0.5, 0.9, 1.1, 1.5]), np.array([1.0, -1.0, 1.0, -1.0])
    assert float(rlax.clipped_surrogate_pg_loss(f32(rho), f32(a), 0.2)) == pytest.approx(0.2)
    got = L.ppo_clip_loss(f32(np.log(rho)[None]), f32(np.zeros((1, 4))), f32(a[None]),
                          jnp.ones((1, 4)))
    assert float(got) == pytest.approx(0.2, abs=1e-6)


def test_policy_gradient_loss_matches_rlax_on_logits():
    rlax = pytest.importorskip("rlax")
    rng = np.random.default_rng(22)
    T, V = 7, 5
    logits = f32(rng.standard_normal((T, V)))
    actions = jnp.asarray(rng.integers(0, V, T))
    adv = f32(rng.standard_normal(T))
    weights = f32((np.arange(T) < 5).astype(np.float32))

    def ours(lg):
        logp = log_probs_from_logits(lg, actions)[None]
        # rlax divides the weighted sum by T: our fixed-length mode with max_length = T
        return L.policy_gradient_loss(logp, adv[None], weights[None], "fixed_length")

    theirs = lambda lg: rlax.policy_gradient_loss(lg, actions, adv, weights)  # noqa: E731
    assert float(ours(logits)) == pytest.approx(float(theirs(logits)), abs=1e-6)
    np.testing.assert_allclose(jax.grad(ours)(logits), jax.grad(theirs)(logits), atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Extreme inputs: logits of size 1e4, fully masked rows


def _extreme_batch():
    rng = np.random.default_rng(23)
    N, T, V = 4, 5, 7
    logits = f32(1e4 * rng.standard_normal((3, N, T, V)))
    tokens = jnp.asarray(rng.integers(0, V, (N, T)))
    mask = f32((np.arange(T)[None] < np.array([[5], [2], [0], [4]])))
    old, ref = (log_probs_from_logits(logits[k], tokens) for k in (1, 2))
    return logits[0], tokens, old, ref, mask


def _all_losses(logp, old, ref, mask, adv):
    return {
        "ppo_clip_loss": L.ppo_clip_loss(logp, old, adv, mask),
        "grpo_loss": L.grpo_loss(logp, old, ref, adv, mask, beta=0.1),
        "gspo_loss": L.gspo_loss(logp, old, adv, mask),
        "cispo_loss": L.cispo_loss(logp, old, adv, mask),
        "policy_gradient_loss": L.policy_gradient_loss(logp, adv, mask,
                                                       tis=L.tis_weights(logp, old)),
        "value_loss": L.value_loss(logp, old, ref, mask, clip=0.2),
        "approx_kl": L.approx_kl(logp, old, mask),
        "clip_fraction": L.clip_fraction(logp, old, adv, mask),
        "kl_in_reward": jnp.sum(L.kl_penalized_token_rewards(adv, logp, ref, mask, 0.1, "k3"))
        + jnp.sum(L.kl_penalized_sequence_rewards(adv, logp, ref, mask, 0.1, "k2")),
        "gae": jnp.sum(L.compute_gae(logp, old, mask)[0]),
    }


def _stacked_losses(logp, old, ref, mask, adv):
    return jnp.stack(list(_all_losses(logp, old, ref, mask, adv).values()))


def test_no_nan_or_inf_for_log_probs_from_logits_of_size_1e4():
    logits, tokens, old, ref, mask = _extreme_batch()
    adv = f32([1.0, -1.0, 0.5, -2.0])
    names = list(_all_losses(old, old, ref, mask, adv))

    @jax.jit
    def values_and_jacobian(lg):
        def fn(x):
            return _stacked_losses(log_probs_from_logits(x, tokens), old, ref, mask, adv)

        return fn(lg), jax.jacrev(fn)(lg)

    values, jacobian = values_and_jacobian(logits)
    for k, name in enumerate(names):
        assert np.isfinite(float(values[k])), name
        assert np.all(np.isfinite(np.asarray(jacobian[k]))), name


def test_fully_masked_rows_count_for_nothing():
    b = random_batch(24, spread=0.5)
    logp, old, ref, mask = (f32(b[k]) for k in ("logp", "old", "ref", "mask"))
    adv = f32(b["adv"])
    names = list(_all_losses(logp, old, ref, mask, adv))
    keep = np.asarray(b["mask"]).any(axis=1)  # row 1 is empty
    losses = jax.jit(_stacked_losses)
    with_row = dict(zip(names, np.asarray(losses(logp, old, ref, mask, adv))))
    without = dict(zip(names, np.asarray(losses(logp[keep], old[keep], ref[keep], mask[keep],
                                                adv[keep]))))
    for name in ("ppo_clip_loss", "grpo_loss", "gspo_loss", "cispo_loss", "approx_kl",
                 "clip_fraction", "gae"):
        assert float(with_row[name]) == pytest.approx(float(without[name]), abs=1e-6), name
    empty = jnp.zeros_like(mask)
    values = dict(zip(names, np.asarray(losses(logp, old, ref, empty, adv))))
    for name, value in values.items():
        if name != "kl_in_reward":  # the sequence rewards are still the scores
            assert value == 0.0, name
    jacobian = jax.jit(jax.jacrev(_stacked_losses))(logp, old, ref, empty, adv)
    np.testing.assert_array_equal(np.asarray(jacobian), 0.0)


# ----------------------------------------------------------------------------------------------
# jit == eager, vmap == a Python loop


def _jit_cases():
    b = random_batch(25, spread=0.5)
    logp, old, ref, mask = (f32(b[k]) for k in ("logp", "old", "ref", "mask"))
    adv, adv_t = f32(b["adv"]), f32(b["adv_t"])
    rewards = f32(b["rng"].standard_normal((2, 3)))
    return [
        ("ppo_clip_loss", L.ppo_clip_loss, (logp, old, adv_t, mask, 0.1, 0.3, "fixed_length", 9),
         (6, 7)),
        ("grpo_loss", L.grpo_loss, (logp, old, ref, adv, mask, 0.05), ()),
        ("gspo_loss", L.gspo_loss, (logp, old, adv, mask, 0.2, 0.2), ()),
        ("cispo_loss", L.cispo_loss, (logp, old, adv, mask, 1.5, "per_sequence"), (5,)),
        ("value_loss", L.value_loss, (logp, old, ref, mask, 0.2), ()),
        ("policy_gradient_loss", L.policy_gradient_loss, (logp, adv, mask, "per_token"), (3,)),
        ("aggregate_loss", L.aggregate_loss, (logp, mask, "per_token"), (2,)),
        ("compute_gae", L.compute_gae, (logp, old, mask, 0.9, 0.8), ()),
        ("grpo_advantages", L.grpo_advantages, (rewards, False), (1,)),
        ("rloo_advantages", L.rloo_advantages, (rewards,), ()),
        ("reinforce_advantages", L.reinforce_advantages, (adv, "mean"), (1,)),
        ("tis_weights", L.tis_weights, (logp, old, 1.5), ()),
        ("kl_penalized_token_rewards", L.kl_penalized_token_rewards,
         (adv, logp, ref, mask, 0.1, "k3"), (5,)),
        ("kl_penalized_sequence_rewards", L.kl_penalized_sequence_rewards,
         (adv, logp, ref, mask, 0.1, "k2"), (5,)),
        ("dynamic_sampling_mask", L.dynamic_sampling_mask, (rewards,), ()),
        ("overlong_penalty", L.overlong_penalty, (f32([3, 9, 14]), 12, 4), (1, 2)),
        ("clip_fraction", L.clip_fraction, (logp, old, adv, mask), ()),
        ("approx_kl", L.approx_kl, (logp, old, mask), ()),
        ("kl_estimate", ch15.kl_estimate, (logp, ref, "k3"), (2,)),
    ]


@pytest.mark.parametrize("name, fn, args, static", _jit_cases(), ids=[c[0] for c in _jit_cases()])
def test_jit_matches_eager(name, fn, args, static):
    eager = jax.tree_util.tree_leaves(fn(*args))
    jitted = jax.tree_util.tree_leaves(jax.jit(fn, static_argnums=static)(*args))
    for e, j in zip(eager, jitted):
        np.testing.assert_allclose(np.asarray(j), np.asarray(e), rtol=1e-6, atol=1e-6)


def test_vmap_matches_a_python_loop():
    batches = [random_batch(26 + k, spread=0.5) for k in range(3)]
    stack = lambda key: f32(np.stack([b[key] for b in batches]))  # noqa: E731
    logp, old, ref, mask, adv = (stack(k) for k in ("logp", "old", "ref", "mask", "adv"))
    rewards = f32(np.random.default_rng(29).standard_normal((3, 2, 4)))
    cases = {
        "ppo_clip_loss": (lambda a, b, c, d: L.ppo_clip_loss(a, b, c, d, 0.2, 0.28),
                          (logp, old, adv, mask)),
        "grpo_loss": (lambda a, b, c, d, e: L.grpo_loss(a, b, c, d, e, beta=0.1),
                      (logp, old, ref, adv, mask)),
        "gspo_loss": (L.gspo_loss, (logp, old, adv, mask)),
        "cispo_loss": (L.cispo_loss, (logp, old, adv, mask)),
        "compute_gae": (lambda a, b, c: L.compute_gae(a, b, c, 0.95, 0.9), (logp, old, mask)),
        "grpo_advantages": (L.grpo_advantages, (rewards,)),
        "rloo_advantages": (L.rloo_advantages, (rewards,)),
        "kl_penalized_token_rewards": (lambda s, a, b, c: L.kl_penalized_token_rewards(
            s, a, b, c, 0.1), (adv, logp, ref, mask)),
    }
    for name, (fn, args) in cases.items():
        batched = jax.tree_util.tree_leaves(jax.vmap(fn)(*args))
        looped = [jax.tree_util.tree_leaves(fn(*[a[k] for a in args])) for k in range(3)]
        for i, leaf in enumerate(batched):
            np.testing.assert_allclose(np.asarray(leaf), np.stack([one[i] for one in looped]),
                                       rtol=1e-6, atol=1e-6, err_msg=name)


# ----------------------------------------------------------------------------------------------
# Argument checks: ValueError naming the argument


_M = jnp.ones((2, 3))
BAD_CALLS = [  # shapes, checked by each function; hyperparameter ranges: RLConfig (test_ch06_loop)
    (lambda: L.grpo_advantages(jnp.ones(4)), r"rewards must have shape \[B, G\]"),
    (lambda: L.reinforce_advantages(jnp.ones((2, 2))), r"rewards must have shape \[N\]"),
    (lambda: L.reinforce_advantages(jnp.ones(2), "median"), r"baseline must be"),
    (lambda: L.aggregate_loss(_M, _M, "per_batch"), r"mode must be one of"),
    (lambda: L.aggregate_loss(jnp.ones((2, 4)), _M), r"mask must have the shape of per_token_loss"),
    (lambda: L.aggregate_loss(_M, jnp.ones(3)), r"mask must have the shape of per_token_loss \[N, T\]"),
    (lambda: L.ppo_clip_loss(_M, jnp.ones((3, 2)), jnp.ones(2), _M), r"old_logp must have"),
    (lambda: L.ppo_clip_loss(_M, _M, jnp.ones(3), _M), r"advantages must have the shape of mask"),
    (lambda: L.ppo_clip_loss(_M, _M, jnp.ones(2), _M, aggregation="sum"), r"mode must be one"),
    (lambda: L.ppo_clip_loss(_M, _M, jnp.ones(2), _M, tis=jnp.ones(3)), r"tis must have"),
    (lambda: L.grpo_loss(_M, _M, jnp.ones((2, 2)), jnp.ones(2), _M), r"ref_logp must have"),
    (lambda: L.gspo_loss(_M, _M, _M, _M), r"advantages must have the shape of \[N\]"),
    (lambda: L.value_loss(_M, _M, jnp.ones((2, 2)), _M), r"returns must have the shape"),
    (lambda: L.compute_gae(_M, jnp.ones((2, 4)), _M), r"values must have the shape of rewards"),
    (lambda: L.tis_weights(jnp.ones(3), jnp.ones(4)), r"sampler_logp must have the shape"),
    (lambda: L.kl_penalized_token_rewards(jnp.ones(3), _M, _M, _M, 0.1), r"scores must have"),
    (lambda: L.kl_penalized_token_rewards(jnp.ones(2), _M, _M, _M, 0.1, "k4"),
     r"estimator must be one of"),
    (lambda: L.kl_penalized_sequence_rewards(jnp.ones(3), _M, _M, _M, 0.1), r"scores must have"),
    (lambda: L.overlong_penalty(jnp.ones(3), 10, 0), r"cache_length must be > 0"),
    (lambda: L.overlong_penalty(jnp.ones(3), 10, 11), r"cache_length must be <= 10"),
    (lambda: L.token_advantages(jnp.ones((3, 3)), _M), r"advantages must have the shape of mask"),
    (lambda: L.policy_gradient_loss(_M, jnp.ones(2), _M[None]), r"mask must have shape \[N, T\], got shape \(1, 2, 3\)"),
    (lambda: kl.kl_k3(jnp.ones(3), jnp.ones(2)), r"ref_logp must have the shape of logp"),
    (lambda: kl.kl_estimate(jnp.ones(3), jnp.ones(3), "k0"), r"estimator must be one of"),
    (lambda: L.approx_kl(_M, _M, jnp.ones((2, 3, 1))), r"mask must have the shape"),
    (lambda: L.ppo_clip_loss(["a"], _M, jnp.ones(2), _M), r"logp must be an array of numbers"),
]


@pytest.mark.parametrize("call, message", BAD_CALLS, ids=range(len(BAD_CALLS)))
def test_bad_arguments_raise_value_error_naming_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_compute_gae_promotes_mixed_precision_inputs():
    with jax.enable_x64(True):
        adv, ret = L.compute_gae(jnp.ones((2, 3), jnp.float32), jnp.ones((2, 3), jnp.float64),
                                 jnp.ones((2, 3)), 1.0, 1.0)
        # lam = gamma = 1: the returns are the Monte-Carlo returns-to-go 3, 2, 1 and the
        # advantages those minus V = 1.
        assert adv.dtype == jnp.float64
        np.testing.assert_allclose(ret, [[3.0, 2.0, 1.0]] * 2)
        np.testing.assert_allclose(adv, [[2.0, 1.0, 0.0]] * 2)


def test_fixed_length_accepts_a_numpy_integer_max_length():
    got = L.aggregate_loss(jnp.ones((2, 3)), jnp.ones((2, 3)), "fixed_length", np.int64(10))
    assert float(got) == pytest.approx(0.3)


# ----------------------------------------------------------------------------------------------
# the grading checks catch wrong versions with a useful hint (tests/test_grading.py runs every
# check on the reference)

FUNCTIONS = ("rloo_advantages", "ppo_objective", "grpo_advantages", "gspo_sequence_ratio",
             "cispo_loss", "aggregate_loss", "tis_weights", "compute_gae")


def _rloo_self_included(rewards):  # Dr. GRPO, not RLOO
    r = jnp.asarray(rewards)
    return r - jnp.mean(r, axis=1, keepdims=True)


def _rloo_over_columns(rewards):
    r = jnp.asarray(rewards)
    return (L.rloo_advantages(r.T).T if r.shape[0] > 1 else L.rloo_advantages(r))


def _rloo_divide_by_G(rewards):
    r = jnp.asarray(rewards)
    return r - (jnp.sum(r, axis=1, keepdims=True) - r) / r.shape[1]


def _ppo_max(ratio, advantages, clip_low=0.2, clip_high=0.2):
    clipped = jnp.clip(ratio, 1 - clip_low, 1 + clip_high)
    return jnp.maximum(ratio * advantages, clipped * advantages)


def _ppo_symmetric(ratio, advantages, clip_low=0.2, clip_high=0.2):
    return L.ppo_objective(ratio, advantages, clip_low, clip_low)


def _ppo_clipped_only(ratio, advantages, clip_low=0.2, clip_high=0.2):
    return jnp.clip(ratio, 1 - clip_low, 1 + clip_high) * advantages


def _ppo_unclipped(ratio, advantages, clip_low=0.2, clip_high=0.2):
    return ratio * advantages


def _grpo_ddof0(rewards, scale=True, eps=1e-4):
    r = jnp.asarray(rewards)
    c = r - jnp.mean(r, axis=1, keepdims=True)
    return c / (jnp.std(r, axis=1, keepdims=True) + eps) if scale else c


def _grpo_eps_inside(rewards, scale=True, eps=1e-4):
    r = jnp.asarray(rewards)
    c = r - jnp.mean(r, axis=1, keepdims=True)
    return c / jnp.sqrt(jnp.var(r, axis=1, keepdims=True, ddof=1) + eps) if scale else c


def _grpo_ignores_scale(rewards, scale=True, eps=1e-4):
    return L.grpo_advantages(rewards, True, eps)


def _grpo_batch_stats(rewards, scale=True, eps=1e-4):
    r = jnp.asarray(rewards)
    c = r - jnp.mean(r)
    return c / (jnp.std(r, ddof=1) + eps) if scale else c


def _gspo_product(logp, old_logp, mask):
    m = jnp.asarray(mask)
    return jnp.exp(jnp.clip(jnp.sum((logp - old_logp) * m, axis=1), -20, 20))


def _gspo_mean_over_T(logp, old_logp, mask):
    m = jnp.asarray(mask)
    return jnp.exp(jnp.clip(jnp.mean((logp - old_logp) * m, axis=1), -20, 20))


def _gspo_no_clamp(logp, old_logp, mask):
    m = jnp.asarray(mask)
    return jnp.exp(jnp.sum((logp - old_logp) * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1))


def _cispo_no_stop_gradient(logp, old_logp, advantages, mask, ratio_cap=5.0,
                            aggregation="per_token", max_length=None):
    w = jnp.minimum(jnp.exp(jnp.clip(logp - old_logp, -20, 20)), ratio_cap)
    per_token = -w * L.token_advantages(advantages, mask) * logp
    return L.aggregate_loss(per_token, mask, aggregation, max_length)


def _cispo_two_sided(logp, old_logp, advantages, mask, ratio_cap=5.0,
                     aggregation="per_token", max_length=None):  # verl's clip(rho, 1-0.2, cap)
    w = jax.lax.stop_gradient(jnp.clip(jnp.exp(logp - old_logp), 0.8, ratio_cap))
    per_token = -w * L.token_advantages(advantages, mask) * logp
    return L.aggregate_loss(per_token, mask, aggregation, max_length)


def _cispo_always_per_token(logp, old_logp, advantages, mask, ratio_cap=5.0,
                            aggregation="per_token", max_length=None):
    return L.cispo_loss(logp, old_logp, advantages, mask, ratio_cap)


def _cispo_ppo_surrogate(logp, old_logp, advantages, mask, ratio_cap=5.0,
                         aggregation="per_token", max_length=None):
    return L.ppo_clip_loss(logp, old_logp, advantages, mask, 0.2, ratio_cap - 1, aggregation,
                           max_length)


def _agg_empty_rows_counted(per_token_loss, mask, mode="per_sequence", max_length=None):
    if mode != "per_sequence":
        return L.aggregate_loss(per_token_loss, mask, mode, max_length)
    m = jnp.asarray(mask, jnp.float32)
    return jnp.mean(jnp.sum(jnp.where(m > 0, per_token_loss, 0), 1) / jnp.maximum(m.sum(1), 1))


def _agg_token_mean_over_all(per_token_loss, mask, mode="per_sequence", max_length=None):
    if mode != "per_token":
        return L.aggregate_loss(per_token_loss, mask, mode, max_length)
    m = jnp.asarray(mask, jnp.float32)
    return jnp.sum(jnp.where(m > 0, per_token_loss, 0)) / m.size


def _agg_ignores_max_length(per_token_loss, mask, mode="per_sequence", max_length=None):
    return L.aggregate_loss(per_token_loss, mask, mode)


def _agg_nan_when_empty(per_token_loss, mask, mode="per_sequence", max_length=None):
    m = jnp.asarray(mask, jnp.float32)
    if mode != "per_token":
        return L.aggregate_loss(per_token_loss, mask, mode, max_length)
    return jnp.sum(jnp.where(m > 0, per_token_loss, 0)) / jnp.sum(m)


def _tis_two_sided(learner_logp, sampler_logp, cap=2.0, log_clamp=10.0):
    w = jnp.exp(jnp.clip(learner_logp - sampler_logp, -log_clamp, log_clamp))
    return jax.lax.stop_gradient(jnp.clip(w, 1 / cap, cap))


def _tis_no_stop_gradient(learner_logp, sampler_logp, cap=2.0, log_clamp=10.0):
    return jnp.minimum(jnp.exp(jnp.clip(learner_logp - sampler_logp, -log_clamp, log_clamp)), cap)


def _tis_no_clamp(learner_logp, sampler_logp, cap=2.0, log_clamp=10.0):
    return jax.lax.stop_gradient(jnp.minimum(jnp.exp(learner_logp - sampler_logp), cap))


def _gae_over_all_positions(rewards, values, mask, gamma=1.0, lam=0.95):
    """Runs through padding as if it were part of the episode, then masks the output."""
    m = jnp.asarray(mask, jnp.float32)
    adv, _ = L.compute_gae(rewards, values, jnp.ones_like(m), gamma, lam)
    adv = jnp.where(m > 0, adv, 0.0)
    return adv, jnp.where(m > 0, adv + values, 0.0)


def _gae_without_lambda(rewards, values, mask, gamma=1.0, lam=0.95):
    return L.compute_gae(rewards, values, mask, gamma, 1.0)


def _gae_returns_are_advantages(rewards, values, mask, gamma=1.0, lam=0.95):
    adv, _ = L.compute_gae(rewards, values, mask, gamma, lam)
    return adv, adv


def _gae_resets_off_mask(rewards, values, mask, gamma=1.0, lam=0.95):
    """Treats every masked-out position as an episode end (zero value and advantage carried)."""
    m = jnp.asarray(mask, jnp.float32)

    def step(carry, x):
        nv, na = carry
        r, v, mm = x
        a = r + gamma * nv - v + gamma * lam * na
        keep = mm > 0
        return (jnp.where(keep, v, 0.0), jnp.where(keep, a, 0.0)), jnp.where(keep, a, 0.0)

    z = jnp.zeros(m.shape[0])
    _, adv = jax.lax.scan(step, (z, z), (rewards.T, values.T, m.T), reverse=True)
    adv = adv.T
    return adv, jnp.where(m > 0, adv + values, 0.0)


def _grpo_step_variant(batch_advantages=False, unshifted=False, unclipped=False):
    """A GRPO step (6.9) written out, with one of three common mistakes switched on."""

    def step(params, tokens, mask, rewards, old_logp, ref_logp, model_config, beta=0.0,
             clip_low=0.2, clip_high=0.2, aggregation="per_sequence", scale=True,
             temperature=1.0):
        r = jnp.asarray(rewards)
        if batch_advantages:  # one baseline for the whole batch, not one per group
            adv = (r - r.mean()) / (jnp.std(r, ddof=1) + 1e-4)
        else:
            adv = L.grpo_advantages(r, scale)
        adv = jnp.broadcast_to(adv.reshape(-1, 1), mask.shape)

        def loss_fn(params):
            logits = gpt.forward(params, tokens, model_config) / temperature
            if unshifted:  # logits[:, t] scored against tokens[:, t]
                logp = log_probs_from_logits(logits, tokens)
            else:
                logp = jnp.pad(log_probs_from_logits(logits[:, :-1], tokens[:, 1:]),
                               ((0, 0), (1, 0)))
            logp = jnp.where(mask > 0, logp, 0.0)
            rho = jnp.exp(logp - old_logp)
            objective = rho * adv if unclipped else L.ppo_objective(rho, adv, clip_low, clip_high)
            k3 = kl.kl_k3(logp, ref_logp)
            return (L.aggregate_loss(-objective, mask, aggregation)
                    + beta * L.aggregate_loss(k3, mask, aggregation)), logp

        (loss, logp), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, grads, logp

    return step


WRONG = [
    ("grpo_step", _grpo_step_variant(batch_advantages=True), "eq. 57 per group of G"),
    ("grpo_step", _grpo_step_variant(unshifted=True), "shift by one"),
    ("grpo_step", _grpo_step_variant(unclipped=True), "clip(rho, 1 - clip_low, 1 + clip_high)"),
    ("rloo_advantages", _rloo_self_included, "mean of the OTHER three"),
    ("rloo_advantages", _rloo_over_columns, "one prompt per ROW"),
    ("rloo_advantages", _rloo_divide_by_G, "mean of the OTHER three"),
    ("ppo_objective", _ppo_max, "case table"),
    ("ppo_objective", _ppo_symmetric, "clip_high=0.28"),
    ("ppo_objective", _ppo_clipped_only, "the unclipped branch rho A is the smaller one"),
    ("ppo_objective", _ppo_unclipped, "clipped to (1 + eps) A, flat"),
    ("grpo_advantages", _grpo_ddof0, "ddof=1"),
    ("grpo_advantages", _grpo_eps_inside, "outside the square root"),
    ("grpo_advantages", _grpo_ignores_scale, "Dr. GRPO"),
    ("grpo_advantages", _grpo_batch_stats, "one group per ROW"),
    ("gspo_sequence_ratio", _gspo_product, "MEAN log-ratio"),
    ("gspo_sequence_ratio", _gspo_mean_over_T, "exp of the MEAN log-ratio"),
    ("gspo_sequence_ratio", _gspo_no_clamp, "LOG_RATIO_CLAMP"),
    ("cispo_loss", _cispo_no_stop_gradient, "stop_gradient"),
    ("cispo_loss", _cispo_two_sided, "no lower clip"),
    ("cispo_loss", _cispo_always_per_token, "aggregation='per_sequence'"),
    ("cispo_loss", _cispo_ppo_surrogate, "-min(rho, cap) A log pi"),
    ("aggregate_loss", _agg_empty_rows_counted, "left out of the mean"),
    ("aggregate_loss", _agg_token_mean_over_all, "33 / 15"),
    ("aggregate_loss", _agg_ignores_max_length, "max_length 10"),
    ("aggregate_loss", _agg_nan_when_empty, "not 0/0 = NaN"),
    ("tis_weights", _tis_two_sided, "one-sided"),
    ("tis_weights", _tis_no_stop_gradient, "stop_gradient"),
    ("tis_weights", _tis_no_clamp, "min(exp(clip(log-ratio, -10, 10)), 2)"),
    ("compute_gae", _gae_over_all_positions, "no bootstrap from padding"),
    ("compute_gae", _gae_without_lambda, "V after the last token is 0"),
    ("compute_gae", _gae_returns_are_advantages, "returns = advantages + values"),
    ("compute_gae", _gae_resets_off_mask, "positions off the mask are skipped"),
]


@pytest.mark.parametrize("name, wrong, hint", WRONG, ids=lambda x: getattr(x, "__name__", None))
def test_checks_catch_wrong_implementations_with_a_useful_hint(name, wrong, hint):
    with pytest.raises(Mismatch) as caught:
        getattr(checks, name)(wrong)
    assert hint in str(caught.value), str(caught.value)


def test_grader_reports_the_book_section_for_a_wrong_implementation():
    from rlhf_book.textbook import grading

    result = grading.check("6.1", _rloo_self_included, quiet=True)
    assert result.status == grading.FAILING
    assert "§6.1.4" in result.hint and "mean of the OTHER three" in result.hint
    assert grading.check("6.1", L.rloo_advantages, quiet=True).status == grading.PASSED


def test_exercise_regions_stubs_and_guide_markers():
    source = pathlib.Path(L.__file__).read_text()
    assert len(stubs.solution_regions(source)) == len(FUNCTIONS)
    loop_source = pathlib.Path(ch06_loop.__file__).read_text()
    assert len(stubs.solution_regions(loop_source)) == 1  # 6.9, the loop-level exercise
    chapter = catalog.get_chapter("ch06")
    assert tuple(e.function for e in chapter.exercises) == (*FUNCTIONS, "grpo_step")
    assert [e.id for e in chapter.exercises] == [f"6.{k}" for k in range(1, len(FUNCTIONS) + 2)]
    assert catalog.get_exercise("6.9").difficulty == 3
    namespace = {}
    exec(compile(stubs.stub_source(chapter), "stub", "exec"), namespace)
    M = jnp.ones((2, 3))
    valid_args = {"rloo_advantages": (M,), "ppo_objective": (M, M),
                  "grpo_advantages": (M,), "gspo_sequence_ratio": (M, M, M),
                  "cispo_loss": (M, M, jnp.ones(2), M), "aggregate_loss": (M, M),
                  "tis_weights": (M, M), "compute_gae": (M, M, M)}
    valid_args["grpo_step"] = (None, jnp.ones((2, 3), jnp.int32), M, jnp.ones((1, 2)), M, M,
                               None)
    for function in (*FUNCTIONS, "grpo_step"):
        # the stub keeps the contract part of the docstring (stubs.split_docstring)
        library = getattr(L if function in FUNCTIONS else ch06_loop, function)
        assert namespace[function].__doc__ == stubs.split_docstring(library.__doc__)[0]
        with pytest.raises(NotImplementedError, match="Exercise 6."):
            namespace[function](*valid_args[function])
    names = re.findall(r"^# \[guide:([a-z0-9-]+)\]$", source, re.M)
    assert len(names) == len(set(names)) == source.count("# [/guide]")
    assert {"baselines", "policy-gradient-loss", "ppo-objective", "value-loss",
            "grpo-advantages", "grpo-loss", "gspo", "cispo", "aggregate-loss", "tis",
            "kl-in-reward", "gae"} <= set(names)
    kl_source = pathlib.Path(kl.__file__).read_text()  # the estimators live in lm (shared)
    assert "# [guide:kl-estimators]" in kl_source
