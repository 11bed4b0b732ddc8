"""The chapter-6 RL loop: every algorithm runs, jit/vmap/eager agree, on-policy invariants hold,
bad configs raise, and GRPO learns a simple reward on a tiny GPT."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_book import ch06_policy_gradients as ch06
from rlhf_book.ch06_policy_gradients import loop
from rlhf_book import data
from rlhf_book.lm import gpt, sampling, tokenizer
from rlhf_book.lm.eval import evaluate_policy

CONFIG = gpt.get_config("tiny")
LETTER = ord("a")


@pytest.fixture(scope="module")
def params():
    return gpt.init_params(jax.random.PRNGKey(0), CONFIG)


@pytest.fixture(scope="module")
def prompts():
    return ch06.encode_prompts(["Say a.", "Say b.", "What is 1 + 1?", "Hi."])


def letter_fraction(params, tokens, mask, prompt_ids):
    """A pure-JAX reward: the fraction of completion tokens that are the byte 'a'."""
    del params, prompt_ids
    hits = jnp.sum((tokens == LETTER) * mask, axis=1)
    return hits / jnp.maximum(jnp.sum(mask, axis=1), 1.0)


LETTER_REWARD = ch06.Reward(letter_fraction)


def mean_token_id(params, tokens, mask, prompt_ids):
    """A dense reward (almost surely different for every completion, so that DAPO's dynamic
    sampling keeps every group): the mean byte value of the completion, scaled to [0, 1]."""
    del params, prompt_ids
    return jnp.sum(tokens * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0) / 255.0


DENSE_REWARD = ch06.Reward(mean_token_id)


def small_config(**kw):
    base = dict(steps=2, prompts_per_step=2, group_size=4, max_new_tokens=8, log_every=1)
    return ch06.RLConfig(**{**base, **kw})


@pytest.mark.parametrize("algorithm", sorted(ch06.ALGORITHMS))
def test_every_algorithm_runs_and_stays_finite(algorithm, params, prompts):
    config = small_config(algorithm=algorithm, epochs=2, minibatches=2, tis_cap=2.0)
    state, metrics = jax.jit(ch06.make_train(config, CONFIG, params, prompts, DENSE_REWARD))(
        jax.random.PRNGKey(1))
    for name, value in metrics.items():
        assert value.shape == (config.steps,), name
        assert np.all(np.isfinite(value)), f"{algorithm}: {name} = {value}"
    assert ("value_loss" in metrics) == (algorithm == "ppo")
    assert ("kept" in metrics) == (algorithm == "dapo")
    assert int(state.step) == config.steps
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), state.params["lm"], params)
    assert max(jax.tree.leaves(moved)) > 0, f"{algorithm} did not update the policy"


@pytest.mark.parametrize("epochs", [1, 2])
def test_first_step_is_on_policy(params, prompts, epochs):
    """On the first step pi_theta = pi_old = pi_ref: the log-probs under pi_old (the sampler's
    own when the batch serves one gradient step, recomputed otherwise) equal the reference's,
    every ratio is 1 (nothing clipped), and the KL to the reference is 0."""
    config = small_config(algorithm="grpo", epochs=epochs)
    state = ch06.init_rl_state(config, CONFIG, params, LETTER_REWARD)
    batch = ch06.rollout(state, jax.random.PRNGKey(2), config, CONFIG, prompts, LETTER_REWARD)
    mask = np.asarray(batch.mask)
    assert mask.sum() > 0
    np.testing.assert_allclose(np.asarray(batch.old_logp) * mask,
                               np.asarray(batch.sampler_logp) * mask, atol=2e-5)
    np.testing.assert_allclose(np.asarray(batch.ref_logp) * mask,
                               np.asarray(batch.old_logp) * mask, atol=2e-5)
    _, metrics = ch06.make_rl_step(config, CONFIG, prompts, LETTER_REWARD)(state,
                                                                          jax.random.PRNGKey(2))
    assert float(metrics["clip_fraction"]) == 0.0
    assert abs(float(metrics["kl"])) < 1e-6


@pytest.mark.parametrize("algorithm", ["grpo", "dr_grpo"])
def test_the_grpo_step_exercise_is_the_loops_update(params, prompts, algorithm):
    """For GRPO and Dr. GRPO on whole batches the loop's minibatch step is ``grpo_step`` (6.9):
    its loss, gradient and metrics equal those of the general ``_loss`` that every other
    configuration takes, off-policy (clip binding) and with a KL to a distinct reference."""
    config = small_config(algorithm=algorithm, beta=0.1, epochs=2)
    assert loop._runs_grpo_step(config)
    assert not loop._runs_grpo_step(small_config(algorithm=algorithm, minibatches=2))
    assert not loop._runs_grpo_step(small_config(algorithm="dapo"))
    state = ch06.init_rl_state(config, CONFIG, params, DENSE_REWARD)
    batch = ch06.rollout(state, jax.random.PRNGKey(5), config, CONFIG, prompts, DENSE_REWARD)
    adv, returns, keep = loop._advantages(config, batch)
    noise = jax.random.normal(jax.random.PRNGKey(6), (2,) + batch.mask.shape)
    mb = {"tokens": batch.tokens, "mask": batch.mask, "sampler_logp": batch.sampler_logp,
          "old_logp": batch.old_logp + 0.3 * noise[0] * batch.mask,
          "ref_logp": batch.ref_logp + 0.3 * noise[1] * batch.mask,
          "old_values": batch.old_values, "adv": adv, "returns": returns, "keep": keep,
          "rewards": batch.scores}
    (loss, metrics), grads = jax.value_and_grad(loop._loss, has_aux=True)(
        state.params, config, CONFIG, mb)
    step_loss, step_grads, step_metrics = loop._loss_and_grads(state.params, config, CONFIG, mb)
    assert float(metrics["clip_fraction"]) > 0  # the clip binds somewhere
    np.testing.assert_allclose(float(step_loss), float(loss), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(step_grads), jax.tree.leaves(grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-9)
    assert step_metrics.keys() == metrics.keys()
    for name in metrics:
        np.testing.assert_allclose(float(step_metrics[name]), float(metrics[name]), rtol=1e-6,
                                   err_msg=name)


def test_rollout_layout_is_prompt_major(params, prompts):
    config = small_config(prompts_per_step=3, group_size=4)
    state = ch06.init_rl_state(config, CONFIG, params, LETTER_REWARD)
    batch = ch06.rollout(state, jax.random.PRNGKey(3), config, CONFIG, prompts, LETTER_REWARD)
    ids = np.asarray(batch.prompt_ids).reshape(3, 4)
    assert np.all(ids == ids[:, :1]), "rows b*G .. b*G+G-1 must share prompt b"
    tokens = np.asarray(batch.tokens)
    P = prompts.tokens.shape[1]
    for row, i in zip(tokens, np.asarray(batch.prompt_ids)):
        n = int(prompts.lengths[i])
        np.testing.assert_array_equal(row[:n], np.asarray(prompts.tokens[i, :n]))
    # The completion mask is one run starting right after each prompt; after it, only padding.
    mask = np.asarray(batch.mask)
    for row, m, i in zip(tokens, mask, np.asarray(batch.prompt_ids)):
        n, k = int(prompts.lengths[i]), int(m.sum())
        assert 1 <= k <= config.max_new_tokens
        np.testing.assert_array_equal(m[n:n + k], 1)
        assert m.sum() == k  # nothing masked in outside the run
        assert np.all(row[n + k:] == tokenizer.PAD)
    assert tokens.shape[1] == P + config.max_new_tokens


def test_vmap_over_seeds_equals_one_seed_at_a_time(params, prompts):
    config = small_config(algorithm="rloo")
    train = ch06.make_train(config, CONFIG, params, prompts, LETTER_REWARD)
    keys = jax.random.split(jax.random.PRNGKey(4), 2)
    _, batched = jax.jit(jax.vmap(train))(keys)
    for k, key in enumerate(keys):
        _, single = jax.jit(train)(key)
        for name in ("score", "kl", "length", "loss"):
            np.testing.assert_allclose(batched[name][k], single[name], rtol=2e-4, atol=2e-5,
                                       err_msg=name)


@pytest.mark.parametrize("algorithm", ["rloo", "grpo"])  # KL in the reward; KL in the loss
def test_vmap_over_betas_equals_one_config_per_beta(params, prompts, algorithm):
    """Sweeping the KL coefficient and the learning rate as traced arguments (one compilation)
    runs the same steps as a config per value."""
    config = small_config(algorithm=algorithm, steps=2, learning_rate=1e-3)
    key = jax.random.PRNGKey(6)
    betas, rates = jnp.array([0.0, 0.5]), jnp.array([1e-3, 3e-3])
    train = ch06.make_train(config, CONFIG, params, prompts, DENSE_REWARD)
    _, swept = jax.jit(jax.vmap(train, in_axes=(None, 0, 0)))(key, betas, rates)
    for i, (beta, rate) in enumerate(zip(betas.tolist(), rates.tolist())):
        one = dataclasses.replace(config, beta=beta, learning_rate=rate)
        _, single = jax.jit(ch06.make_train(one, CONFIG, params, prompts, DENSE_REWARD))(key)
        for name in ("score", "kl", "loss", "grad_norm"):
            np.testing.assert_allclose(swept[name][i], single[name], rtol=2e-4, atol=2e-5,
                                       err_msg=f"{name} at beta={beta}")
    # the two settings really differ (the sweep did not collapse to one value)
    assert not np.allclose(swept["loss"][0], swept["loss"][1])


def test_train_rl_chunks_equal_one_scan(params, prompts):
    """The progress-bar driver (chunks of log_every steps) runs the same steps as make_train."""
    config = small_config(algorithm="grpo", steps=2, log_every=1)
    _, history = ch06.train_rl(config, CONFIG, params, prompts, LETTER_REWARD, seed=5,
                               progress=False)
    assert len(history["score"]) == 2 and "eval_step" not in history
    assert all(np.isfinite(history["loss"]))


def test_one_nan_reward_stops_training_with_an_error(params, prompts):
    """A reward that is NaN for one completion would turn every parameter into NaN through the
    group statistics; the driver stops at that step with an error instead of finishing."""
    def nan_for_one(p, tokens, mask, prompt_ids):
        scores = letter_fraction(p, tokens, mask, prompt_ids)
        return jnp.where(jnp.arange(scores.shape[0]) == 0, jnp.nan, scores)

    config = small_config(algorithm="grpo", steps=2, log_every=1)
    with pytest.raises(FloatingPointError, match="at step 1"):
        ch06.train_rl(config, CONFIG, params, prompts, ch06.Reward(nan_for_one),
                      progress=False)


def test_text_reward_runs_the_python_function_on_the_completions(params):
    questions = data.split_questions()[0][:4]
    prompts = ch06.encode_prompts([q.prompt for q in questions])
    reward = ch06.text_reward(data.gold_reward, questions)
    config = small_config(prompts_per_step=4, group_size=2, max_new_tokens=6)
    state = ch06.init_rl_state(config, CONFIG, params, reward)
    batch = jax.jit(lambda s, k: ch06.rollout(s, k, config, CONFIG, prompts, reward))(
        state, jax.random.PRNGKey(6))
    texts = sampling.decode_masked(batch.tokens, batch.mask)
    expected = [data.gold_reward(questions[int(i)], t) for i, t in zip(batch.prompt_ids, texts)]
    np.testing.assert_allclose(np.asarray(batch.scores), expected, rtol=1e-6)


def test_truncation_penalty_replaces_scores_of_unfinished_completions(params, prompts):
    config = small_config(max_new_tokens=3, truncation_penalty=-7.0)
    state = ch06.init_rl_state(config, CONFIG, params, LETTER_REWARD)
    batch = ch06.rollout(state, jax.random.PRNGKey(7), config, CONFIG, prompts, LETTER_REWARD)
    stopped = np.asarray(batch.stopped)
    assert not stopped.all()
    assert np.all(np.asarray(batch.scores)[~stopped] == -7.0)


def test_evaluate_policy_kl_is_zero_against_itself_and_positive_after_a_change(params):
    questions = data.split_questions()[0][:4]
    same = evaluate_policy(params, questions, CONFIG, jax.random.PRNGKey(8), ref_params=params,
                           samples=4, max_new_tokens=8)
    assert same["kl"] == 0.0 and same["length"] > 0
    # A reference with 10x sharper logits (final LayerNorm scaled): clearly a different model.
    other = {**params, "ln_f": jax.tree.map(lambda a: 10 * a, params["ln_f"])}
    moved = evaluate_policy(params, questions, CONFIG, jax.random.PRNGKey(8), ref_params=other,
                            samples=64, max_new_tokens=8)
    assert moved["kl"] > 3 * moved["kl_se"] > 0


def test_train_rl_runs_a_shorter_last_chunk(params, prompts):
    """``log_every`` only sets the chunks of the driver: 3 steps run as chunks of 2 and 1."""
    config = small_config(steps=3, log_every=2)
    _, history = ch06.train_rl(config, CONFIG, params, prompts, LETTER_REWARD, progress=False)
    assert len(history["score"]) == 3 and history["step"].tolist() == [1, 2, 3]


@pytest.mark.parametrize("kw, match", [
    (dict(algorithm="trpo"), "algorithm"),
    (dict(group_size=1), "group_size"),
    (dict(minibatches=3), "minibatches"),
    (dict(temperature=0.0), "temperature"),
    (dict(kl_estimator="k4"), "kl_estimator"),
    (dict(steps=0), "steps"),
    (dict(beta=-1.0), "beta"),
    (dict(clip_low=-0.1), "clip_low must be >= 0"),
    (dict(clip_high=-1.0), "clip_high must be >= 0"),
    (dict(tis_cap=-1.0), "tis_cap must be >= 0"),
    (dict(value_clip=-0.2), "value_clip must be >= 0"),
    (dict(gamma=1.5), "gamma must be <= 1"),
    (dict(lam=-0.1), "lam must be >= 0"),
])
def test_bad_configs_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        small_config(**kw)


def test_algorithm_defaults_follow_the_book():
    assert ch06.RLConfig(algorithm="ppo").estimator == "k1"  # KL in the reward (InstructGPT)
    assert ch06.RLConfig(algorithm="grpo").estimator == "k3"  # KL in the loss (GRPO)
    assert ch06.RLConfig(algorithm="dapo").clip == (0.2, 0.28)
    assert ch06.RLConfig(algorithm="gspo").clip == (3e-4, 4e-4)
    assert ch06.RLConfig(algorithm="grpo", clip_high=0.3).clip == (0.2, 0.3)
    table = {name: (a.advantage, a.kl) for name, a in ch06.ALGORITHMS.items()}
    assert table["rloo"] == ("rloo", "reward") and table["grpo"] == ("grpo", "loss")
    assert table["ppo"] == ("gae", "reward") and table["dr_grpo"] == ("dr_grpo", "loss")


@pytest.mark.slow
def test_grpo_learns_to_say_a(params, prompts):
    """A learning test with a known optimum: rewarded for the fraction of 'a' bytes, GRPO from a
    random tiny GPT raises the mean reward of its samples well beyond the noise of the first
    steps (the mean over 8 x 8 samples has a standard error below 0.02 at the start)."""
    config = ch06.RLConfig(algorithm="grpo", steps=40, prompts_per_step=8, group_size=8,
                           max_new_tokens=8, learning_rate=3e-3, beta=0.0, log_every=40)
    _, metrics = jax.jit(ch06.make_train(config, CONFIG, params, prompts, LETTER_REWARD))(
        jax.random.PRNGKey(10))
    score = np.asarray(metrics["score"])
    start, end = score[:5].mean(), score[-5:].mean()
    assert start < 0.05, start  # a random model rarely says 'a'
    assert end > start + 0.2, (start, end)
