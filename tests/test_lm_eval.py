"""lm.eval: per-answer measurements of a policy, and the pass@k estimator.

Expected values come from a direct computation (decoding the same tokens and scoring them with
the gold reward; the reward model called on the same tokens), from brute-force enumeration of
k-subsets (pass@k), and from invariants (KL of a policy to itself is zero).
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_book import data
from rlhf_book.lm import gpt, sampling
from rlhf_book.lm.eval import answer_samples, evaluate_policy, pass_at_k
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


def brute_pass_at_k(n: int, c: int, k: int) -> float:
    """The share of the k-subsets of n samples (c of them correct) holding a correct one."""
    outcomes = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n, k", [(5, 1), (5, 2), (6, 3), (8, 8)])
def test_pass_at_k_is_the_share_of_k_subsets_with_a_correct_sample(n, k):
    for c in range(n + 1):
        assert float(pass_at_k(n, c, k)) == pytest.approx(brute_pass_at_k(n, c, k)), (n, c, k)
    counts = np.arange(n + 1)
    np.testing.assert_allclose(pass_at_k(n, counts, k),
                               [brute_pass_at_k(n, c, k) for c in counts])
    np.testing.assert_allclose(pass_at_k(n, counts, 1), counts / n)  # pass@1 = c / n


@pytest.mark.parametrize("call, name", [
    (lambda p: answer_samples(p, [], CONFIG, jax.random.PRNGKey(0)), "questions"),
    (lambda p: answer_samples(p, QUESTIONS, CONFIG, jax.random.PRNGKey(0), samples=0), "samples"),
    (lambda p: pass_at_k(4, 1, 5), "k"),
    (lambda p: pass_at_k(4, 1, 0), "k"),
])
def test_bad_arguments_raise_value_error_naming_the_argument(params, call, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b.*(got|non-empty)"):
        call(params)
