"""Chapter 3 (training overview): returns, the thermostat, CartPole, REINFORCE, eq. 11, recipes.

Expected values come from the float64 loops written from the equations in
``rlhf_book.textbook.checks.ch03_training_overview`` (``returns_loop``, ``gym_step``,
``gym_steps``, ``reinforce_loop``; written once, shared with the grader), a float64 loop of the
thermostat, closed forms, and numbers computed independently of the library: the thermostat
returns 95 / 8 / 0 of our dynamics, two CartPole test vectors that ``gymnasium``'s
``CartPole-v1`` reproduces, the episode lengths 9 / 56 / 500 of three hand-written rules, and
the data sizes the book states for its recipes.
"""

import dataclasses
import math
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_book import ch03_training_overview as ch3
from rlhf_book.textbook import catalog, stubs
from rlhf_book.textbook.checks import Mismatch
from rlhf_book.textbook.checks import ch03_training_overview as checks

# ----------------------------------------------------------------------------------------------
# §3.1 returns


returns_loop = checks.returns_loop


@pytest.mark.parametrize("gamma", [0.0, 0.3, 0.9, 0.99, 1.0])
def test_discounted_returns_matches_loop(gamma):
    rng = np.random.default_rng(1)
    rewards = rng.standard_normal((5, 40)).astype(np.float32)
    dones = rng.random((5, 40)) < 0.1
    np.testing.assert_allclose(ch3.discounted_returns(rewards, gamma), returns_loop(rewards, gamma),
                               atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(ch3.discounted_returns(rewards, gamma, dones),
                               returns_loop(rewards, gamma, dones), atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(ch3.discounted_returns(rewards[0], gamma),
                               returns_loop(rewards[0], gamma), atol=1e-4, rtol=1e-5)


def test_discounted_returns_small_cases():
    # r = (1, 0, 1, 1), gamma = 1 -> (3, 2, 2, 1)
    np.testing.assert_allclose(ch3.discounted_returns(jnp.array([1, 0, 1, 1]), 1.0), [3, 2, 2, 1])
    # G_2 = 4, G_1 = 2 + 0.5 * 4 = 4, G_0 = 1 + 0.5 * 2 + 0.25 * 4 = 3
    np.testing.assert_allclose(ch3.discounted_returns(jnp.array([1.0, 2.0, 4.0]), 0.5), [3, 4, 4])
    np.testing.assert_allclose(ch3.discounted_returns(jnp.array([1.0, 2.0, 4.0]), 0.0), [1, 2, 4])
    # constant rewards: a geometric series
    gamma, T = 0.95, 30
    expected = [(1 - gamma ** (T - t)) / (1 - gamma) for t in range(T)]
    np.testing.assert_allclose(ch3.discounted_returns(jnp.ones(T), gamma), expected, rtol=1e-5)
    # episodes laid end to end: a done cuts the sum after its own reward
    np.testing.assert_allclose(
        ch3.discounted_returns(jnp.ones((1, 4)), 1.0, jnp.array([[0, 1, 0, 1]])), [[2, 1, 2, 1]])


def test_discounted_return_is_eq2():
    rng = np.random.default_rng(2)
    rewards = rng.standard_normal((3, 12)).astype(np.float32)
    for gamma in (0.0, 0.5, 0.9, 1.0):
        expected = [sum(gamma**t * row[t] for t in range(12)) for row in rewards.astype(np.float64)]
        np.testing.assert_allclose(ch3.discounted_return(rewards, gamma), expected, atol=1e-5)
        np.testing.assert_allclose(ch3.discounted_return(rewards, gamma),
                                   ch3.discounted_returns(rewards, gamma)[:, 0], atol=1e-5)
    np.testing.assert_allclose(ch3.discounted_return(rewards, 1.0), rewards.sum(-1), rtol=1e-5)


def test_discounted_returns_jit_and_vmap():
    rewards = jnp.asarray(np.random.default_rng(3).standard_normal((4, 9)), jnp.float32)
    eager = ch3.discounted_returns(rewards, 0.9)
    np.testing.assert_allclose(jax.jit(lambda r: ch3.discounted_returns(r, 0.9))(rewards), eager,
                               atol=1e-6)
    np.testing.assert_allclose(jax.jit(ch3.discounted_returns)(rewards, 0.9), eager, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(lambda r: ch3.discounted_returns(r, 0.9))(rewards), eager,
                               atol=1e-6)


# ----------------------------------------------------------------------------------------------
# §3.1.1 the thermostat


def thermostat_loop(threshold, heat_rate=1.5, loss_rate=0.05, outside=50.0, start=65.0, steps=100):
    """ThermostatConfig's dynamics, with eq. 3's rule (on iff T < threshold), in float64."""
    temperature, total = start, 0
    for _ in range(steps):
        total += abs(temperature - 70.0) <= 2.0
        heater = 1.0 if temperature < threshold else 0.0
        temperature = temperature + heat_rate * heater - loss_rate * (temperature - outside)
    return total


def test_thermostat_reward_and_policy_boundaries():
    # 68 and 72 are inside the band (edges included), 67.9 and 72.1 outside
    np.testing.assert_array_equal(ch3.thermostat_reward(jnp.array([68.0, 72.0, 67.9, 72.1, 70.0])),
                                  [1, 1, 0, 0, 1])
    # eq. 3: on strictly below 70
    np.testing.assert_array_equal(ch3.threshold_policy(jnp.array([69.9, 70.0, 65.0]), 70.0, 70.0),
                                  [1, 0, 1])
    # the ramp: half-way between low and high -> 1/2
    np.testing.assert_allclose(ch3.threshold_policy(jnp.array([67.0, 68.0, 70.0, 71.0, 72.0]), 68.0,
                                                    72.0), [1, 1, 0.5, 0.25, 0])
    np.testing.assert_array_equal(ch3.threshold_policy(jnp.array([10.0, 90.0]), math.inf, math.inf),
                                  [1, 1])


def test_thermostat_step_dynamics():
    cfg = ch3.ThermostatConfig()
    nxt, reward = ch3.thermostat_step(jnp.float32(65.0), 1, cfg)
    np.testing.assert_allclose(nxt, 65 + 1.5 - 0.05 * 15, rtol=1e-6)
    assert float(reward) == 0.0  # 65 is 5 degrees off the target
    nxt, reward = ch3.thermostat_step(jnp.float32(70.0), 0, cfg)
    np.testing.assert_allclose(nxt, 70 - 0.05 * 20, rtol=1e-6)
    assert float(reward) == 1.0
    # fixed points: always on settles at outside + h / c = 80, always off at 50
    always_on = ch3.rollout_thermostat(ch3.ThresholdPolicy(math.inf, math.inf),
                                       jax.random.PRNGKey(0), cfg, steps=400)
    np.testing.assert_allclose(always_on.temperature[-1], 80.0, atol=1e-3)


def test_thermostat_rollout_equals_python_loop():
    cfg = ch3.ThermostatConfig()
    for threshold in (66.0, 68.0, 69.0, 70.0, 72.0):
        traj = ch3.rollout_thermostat(ch3.ThresholdPolicy(threshold, threshold), jax.random.PRNGKey(0),
                                      cfg)
        assert traj.reward.shape == (100,)
        assert float(traj.reward.sum()) == thermostat_loop(threshold)
    # a random policy (epsilon = 1): the recorded actions replayed in Python give the same path
    traj = ch3.rollout_thermostat(ch3.ThresholdPolicy(70.0, 70.0, 1.0), jax.random.PRNGKey(5), cfg)
    temperature = 65.0
    for t in range(100):
        np.testing.assert_allclose(traj.temperature[t], temperature, atol=1e-3)
        temperature += 1.5 * float(traj.action[t]) - 0.05 * (temperature - 50.0)
    assert 20 < float(traj.action.sum()) < 80  # about half the steps heat


def test_thermostat_policy_comparison_as_the_book_describes():
    means = ch3.compare_thermostat_policies(episodes=400)
    # our float64 loop: eq. 3 keeps the room in band 95 steps of 100; always-on 8; always-off 0;
    # a random policy about 9
    assert means["eq. 3 (on below 70)"] == thermostat_loop(70.0) == 95
    assert means["always on"] == thermostat_loop(math.inf) == 8
    assert means["always off"] == thermostat_loop(-math.inf) == 0
    assert 6.0 < means["random"] < 13.0
    # §3.1.1: trial and error moves the agent from the random policy to the sensible rule
    assert means["eq. 3 (on below 70)"] > means["random"] + 50
    for threshold in (66, 67, 68, 69, 71, 72):
        assert means[f"on below {threshold}"] == thermostat_loop(threshold)


def test_eq3_is_not_optimal_under_strong_heating():
    # §3.1.1: eq. 3 "may not be optimal depending on the transition dynamics". With a 4 °F/step
    # heater the threshold 69 scores 99 and eq. 3's 70 scores 74.
    cfg = ch3.ThermostatConfig(heat_rate=4.0)
    thresholds = [66.0, 67.0, 68.0, 69.0, 70.0, 71.0]
    policies = {t: ch3.ThresholdPolicy(t, t) for t in thresholds}
    means = ch3.compare_thermostat_policies(policies, config=cfg, episodes=2)
    assert [means[t] for t in thresholds] == [thermostat_loop(t, heat_rate=4.0) for t in thresholds]
    assert means[69.0] == 99 and means[70.0] == 74
    assert max(means, key=means.get) == 69.0


# ----------------------------------------------------------------------------------------------
# §3.1.2 CartPole


def test_cartpole_reference_vectors():
    # computed from eqs. 5, 6, 7, 8, 9; gymnasium's CartPole-v1 env.step gives the same
    s = jnp.array([0.0, 0.0, 0.05, 0.0])
    nxt, reward, done = ch3.cartpole_step(s, jnp.int32(1))
    np.testing.assert_allclose(nxt, [0, 0.1943706, 0.05, -0.2764976], atol=1e-6)
    assert float(reward) == 1.0 and not bool(done)
    nxt, _, _ = ch3.cartpole_step(s, jnp.int32(0))
    np.testing.assert_allclose(nxt, [0, -0.1958020, 0.05, 0.3080299], atol=1e-6)


def test_cartpole_matches_gym_equations_on_random_states():
    rng = np.random.default_rng(0)
    n = 2000
    states = rng.uniform([-2.4, -3, -0.21, -3], [2.4, 3, 0.21, 3], (n, 4)).astype(np.float32)
    actions = rng.integers(0, 2, n).astype(np.int32)
    want_state, _, want_done = checks.gym_steps(states, actions)
    nxt, reward, done = ch3.cartpole_step(jnp.asarray(states), jnp.asarray(actions))
    np.testing.assert_allclose(nxt, want_state, atol=2e-5, rtol=1e-5)
    np.testing.assert_array_equal(reward, np.ones(n))
    clear = (np.abs(np.abs(want_state[:, 0]) - 2.4) > 1e-5) & (
        np.abs(np.abs(want_state[:, 2]) - 12 * 2 * math.pi / 360) > 1e-5)
    np.testing.assert_array_equal(np.asarray(done)[clear], want_done[clear])
    assert 0.05 < want_done.mean() < 0.95
    # jit and vmap are the eager computation
    for f in (jax.jit(ch3.cartpole_step), jax.vmap(ch3.cartpole_step),
              jax.jit(jax.vmap(ch3.cartpole_step))):
        for got, want in zip(f(jnp.asarray(states), jnp.asarray(actions)), (nxt, reward, done)):
            np.testing.assert_allclose(got, want, atol=1e-6)


def test_cartpole_termination_thresholds():
    limit = 12 * 2 * math.pi / 360
    states = jnp.array([[2.4, 0.0, 0.0, 0.0],      # on the x limit: not out (strict >)
                        [2.39, 1.0, 0.0, 0.0],     # 2.41 next: out
                        [-2.39, -1.0, 0.0, 0.0],   # -2.41 next: out
                        [0.0, 0.0, limit - 1e-4, 0.0],
                        [0.0, 0.0, limit - 1e-4, 0.1],   # +0.002 rad next: out
                        [0.0, 0.0, -limit + 1e-4, -0.1],
                        [0.0, 0.0, 0.25, -5.0]])   # out now, back in next step: not done
    _, reward, done = ch3.cartpole_step(states, jnp.zeros(7, jnp.int32))
    np.testing.assert_array_equal(done, [False, True, True, False, True, True, False])
    np.testing.assert_array_equal(reward, np.ones(7))  # the terminating step is rewarded too


def rollout_np(start, policy, steps=500):
    """Episode length from ``start`` under ``policy(state) -> action``, with the float64 step."""
    s = np.asarray(start, np.float64)
    for t in range(1, steps + 1):
        s, _, done = checks.gym_step(s, policy(s))
        if done:
            return t, s
    return steps, s


def episode_length_jax(policy, start=jnp.zeros(4), steps=500):
    def body(carry, _):
        s, alive = carry
        nxt, reward, done = ch3.cartpole_step(s, policy(s))
        return (jnp.where(alive, nxt, s), alive & ~done), reward * alive
    (final, _), rewards = jax.lax.scan(body, (start, jnp.bool_(True)), None, length=steps)
    return rewards.sum(), final


@pytest.mark.parametrize("name, policy, length", [
    ("constant push right", lambda s: 1, 9),
    ("bang-bang on theta", lambda s: 1 if s[2] > 0 else 0, 56),
    ("bang-bang on theta + theta_dot / 2", lambda s: 1 if s[2] + 0.5 * s[3] > 0 else 0, 500),
])
def test_cartpole_policies_from_rest(name, policy, length):
    # from s = 0, these three policies last 9, 56 and 500 steps
    n, final = rollout_np(np.zeros(4), policy)
    assert n == length
    jax_policy = {9: lambda s: jnp.int32(1), 56: lambda s: (s[2] > 0).astype(jnp.int32),
                  500: lambda s: (s[2] + 0.5 * s[3] > 0).astype(jnp.int32)}[length]
    got, jax_final = jax.jit(lambda: episode_length_jax(jax_policy))()
    assert int(got) == length
    if length == 9:
        np.testing.assert_allclose(final[2], -0.2152, atol=1e-4)  # the pole's final angle
        np.testing.assert_allclose(jax_final, final, atol=1e-4)


def test_cartpole_whole_random_rollouts_match_numpy():
    """rollout_cartpole's sampled actions, replayed through the float64 step from its start
    states, give the same states, the same termination step and the masks after it."""
    params = ch3.init_policy(jax.random.PRNGKey(0), 8)
    batch = jax.jit(lambda k: ch3.rollout_cartpole(params, k, 16, 120))(jax.random.PRNGKey(1))
    states, actions, mask = map(np.asarray, (batch.states, batch.actions, batch.mask))
    assert states.shape == (16, 120, 4) and actions.shape == mask.shape == (16, 120)
    lengths = []
    for e in range(16):
        s = states[e, 0].astype(np.float64)
        assert np.all(np.abs(s) <= 0.05)  # Gym's reset: U(-0.05, 0.05)^4
        length = 120
        for t in range(120):
            np.testing.assert_allclose(states[e, t], s, atol=1e-4)
            s, _, done = checks.gym_step(s, actions[e, t])
            if done:
                length = t + 1
                break
        lengths.append(length)
        np.testing.assert_array_equal(mask[e], np.arange(120) < length)
        np.testing.assert_array_equal(np.asarray(batch.rewards)[e], mask[e])
    assert 10 < np.mean(lengths) < 40  # a near-uniform policy lasts about 22 steps


def test_cartpole_reset_range():
    starts = jax.vmap(ch3.cartpole_reset)(jax.random.split(jax.random.PRNGKey(0), 1000))
    assert starts.shape == (1000, 4)
    assert float(jnp.abs(starts).max()) <= 0.05 and float(jnp.abs(starts).max()) > 0.049


# ----------------------------------------------------------------------------------------------
# REINFORCE


def test_reinforce_loss_matches_loop_and_gradient():
    rng = np.random.default_rng(4)
    E, T = 5, 8
    logp = -rng.random((E, T)).astype(np.float32)
    returns = rng.standard_normal((E, T)).astype(np.float32)
    mask = (np.arange(T)[None] < rng.integers(1, T + 1, E)[:, None]).astype(np.float32)
    baseline = rng.standard_normal(T).astype(np.float32)
    np.testing.assert_allclose(ch3.reinforce_loss(logp, returns, mask, baseline),
                               checks.reinforce_loop(logp, returns, mask, baseline), rtol=1e-5)
    grad = jax.grad(ch3.reinforce_loss)(jnp.asarray(logp), returns, mask, baseline)
    np.testing.assert_allclose(grad, -mask * (returns - baseline) / E, atol=1e-7)


def test_batch_baseline_is_mean_over_running_episodes():
    returns = jnp.array([[3.0, 2.0, 1.0], [1.0, 0.0, 0.0]])
    mask = jnp.array([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    np.testing.assert_allclose(ch3.batch_baseline(returns, mask), [2.0, 2.0, 1.0])
    np.testing.assert_allclose(ch3.batch_baseline(returns, jnp.zeros((2, 3))), [0, 0, 0])


def test_reinforce_learns_cartpole_over_16_seeds():
    """16 seeds vmapped. Observed (PRNGKey(0), this config): mean episode length 24.3 at the
    first iteration, 246-287 over the last five (per-seed minimum of the last five ~100);
    a random policy lasts ~22 steps."""
    cfg = ch3.REINFORCEConfig(iterations=40, episodes=8, hidden=16, learning_rate=0.01)
    train = jax.jit(jax.vmap(ch3.make_train(cfg)))
    params, metrics = train(jax.random.split(jax.random.PRNGKey(0), 16))
    lengths = np.asarray(metrics["episode_length"])
    assert lengths.shape == (16, 40)
    assert np.all(np.isfinite(np.asarray(metrics["loss"])))
    first, last = lengths[:, 0].mean(), lengths[:, -5:].mean()
    assert first < 40
    assert last > 120
    assert (lengths[:, -5:].mean(1) > lengths[:, :5].mean(1)).sum() >= 14
    assert params["w1"].shape == (16, 4, 16)


def test_vmap_over_seeds_equals_separate_runs():
    cfg = ch3.REINFORCEConfig(iterations=4, episodes=4, max_steps=60, hidden=8)
    train = ch3.make_train(cfg)
    keys = jax.random.split(jax.random.PRNGKey(7), 2)
    params_v, metrics_v = jax.jit(jax.vmap(train))(keys)
    single = jax.jit(train)
    for i in range(2):
        params_i, metrics_i = single(keys[i])
        np.testing.assert_allclose(metrics_v["episode_length"][i], metrics_i["episode_length"],
                                   rtol=1e-6)
        np.testing.assert_allclose(metrics_v["loss"][i], metrics_i["loss"], rtol=1e-4, atol=1e-4)
        for a, b in zip(jax.tree_util.tree_leaves(params_v), jax.tree_util.tree_leaves(params_i)):
            np.testing.assert_allclose(a[i], b, rtol=1e-4, atol=1e-5)
    # two seeds differ
    assert not np.allclose(metrics_v["loss"][0], metrics_v["loss"][1])


# ----------------------------------------------------------------------------------------------
# §3.1.4 the KL-regularised objective


def test_rlhf_objective_matches_loop():
    rng = np.random.default_rng(6)
    B, T = 4, 7
    rewards = rng.standard_normal(B).astype(np.float32)
    lp, lr = (-rng.random((B, T)).astype(np.float32) for _ in range(2))
    mask = rng.random((B, T)) < 0.7
    mask[3] = False  # an empty completion: the reward alone
    beta = 0.1
    expected = [rewards[b] - beta * sum(lp[b, t] - lr[b, t] for t in range(T) if mask[b, t])
                for b in range(B)]
    got = ch3.rlhf_objective(rewards, lp, lr, beta, mask)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert got[3] == rewards[3]
    np.testing.assert_allclose(ch3.rlhf_objective(rewards, lp, lr, 0.0, mask), rewards)
    np.testing.assert_allclose(ch3.rlhf_objective(rewards, lp, lp, 5.0, mask), rewards)
    # padding that holds -inf log-probs does not leak under jit; eagerly it is refused (the
    # convention of rlhf_book.lm.checks: pad with 0)
    lp_inf = np.where(mask, lp, -np.inf).astype(np.float32)
    np.testing.assert_allclose(jax.jit(ch3.rlhf_objective)(rewards, lp_inf, lr, beta, mask),
                               expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="logp_policy must hold finite numbers"):
        ch3.rlhf_objective(rewards, lp_inf, lr, beta, mask)
    np.testing.assert_allclose(jax.jit(ch3.rlhf_objective)(rewards, lp, lr, beta, mask), expected,
                               rtol=1e-5, atol=1e-6)


def test_rlhf_objective_on_policy_samples_estimate_eq11():
    """On a 3-armed 'LM as bandit', the mean of the per-sample objective over samples from pi
    is E_pi[r] - beta KL(pi || pi_ref), computed exactly."""
    pi, ref, r, beta = np.array([0.6, 0.3, 0.1]), np.array([0.2, 0.3, 0.5]), np.array([1.0, 0.5, -1.0]), 0.5
    exact = pi @ r - beta * np.sum(pi * np.log(pi / ref))
    ys = np.asarray(jax.random.choice(jax.random.PRNGKey(0), 3, (200_000,), p=jnp.asarray(pi)))
    values = ch3.rlhf_objective(r[ys], np.log(pi)[ys][:, None], np.log(ref)[ys][:, None], beta,
                                np.ones((len(ys), 1)))
    se = float(np.std(values)) / math.sqrt(len(ys))
    assert abs(float(np.mean(values)) - exact) < 5 * se


# ----------------------------------------------------------------------------------------------
# §3.3 recipes


def test_recipes_hold_the_books_numbers():
    by_name = {r.name: r for r in ch3.RECIPES}
    assert list(by_name) == ["InstructGPT", "Tülu 3", "DeepSeek R1"]
    assert [s.size for s in by_name["InstructGPT"].stages] == [10_000, 100_000, 100_000]
    assert [s.size for s in by_name["Tülu 3"].stages] == [1_000_000, 1_000_000, 10_000]
    assert [s.size for s in by_name["DeepSeek R1"].stages] == [100_000, None, 800_000, None]
    table = ch3.recipe_table()
    for text in ("33K", "31K", "~1M", "~10K prompts", "100K+", "~800K", "3/4 reasoning", "RLVR"):
        assert text in table
    assert len(table.splitlines()) == 2 + sum(len(r.stages) for r in ch3.RECIPES)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ch3.RECIPES[0].name = "x"


# ----------------------------------------------------------------------------------------------
# bad inputs


def test_bad_inputs_raise_value_errors_naming_the_argument():
    r = jnp.ones(5)
    with pytest.raises(ValueError, match="gamma"):
        ch3.discounted_returns(r, 1.5)
    with pytest.raises(ValueError, match="gamma"):
        ch3.discounted_returns(r, -0.1)
    with pytest.raises(ValueError, match="gamma"):
        ch3.discounted_return(r, float("nan"))
    with pytest.raises(ValueError, match="rewards"):
        ch3.discounted_returns(jnp.ones((2, 3, 4)), 0.9)
    with pytest.raises(ValueError, match="dones"):
        ch3.discounted_returns(r, 0.9, jnp.zeros(4, bool))
    with pytest.raises(ValueError, match="state"):
        ch3.cartpole_step(jnp.zeros(3), jnp.int32(0))
    with pytest.raises(ValueError, match="action"):
        ch3.cartpole_step(jnp.zeros((2, 4)), jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match="returns"):
        ch3.reinforce_loss(jnp.zeros((2, 3)), jnp.zeros((2, 4)), jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="mask"):
        ch3.reinforce_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.ones(3))
    with pytest.raises(ValueError, match="baseline"):
        ch3.reinforce_loss(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.ones((2, 3)), jnp.zeros(2))
    with pytest.raises(ValueError, match="beta"):
        ch3.rlhf_objective(jnp.zeros(2), jnp.zeros((2, 3)), jnp.zeros((2, 3)), -1.0, jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="logp_ref"):
        ch3.rlhf_objective(jnp.zeros(2), jnp.zeros((2, 3)), jnp.zeros((2, 4)), 0.1, jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="rewards"):
        ch3.rlhf_objective(jnp.zeros((2, 1)), jnp.zeros((2, 3)), jnp.zeros((2, 3)), 0.1, jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="logp_policy"):
        ch3.rlhf_objective(jnp.zeros(3), jnp.zeros((2, 3)), jnp.zeros((2, 3)), 0.1, jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="logp_policy"):
        ch3.rlhf_objective(jnp.zeros(2), jnp.zeros(2), jnp.zeros(2), 0.1, jnp.ones(2))
    with pytest.raises(ValueError, match="gamma"):
        ch3.REINFORCEConfig(gamma=1.2)
    with pytest.raises(ValueError, match="episodes"):
        ch3.REINFORCEConfig(episodes=0)
    with pytest.raises(ValueError, match="learning_rate"):
        ch3.REINFORCEConfig(learning_rate=0.0)
    with pytest.raises(ValueError, match="low"):
        ch3.threshold_policy(jnp.float32(70.0), 72.0, 68.0)
    with pytest.raises(ValueError, match="horizon"):
        ch3.ThermostatConfig(horizon=0)
    with pytest.raises(ValueError, match="steps"):
        ch3.rollout_thermostat(ch3.ThresholdPolicy(70.0, 70.0), jax.random.PRNGKey(0), steps=0)
    with pytest.raises(ValueError, match="episodes"):
        ch3.compare_thermostat_policies(episodes=0)


def test_configs_are_hashable_and_frozen():
    for cfg in (ch3.ThermostatConfig(), ch3.CartPoleConfig(), ch3.REINFORCEConfig()):
        hash(cfg)
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.__setattr__(dataclasses.fields(cfg)[0].name, 0)


# ----------------------------------------------------------------------------------------------
# the grading checks: the reference passes, wrong versions are caught


def test_checks_pass_on_the_reference():
    for name in ("discounted_returns", "cartpole_step", "reinforce_loss"):
        getattr(checks, name)(getattr(ch3, name))


def _undiscounted(rewards, gamma, dones=None):
    return ch3.discounted_returns(rewards, 1.0, dones)


def _returns_ignoring_dones(rewards, gamma, dones=None):
    return ch3.discounted_returns(rewards, gamma)


def _returns_excluding_current(rewards, gamma, dones=None):  # the k > t slip of book §5.7
    g = ch3.discounted_returns(rewards, gamma, dones)
    return g - jnp.asarray(rewards, jnp.float32)


def _semi_implicit_cartpole(state, action, config=ch3.CARTPOLE):
    nxt, reward, done = ch3.cartpole_step(state, action, config)
    # positions moved with the *new* velocities (Gym's "semi-implicit euler")
    nxt = nxt.at[..., 0].set(state[..., 0] + config.tau * nxt[..., 1])
    nxt = nxt.at[..., 2].set(state[..., 2] + config.tau * nxt[..., 3])
    return nxt, reward, done


def _cartpole_done_on_current_state(state, action, config=ch3.CARTPOLE):
    nxt, reward, _ = ch3.cartpole_step(state, action, config)
    done = (jnp.abs(state[..., 0]) > 2.4) | (jnp.abs(state[..., 2]) > config.theta_threshold)
    return nxt, reward, done


def _cartpole_swapped_actions(state, action, config=ch3.CARTPOLE):
    return ch3.cartpole_step(state, 1 - action, config)


def _cartpole_full_length_pole(state, action, config=ch3.CARTPOLE):
    return ch3.cartpole_step(state, action, dataclasses.replace(config, length=1.0))


def _loss_token_mean(logp, returns, mask, baseline=0.0):
    per_step = jnp.where(mask.astype(bool), logp * (returns - baseline), 0.0)
    return -jnp.sum(per_step) / jnp.maximum(jnp.sum(mask), 1.0)


def _loss_without_stop_gradient(logp, returns, mask, baseline=0.0):
    return -jnp.mean(jnp.sum(jnp.where(mask.astype(bool), logp * (returns - baseline), 0.0), -1))


def _loss_multiplying_the_mask(logp, returns, mask, baseline=0.0):
    adv = jax.lax.stop_gradient(returns - baseline)
    return -jnp.mean(jnp.sum(mask * logp * adv, -1))


def _loss_ignoring_baseline(logp, returns, mask, baseline=0.0):
    return ch3.reinforce_loss(logp, returns, mask, 0.0)


@pytest.mark.parametrize("name, wrong", [
    ("discounted_returns", _undiscounted),
    ("discounted_returns", _returns_ignoring_dones),
    ("discounted_returns", _returns_excluding_current),
    ("cartpole_step", _semi_implicit_cartpole),
    ("cartpole_step", _cartpole_done_on_current_state),
    ("cartpole_step", _cartpole_swapped_actions),
    ("cartpole_step", _cartpole_full_length_pole),
    ("reinforce_loss", _loss_token_mean),
    ("reinforce_loss", _loss_without_stop_gradient),
    ("reinforce_loss", _loss_multiplying_the_mask),
    ("reinforce_loss", _loss_ignoring_baseline),
], ids=lambda x: getattr(x, "__name__", x))
def test_checks_catch_wrong_implementations(name, wrong):
    with pytest.raises(Mismatch):
        getattr(checks, name)(wrong)


def test_exercise_regions_and_guide_markers():
    package = pathlib.Path(ch3.__file__).parent
    source = (package / "rl.py").read_text()
    assert len(stubs.solution_regions(source)) == 3
    assert not any(stubs.solution_regions(path.read_text())
                   for path in package.glob("*.py") if path.name != "rl.py")
    functions = ("discounted_returns", "cartpole_step", "reinforce_loss")
    exercises = tuple(catalog.Exercise(f"3.{k}", f, f"rlhf_book.ch03_training_overview.rl:{f}",
                                       "book §3")
                      for k, f in enumerate(functions, 1))
    # the stub file a catalog entry for this chapter would generate compiles, and each stub,
    # called with valid arguments, gets past the input checks to its NotImplementedError
    chapter = catalog.Chapter(3, "training_overview", "Training overview", "book ch. 3", exercises)
    namespace = {}
    exec(compile(stubs.stub_source(chapter), "stub", "exec"), namespace)
    valid_args = {"discounted_returns": (jnp.ones(4), 0.9),
                  "cartpole_step": (jnp.zeros(4), jnp.int32(1)),
                  "reinforce_loss": (jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.ones((2, 3)))}
    for function in functions:
        # the stub keeps the contract part of the docstring (stubs.split_docstring)
        assert namespace[function].__doc__ == stubs.split_docstring(getattr(ch3, function).__doc__)[0]
        with pytest.raises(NotImplementedError):
            namespace[function](*valid_args[function])
    everything = "".join(path.read_text() for path in sorted(package.glob("*.py")))
    names = re.findall(r"^# \[guide:([a-z0-9-]+)\]$", everything, re.M)
    assert len(names) == len(set(names)) == everything.count("# [/guide]")
    assert {"discounted-returns", "thermostat", "cartpole-step", "reinforce-loss",
            "reinforce-train", "rlhf-objective"} <= set(names)
