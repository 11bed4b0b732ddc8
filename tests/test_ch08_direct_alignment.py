"""Chapter 8's losses: a worked pair computed by hand, the grading checks' float64 oracles for
each formula (per-pair losses ``[N]``), eq. 108's gradient, invariances, extreme inputs and bad
shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_book import ch08_direct_alignment as ch08
from rlhf_book.ch08_direct_alignment import experiments as ex
from rlhf_book.textbook.checks import ch08_direct_alignment as checks

BETA = 0.1
# A worked pair: pc = -10, pr = -12, rc = rr = -11, so h = 2.
PC, PR, RC, RR = (jnp.array([v]) for v in (-10.0, -12.0, -11.0, -11.0))


def np_log_sigmoid(z):
    return -np.logaddexp(0.0, -z)


def mean_of(loss):
    """A per-pair loss of :mod:`ch08.losses` as the batch mean: a scalar to differentiate."""
    return lambda *a, **k: jnp.mean(loss(*a, **k))


def random_pairs(n=64, seed=0, scale=5.0):
    rng = np.random.default_rng(seed)
    return [rng.normal(-20.0, scale, n) for _ in range(4)]


# ----------------------------------------------------------------------------------------------
# The worked example


def test_dpo_worked_example():
    h = ch08.dpo_logits(PC, PR, RC, RR)
    assert float(h[0]) == 2.0
    assert ch08.dpo_loss(PC, PR, RC, RR, BETA).shape == (1,)  # one loss per pair
    assert float(ch08.dpo_loss(PC, PR, RC, RR, BETA)[0]) == pytest.approx(0.598139, abs=1e-6)
    assert float(ch08.dpo_gradient_weight(PC, PR, RC, RR, BETA)[0]) == pytest.approx(0.450166,
                                                                                      abs=1e-6)
    assert float(ch08.implicit_reward(PC, RC, BETA)[0]) == pytest.approx(0.1, abs=1e-6)
    assert float(ch08.implicit_reward(PR, RR, BETA)[0]) == pytest.approx(-0.1, abs=1e-6)
    # the other losses on the same pair, by hand
    assert float(ch08.ipo_loss(PC, PR, RC, RR, BETA)[0]) == pytest.approx(9.0, abs=1e-5)
    assert float(ch08.dpo_loss(PC, PR, RC, RR, BETA, label_smoothing=0.1)[0]) == pytest.approx(
        0.618139, abs=1e-6)
    assert float(ch08.robust_dpo_loss(PC, PR, RC, RR, BETA, 0.1)[0]) == pytest.approx(0.573139,
                                                                                      abs=1e-6)
    assert float(ch08.hinge_loss(PC, PR, RC, RR, BETA)[0]) == pytest.approx(0.8, abs=1e-6)


def test_dpo_gradient_is_eq_108():
    """dL/dpc = -beta sigmoid(-beta h) and dL/dpr = +beta sigmoid(-beta h): -0.0450166."""
    grads = jax.grad(mean_of(ch08.dpo_loss), argnums=(0, 1, 2, 3))(PC, PR, RC, RR, BETA)
    assert float(grads[0][0]) == pytest.approx(-0.0450166, abs=1e-7)
    assert float(grads[1][0]) == pytest.approx(0.0450166, abs=1e-7)
    # the reference is frozen: no gradient flows into it
    assert float(grads[2][0]) == 0.0 and float(grads[3][0]) == 0.0


def test_dpo_gradient_weight_on_a_batch_matches_jax_grad():
    pc, pr, rc, rr = (jnp.asarray(x) for x in random_pairs(16, seed=1))
    g_pc = jax.grad(mean_of(ch08.dpo_loss))(pc, pr, rc, rr, 0.3)
    w = ch08.dpo_gradient_weight(pc, pr, rc, rr, 0.3)
    np.testing.assert_allclose(g_pc, -0.3 * w / 16, rtol=1e-5, atol=1e-9)


def test_at_the_reference_the_loss_is_log_2_and_the_weight_one_half():
    pc, pr, _, _ = (jnp.asarray(x) for x in random_pairs(8, seed=2))
    np.testing.assert_allclose(ch08.dpo_loss(pc, pr, pc, pr, BETA), np.log(2.0), atol=1e-6)
    np.testing.assert_allclose(ch08.dpo_gradient_weight(pc, pr, pc, pr, BETA), 0.5)


# ----------------------------------------------------------------------------------------------
# Each loss against a float64 transcription of its formula (the grading checks' oracles)


@pytest.mark.parametrize("beta", [0.05, 0.1, 1.0])
def test_pairwise_losses_match_numpy(beta):
    pc, pr, rc, rr = random_pairs(seed=3)
    h = (pc - pr) - (rc - rr)
    eps = 0.2
    expected = {
        "dpo": checks.dpo_loss_oracle(pc, pr, rc, rr, beta),
        "cdpo": checks.dpo_loss_oracle(pc, pr, rc, rr, beta, eps),
        "robust": (-(1 - eps) * np_log_sigmoid(beta * h)
                   + eps * np_log_sigmoid(-beta * h)) / (1 - 2 * eps),
        "ipo": checks.ipo_loss_oracle(pc, pr, rc, rr, beta),
        "hinge": np.maximum(0.0, 1 - beta * h),
    }
    args = [jnp.asarray(x, jnp.float32) for x in (pc, pr, rc, rr)]
    got = {
        "dpo": ch08.dpo_loss(*args, beta),
        "cdpo": ch08.dpo_loss(*args, beta, label_smoothing=eps),
        "robust": ch08.robust_dpo_loss(*args, beta, eps),
        "ipo": ch08.ipo_loss(*args, beta),
        "hinge": ch08.hinge_loss(*args, beta),
    }
    for name in expected:
        assert got[name].shape == (len(pc),), name
        np.testing.assert_allclose(got[name], expected[name], rtol=2e-5, atol=1e-6, err_msg=name)


def test_simpo_and_orpo_match_numpy():
    rng = np.random.default_rng(4)
    ac, ar = rng.uniform(-3.0, -0.01, 50), rng.uniform(-3.0, -0.01, 50)
    beta, gamma = 2.0, 0.5
    np.testing.assert_allclose(ch08.simpo_loss(jnp.asarray(ac), jnp.asarray(ar), beta, gamma),
                               checks.simpo_loss_oracle(ac, ar, beta, gamma), rtol=2e-5)
    np.testing.assert_allclose(ch08.orpo_odds_ratio_loss(jnp.asarray(ac), jnp.asarray(ar)),
                               checks.orpo_loss_oracle(ac, ar), rtol=2e-5)


@pytest.mark.parametrize("kl", [0.3, -0.5])  # a negative estimate is clamped to 0
def test_kto_matches_numpy(kl):
    rng = np.random.default_rng(5)
    pc, rc = rng.normal(-20, 3, 7), rng.normal(-20, 3, 7)
    pr, rr = rng.normal(-20, 3, 4), rng.normal(-20, 3, 4)  # unpaired: different counts
    beta, lam_d, lam_u = 0.1, 1.0, 1.33
    z0 = max(kl, 0.0)
    chosen = lam_d * (1 - 1 / (1 + np.exp(-beta * ((pc - rc) - z0))))
    rejected = lam_u * (1 - 1 / (1 + np.exp(-beta * (z0 - (pr - rr)))))
    expected = np.concatenate([chosen, rejected])  # one loss per completion, desirable first
    got = ch08.kto_loss(*(jnp.asarray(x) for x in (pc, pr, rc, rr)), kl, beta, lam_d, lam_u)
    np.testing.assert_allclose(got, expected, rtol=2e-5)


def test_sequence_log_probs_sum_and_average_over_the_mask():
    rng = np.random.default_rng(6)
    token_logps = -rng.uniform(0, 3, (3, 6))
    mask = np.array([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]], np.float32)
    total = ch08.sequence_log_probs(jnp.asarray(token_logps), jnp.asarray(mask))
    mean = ch08.sequence_log_probs(jnp.asarray(token_logps), jnp.asarray(mask), average=True)
    for n in range(2):
        kept = token_logps[n][mask[n] > 0]
        assert float(total[n]) == pytest.approx(kept.sum(), rel=1e-6)
        assert float(mean[n]) == pytest.approx(kept.mean(), rel=1e-6)
    assert float(total[2]) == 0.0 and np.isfinite(float(mean[2]))  # an empty completion


# ----------------------------------------------------------------------------------------------
# Gradients, invariances, optima


# Each per-pair loss as the batch mean (a scalar), as a loop takes it.
LOSSES = {
    "dpo": lambda a, b, c, d: jnp.mean(ch08.dpo_loss(a, b, c, d, 0.3)),
    "cdpo": lambda a, b, c, d: jnp.mean(ch08.dpo_loss(a, b, c, d, 0.3, 0.1)),
    "robust": lambda a, b, c, d: jnp.mean(ch08.robust_dpo_loss(a, b, c, d, 0.3, 0.1)),
    "ipo": lambda a, b, c, d: jnp.mean(ch08.ipo_loss(a, b, c, d, 0.3)),
    "kto": lambda a, b, c, d: jnp.mean(ch08.kto_loss(a, b, c, d, 0.2, 0.3)),
    "simpo": lambda a, b, c, d: jnp.mean(ch08.simpo_loss(a / 10, b / 10, 2.0, 0.5)),
    "orpo": lambda a, b, c, d: jnp.mean(ch08.orpo_odds_ratio_loss(a / 10, b / 10)),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_match_finite_differences(name):
    jax.config.update("jax_enable_x64", True)
    try:
        pc, pr, rc, rr = (jnp.asarray(x, jnp.float64) for x in random_pairs(5, seed=7, scale=2.0))
        loss = LOSSES[name]
        grad = jax.grad(loss, argnums=(0, 1))(pc, pr, rc, rr)
        step = 1e-6
        for which, g in enumerate(grad):
            for i in range(5):
                e = jnp.zeros(5, jnp.float64).at[i].set(step)
                args = [pc, pr]
                plus, minus = list(args), list(args)
                plus[which], minus[which] = args[which] + e, args[which] - e
                fd = (loss(*plus, rc, rr) - loss(*minus, rc, rr)) / (2 * step)
                assert float(g[i]) == pytest.approx(float(fd), rel=1e-5, abs=1e-9), (which, i)
    finally:
        jax.config.update("jax_enable_x64", False)


def test_invariances():
    pc, pr, rc, rr = (jnp.asarray(x) for x in random_pairs(1, seed=8))
    base = float(ch08.dpo_loss(pc, pr, rc, rr, BETA)[0])
    # a prompt-level shift log Z of the policy's two log-probs changes nothing
    assert float(ch08.dpo_loss(pc + 3.0, pr + 3.0, rc, rr, BETA)[0]) == pytest.approx(base,
                                                                                     abs=1e-5)
    # swapping chosen and rejected: loss(h) - loss(-h) = -beta h
    h = float(ch08.dpo_logits(pc, pr, rc, rr)[0])
    swapped = float(ch08.dpo_loss(pr, pc, rr, rc, BETA)[0])
    assert base - swapped == pytest.approx(-BETA * h, abs=1e-5)
    # beta -> 0: log 2
    assert float(ch08.dpo_loss(pc, pr, rc, rr, 1e-7)[0]) == pytest.approx(np.log(2.0), abs=1e-6)


def test_cdpo_and_ipo_have_finite_optima():
    beta, eps = 0.5, 0.1
    h_star = np.log((1 - eps) / eps) / beta  # cDPO's optimum

    def cdpo(h):
        return ch08.dpo_loss(h, jnp.zeros(1), jnp.zeros(1), jnp.zeros(1), beta, eps)[0]

    assert abs(float(jax.grad(cdpo)(jnp.array([h_star]))[0])) < 1e-6
    assert float(jax.grad(cdpo)(jnp.array([h_star + 1.0]))[0]) > 0  # past it the loss rises

    def ipo(h):
        return ch08.ipo_loss(h, jnp.zeros(1), jnp.zeros(1), jnp.zeros(1), beta)[0]

    assert float(jax.grad(ipo)(jnp.array([1 / (2 * beta)]))[0]) == 0.0
    def dpo(h):
        return ch08.dpo_loss(h, jnp.zeros(1), jnp.zeros(1), jnp.zeros(1), beta)[0]

    # plain DPO has no finite optimum: its gradient stays negative however large h grows
    for h in (h_star, 10.0, 30.0):
        assert float(jax.grad(dpo)(jnp.array([h]))[0]) < 0


def test_jit_equals_eager():
    args = [jnp.asarray(x, jnp.float32) for x in random_pairs(9, seed=9)]
    for name, loss in LOSSES.items():
        np.testing.assert_allclose(float(jax.jit(loss)(*args)), float(loss(*args)), rtol=1e-6,
                                   err_msg=name)


# ----------------------------------------------------------------------------------------------
# Extreme inputs and bad input


def test_no_nan_or_inf_for_extreme_log_probs():
    big = jnp.array([1e4, -1e4, 0.0])
    zero = jnp.zeros(3)
    for name, loss in LOSSES.items():
        if name in ("simpo", "orpo"):
            continue
        value, grads = jax.value_and_grad(loss, argnums=(0, 1))(big, -big, zero, zero)
        assert np.isfinite(float(value)), name
        assert all(np.all(np.isfinite(g)) for g in grads), name
    # ORPO at P -> 1 (average log-prob 0) and P -> 0 (very negative)
    for ac in (jnp.array([0.0, -1e-12]), jnp.array([-1e4, -50.0])):
        value, grads = jax.value_and_grad(mean_of(ch08.orpo_odds_ratio_loss), argnums=(0, 1))(
            ac, jnp.array([-1.0, -1.0]))
        assert np.isfinite(float(value)) and all(np.all(np.isfinite(g)) for g in grads)


def test_bad_input_raises_value_error():
    one, two = jnp.zeros(3), jnp.zeros(4)
    with pytest.raises(ValueError, match="policy_rejected_logps must have the shape"):
        ch08.dpo_loss(one, two, one, one)
    with pytest.raises(ValueError, match=r"policy_chosen_logps must have shape \[N\]"):
        ch08.dpo_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="beta must be > 0"):
        ch08.ipo_loss(one, one, one, one, beta=0.0)
    with pytest.raises(ValueError, match="label_smoothing must be <= 0.5"):
        ch08.dpo_loss(one, one, one, one, 0.1, label_smoothing=0.6)
    with pytest.raises(ValueError, match="label_smoothing must be"):
        ch08.robust_dpo_loss(one, one, one, one, 0.1, label_smoothing=0.5)
    with pytest.raises(ValueError, match=r"kl_reference_point must have shape \[\], got shape"):
        ch08.kto_loss(one, two, one, two, jnp.zeros(2))
    with pytest.raises(ValueError, match="mask must have the shape"):
        ch08.sequence_log_probs(jnp.zeros((2, 3)), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="rewards must have the shape of ref_probs"):
        ch08.optimal_policy(jnp.ones(3) / 3, jnp.zeros(4), 0.5)
    with pytest.raises(ValueError, match=r"ref_probs must have shape \[N\]"):
        ch08.log_partition(jnp.ones((2, 3)) / 3, jnp.zeros((2, 3)), 0.5)


# ----------------------------------------------------------------------------------------------
# The derivation (book §8.1.2) on three responses: pi_ref = [0.5, 0.3, 0.2], r = [1, 0, 2]

REF, REWARDS = jnp.array([0.5, 0.3, 0.2]), jnp.array([1.0, 0.0, 2.0])
# beta: (pi*, Z, KL(pi* || pi_ref), E_pi*[r], J = beta log Z), computed by hand to 4 decimals
TOY_TABLE = {
    0.25: ([0.0438, 0.0005, 0.9558], 623.79, 1.3853, 1.9553, 1.6090),
    0.5: ([0.2477, 0.0201, 0.7322], 14.914, 0.7218, 1.7121, 1.3512),
    1.0: ([0.4333, 0.0956, 0.4711], 3.1370, 0.2322, 1.3755, 1.1433),
    2.0: ([0.4942, 0.1799, 0.3259], 1.6680, 0.0614, 1.1461, 1.0233),
    10.0: ([0.5038, 0.2735, 0.2227], 1.0969, 0.0025, 0.9492, 0.9246),
}


@pytest.mark.parametrize("beta", sorted(TOY_TABLE))
def test_optimal_policy_reproduces_the_toy_table(beta):
    probs, z, kl, expected_reward, value = TOY_TABLE[beta]
    pi = ch08.optimal_policy(REF, REWARDS, beta)
    np.testing.assert_allclose(pi, probs, atol=1e-4)
    assert float(jnp.exp(ch08.log_partition(REF, REWARDS, beta))) == pytest.approx(z, rel=1e-4)
    pi64 = np.asarray(pi, np.float64)
    assert np.sum(pi64 * np.log(pi64 / np.asarray(REF))) == pytest.approx(kl, abs=1e-3)
    assert float(jnp.sum(pi * REWARDS)) == pytest.approx(expected_reward, abs=1e-4)
    assert float(ch08.regularized_objective(pi, REF, REWARDS, beta)) == pytest.approx(value,
                                                                                     abs=1e-4)


def test_the_optimum_is_beta_log_z_and_any_other_policy_falls_short_by_beta_kl():
    """Eqs. 94, 95: J(pi) = beta log Z - beta KL(pi || pi*) for every pi; equality only at pi*."""
    beta = 0.5
    log_z = float(ch08.log_partition(REF, REWARDS, beta))
    star = np.asarray(ch08.optimal_policy(REF, REWARDS, beta), np.float64)
    rng = np.random.default_rng(10)
    for probs in rng.dirichlet(np.ones(3), size=20):
        j = float(ch08.regularized_objective(jnp.asarray(probs), REF, REWARDS, beta))
        kl_to_star = np.sum(probs * np.log(probs / star))
        assert j == pytest.approx(beta * log_z - beta * kl_to_star, abs=1e-4)
        assert j < beta * log_z
    assert float(ch08.regularized_objective(jnp.asarray(star), REF, REWARDS, beta)) == \
        pytest.approx(beta * log_z, abs=1e-5)


def test_the_reward_is_recovered_up_to_beta_log_z_and_bradley_terry_cannot_see_it():
    """Eq. 100 gives r back exactly with beta log Z; without it (DPO's implicit reward, eq. 80)
    r shifted by -beta log Z, which cancels in every Bradley-Terry probability (eqs. 101, 102,
    103, 104)."""
    beta = 0.5
    star = ch08.optimal_policy(REF, REWARDS, beta)
    log_z = ch08.log_partition(REF, REWARDS, beta)
    np.testing.assert_allclose(ch08.reward_from_policy(star, REF, beta, log_z), REWARDS, atol=1e-5)
    implicit = ch08.reward_from_policy(star, REF, beta)
    np.testing.assert_allclose(implicit, REWARDS - beta * log_z, atol=1e-5)
    bt = jax.nn.sigmoid(implicit[:, None] - implicit[None, :])
    np.testing.assert_allclose(bt, jax.nn.sigmoid(REWARDS[:, None] - REWARDS[None, :]), atol=1e-6)
    # sigmoid(1) = 0.7311 for (y1, y2) and (y3, y1), sigmoid(2) = 0.8808 for (y3, y2)
    assert float(bt[0, 1]) == pytest.approx(0.7311, abs=1e-4)
    assert float(bt[2, 0]) == pytest.approx(0.7311, abs=1e-4)
    assert float(bt[2, 1]) == pytest.approx(0.8808, abs=1e-4)


def test_minimising_dpo_on_exact_preferences_recovers_the_optimal_policy():
    """With every pair covered and labelled by BT(r), the DPO minimiser is pi* (eq. 95)."""
    import optax

    rng = np.random.default_rng(11)
    ref = jnp.asarray(rng.dirichlet(np.ones(5)), jnp.float32)
    rewards = jnp.asarray(rng.normal(0, 1, 5), jnp.float32)
    beta = 0.5
    optimizer = optax.adam(0.05)

    @jax.jit
    def fit(logits):
        def step(carry, _):
            logits, state = carry
            grads = jax.grad(ch08.population_dpo_loss)(logits, ref, rewards, beta)
            updates, state = optimizer.update(grads, state)
            return (optax.apply_updates(logits, updates), state), None

        return jax.lax.scan(step, (logits, optimizer.init(logits)), None, length=3000)[0][0]

    pi = jax.nn.softmax(fit(jnp.log(ref)))  # start at the reference
    np.testing.assert_allclose(pi, ch08.optimal_policy(ref, rewards, beta), atol=1e-3)
    # the centred implicit rewards equal the centred true rewards
    implicit = ch08.reward_from_policy(pi, ref, beta)
    np.testing.assert_allclose(implicit - implicit.mean(), rewards - rewards.mean(), atol=1e-3)


def test_world_summary_pairs_by_question_and_gain_sources_add_up():
    """``experiments.summarize`` pairs the change by question; ``gain_sources`` splits it exactly
    into the part from the kinds' proportions and the part from style within each kind."""
    rng = np.random.default_rng(0)

    def fake(p_right, p_wrong, style):
        kind = rng.choice(3, size=(50, 4), p=[p_right, p_wrong, 1 - p_right - p_wrong])
        gold = np.select([kind == 0, kind == 1], [style, -1.0], -0.5) + rng.normal(0, 0.05,
                                                                                   kind.shape)
        return {"gold": gold, "right": kind == 0, "wrong": kind == 1, "none": kind == 2,
                "bytes": np.full(kind.shape, 20.0)}

    base, new = fake(0.2, 0.3, 0.8), fake(0.3, 0.2, 0.95)
    s = ex.summarize(new, base)
    d = new["gold"].mean(1) - base["gold"].mean(1)
    assert s["d_gold"] == pytest.approx(new["gold"].mean() - base["gold"].mean())
    assert s["d_gold_se"] == pytest.approx(d.std(ddof=1) / np.sqrt(50))
    assert s["d_right"] == pytest.approx(new["right"].mean() - base["right"].mean())
    g = ex.gain_sources(new, base)
    assert g["kinds"] + g["style"] == pytest.approx(s["d_gold"], abs=1e-12)
    assert g["gold_right"] == pytest.approx(new["gold"][new["right"]].mean())
    same = ex.gain_sources(base, base)
    assert same["kinds"] == pytest.approx(0.0) and same["style"] == pytest.approx(0.0)


def test_world_settings_share_one_budget():
    """Offline and online DPO run on one budget (steps, pairs per step, rate, beta), and the
    evaluation is every rephrased fact question plus the held-out-fact row."""
    off, on = ex.OFFLINE_CONFIG, ex.ONLINE_CONFIG
    assert (off.steps, off.batch_size, off.learning_rate, off.beta) == \
        (on.steps, on.batch_size, on.learning_rate, on.beta)
    assert on.on_policy and not off.on_policy
    sets = ex.eval_questions()
    assert len(sets["rephrased"]) == 520 and all(q.rephrased for q in sets["rephrased"])
    assert len(sets["unseen"]) == ex.N_EVAL_UNSEEN == len({q.prompt for q in sets["unseen"]})
