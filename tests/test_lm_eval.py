"""lm.eval: per-answer measurements of a policy, and the pass@k estimator.

Expected values come from a direct computation (decoding the same tokens and scoring them with
the gold reward; the reward model called on the same tokens), from brute-force enumeration of
k-subsets (pass@k), and from invariants (KL of a policy to itself is zero).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_book import data
from rlhf_book.lm import gpt, sampling
from rlhf_book.lm.eval import answer_samples, evaluate_policy, first_last
from rlhf_book.lm.ops import masked_sum
from rlhf_book.lm.rollout import Reward, encode_prompts, token_log_probs

CONFIG = gpt.get_config("tiny")
QUESTIONS = data.fact_questions(data.question_splits().rephrased)[::60]


@pytest.fixture(scope="module")
def params():
    return gpt.init_params(jax.random.PRNGKey(0), CONFIG)


def length_reward() -> Reward:
    """A reward computed in JAX from the tokens: the number of completion tokens."""
    return Reward(lambda p, tokens, mask, prompt_ids: mask.sum(-1).astype(jnp.float32))


def test_answer_samples_measure_exactly_the_sampled_texts(params):
    samples, key = 3, jax.random.PRNGKey(4)
    a = answer_samples(params, QUESTIONS, CONFIG, key, samples=samples, max_new_tokens=12,
                       ref_params=params, reward=length_reward())
    Q = len(QUESTIONS)
    for name in ("gold", "right", "wrong", "none", "bytes", "length", "stopped", "kl", "reward"):
        assert a[name].shape == (Q, samples), name
    # the same call by hand: the prompts repeated, one generate, the texts decoded
    prompts = encode_prompts([q.prompt for q in QUESTIONS])
    ids = np.repeat(np.arange(Q), samples)
    gen = sampling.generate(params, prompts.tokens[ids], key, CONFIG,
                            prompt_lengths=prompts.lengths[ids], max_new_tokens=12,
                            temperature=1.0)
    texts = sampling.decode_masked(gen.tokens, gen.mask)
    assert a["texts"].ravel().tolist() == texts
    gold = [data.gold_reward(QUESTIONS[i], t) for i, t in zip(ids, texts)]
    np.testing.assert_allclose(a["gold"].ravel(), gold)
    np.testing.assert_allclose(a["reward"].ravel(), np.asarray(gen.mask).sum(1))
    np.testing.assert_allclose(a["length"], a["reward"])
    np.testing.assert_allclose(a["kl"], 0.0, atol=1e-5)  # a policy against itself
    # every answer is exactly one of right, wrong, none
    np.testing.assert_array_equal(a["right"] + a["wrong"] + a["none"], 1.0)


@pytest.mark.parametrize("temperature", [1.0, 0.0, 0.5])
def test_kl_is_the_log_ratio_of_the_sampled_tokens_under_both_models(params, temperature):
    """The KL column is sum_t log pi(y_t) - log pi_ref(y_t) over the completion, both computed
    here by a full forward pass of each model; at temperature 1 (and greedy) answer_samples
    takes the policy's term from the sampler instead, which must agree."""
    ref = gpt.init_params(jax.random.PRNGKey(1), CONFIG)
    key = jax.random.PRNGKey(5)
    a = answer_samples(params, QUESTIONS, CONFIG, key, samples=2, max_new_tokens=12,
                       temperature=temperature, ref_params=ref)
    prompts = encode_prompts([q.prompt for q in QUESTIONS])
    ids = np.repeat(np.arange(len(QUESTIONS)), 2)
    gen = sampling.generate(params, prompts.tokens[ids], key, CONFIG,
                            prompt_lengths=prompts.lengths[ids], max_new_tokens=12,
                            temperature=temperature)
    log_ratio = (token_log_probs(params, gen.tokens, CONFIG)
                 - token_log_probs(ref, gen.tokens, CONFIG))
    expected = np.asarray(masked_sum(log_ratio, gen.mask, axis=1)).reshape(-1, 2)
    assert np.abs(expected).max() > 0.1  # two different models: the check has teeth
    np.testing.assert_allclose(a["kl"], expected, rtol=1e-4, atol=1e-4)


def test_evaluate_policy_averages_answer_samples(params):
    key = jax.random.PRNGKey(2)
    a = answer_samples(params, QUESTIONS, CONFIG, key, samples=2, max_new_tokens=10)
    m = evaluate_policy(params, QUESTIONS, CONFIG, key, samples=2, max_new_tokens=10)
    assert m["gold"] == pytest.approx(a["gold"].mean()) and m["n"] == a["gold"].size
    assert m["accuracy"] == pytest.approx(a["right"].mean())
    assert m["gold_se"] == pytest.approx(a["gold"].std(ddof=1) / math.sqrt(a["gold"].size))


def test_first_last_is_each_seeds_change_averaged_with_its_standard_error():
    x = np.array([[0.0, 1.0, 2.0, 3.0, 4.0, 5.0],   # first 3 mean 1, last 3 mean 4: +3
                  [1.0, 1.0, 1.0, 2.0, 2.0, 2.0]])  # 1 -> 2: +1
    out = first_last(x, window=3)
    assert out == pytest.approx({"first": 1.0, "last": 3.0, "change": 2.0,
                                 "change_se": math.sqrt(2.0) / math.sqrt(2.0)})


@pytest.mark.parametrize("call, name", [
    (lambda p: answer_samples(p, [], CONFIG, jax.random.PRNGKey(0)), "questions"),
    (lambda p: answer_samples(p, QUESTIONS, CONFIG, jax.random.PRNGKey(0), samples=0), "samples"),
])
def test_bad_arguments_raise_value_error_naming_the_argument(params, call, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b.*(got|non-empty)"):
        call(params)
