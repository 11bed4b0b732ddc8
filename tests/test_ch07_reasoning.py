"""Chapter 7's math: the book's worked examples (the primes below 20 sum to 77; the ``fib`` unit
tests, gating against partial credit; the 20-80% filter at N = 16), answer extraction for every
format, the format reward and the lax verifier it closes; group statistics against closed forms
and Monte Carlo (tolerances from the standard error); MaxRL's expected update by enumeration of
every outcome; sum-then-normalise against GDPO's normalise-then-sum; majority vote against a
brute-force enumeration and Monte Carlo; pass@k against enumeration of all k-subsets and its
unbiasedness; jit == eager; bad input. The graded exercises 7.1-7.7: the reference passes each
check, other right solutions pass it, and plausible wrong versions fail it with their hint."""

from __future__ import annotations

import itertools
import math
import re
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_book import ch06_policy_gradients as ch06
from rlhf_book import ch07_reasoning as ch07
from rlhf_book import data
from rlhf_book.textbook import catalog, grading, stubs
from rlhf_book.textbook.checks import Mismatch
from rlhf_book.textbook.checks import ch07_reasoning as checks


def _primes_below(n: int) -> list[int]:
    """Trial division: an oracle independent of the text under test."""
    return [p for p in range(2, n) if all(p % d for d in range(2, int(p ** 0.5) + 1))]


# The book's RLVR math example (ch. 7 introduction), in our words: the running sum of the primes
# below 20, ending with the boxed answer.
PRIMES = _primes_below(20)
PARTIAL = list(itertools.accumulate(PRIMES))
BOOK_MATH_RESPONSE = (
    f"The prime numbers less than 20 are {', '.join(map(str, PRIMES))}. Adding them one at a time: "
    + ", ".join(f"{a} + {p} = {s}" for a, p, s in zip(PARTIAL, PRIMES[1:], PARTIAL[1:]))
    + f". The answer is $\\boxed{{{PARTIAL[-1]}}}$.")


# ----------------------------------------------------------------------------------------------
# Chapter 7 introduction: the verifiable math example


def test_the_books_math_example_primes_below_20_sum_to_77_and_score_1():
    assert PRIMES == [2, 3, 5, 7, 11, 13, 17, 19] and sum(PRIMES) == 77
    assert PARTIAL == [2, 5, 10, 17, 28, 41, 58, 77]  # the book's running sum
    assert BOOK_MATH_RESPONSE.endswith("The answer is $\\boxed{77}$.")
    for style in ("boxed", "the_answer_is", "any", "last_integer"):
        assert ch07.extract_final_answer(BOOK_MATH_RESPONSE, style) == "77", style
        assert ch07.verifiable_reward(BOOK_MATH_RESPONSE, 77, style) == 1.0, style
        assert ch07.verifiable_reward(BOOK_MATH_RESPONSE, 78, style) == 0.0, style
    assert ch07.verifiable_reward(BOOK_MATH_RESPONSE, "77") == 1.0  # gold as a string
    # the reasoning holds other numbers; none of them is taken for the answer
    assert ch07.extract_final_answer(BOOK_MATH_RESPONSE, "answer_tag") is None
    assert ch07.extract_final_answer(BOOK_MATH_RESPONSE, "hashes") is None


def test_without_the_box_the_phrase_still_carries_the_answer():
    text = BOOK_MATH_RESPONSE.replace("$\\boxed{77}$", "77")
    assert ch07.extract_final_answer(text, "boxed") is None
    assert ch07.extract_final_answer(text, "the_answer_is") == "77"
    assert ch07.verifiable_reward(text, 77) == 1.0  # "any" falls through to the phrase


@pytest.mark.parametrize("text, style, expected", [
    # boxed: the last box, nested braces balanced
    (r"so $x = \boxed{\frac{1}{2}}$", "boxed", r"\frac{1}{2}"),
    (r"first \boxed{3}, then corrected: \boxed{4}", "boxed", "4"),
    (r"\boxed { 12 }", "boxed", "12"),
    (r"unbalanced \boxed{7", "boxed", None),
    (r"\boxed{1,000}", "boxed", "1000"),
    # GSM8K's delimiter: the rest of its line
    ("Natalia sold 48 clips, then 24.\n#### 72", "hashes", "72"),
    ("#### 72\nsome trailing note", "hashes", "72"),
    ("####   1,234,567", "hashes", "1234567"),
    ("#### ", "hashes", None),
    # the phrase, up to the end of its sentence
    ("Thus, the answer is 77.", "the_answer_is", "77"),
    ("The final answer is: 3.5. Let me double check.", "the_answer_is", "3.5"),
    ("The answer is: $\\boxed{77}$", "the_answer_is", "77"),
    ("THE ANSWER IS -4", "the_answer_is", "-4"),
    ("The answer is:\n77\n", "the_answer_is", "77"),
    ("The answer is 5. Wait, no: the answer is 6.", "the_answer_is", "6"),
    # answer tags: the last pair
    ("<think>4 * 3 = 12</think> <answer> 12 </answer>", "answer_tag", "12"),
    ("<answer>1</answer> <answer>$2$</answer>", "answer_tag", "2"),
    ("<answer>\\boxed{9}</answer>", "answer_tag", "9"),
    ("<answer>  </answer>", "answer_tag", None),
    # the lax rule of data.extract_answer
    ("I think 3, or maybe 4", "last_integer", "4"),
    ("the result is -5.", "last_integer", "-5"),
    # any: strict formats in order, never the last integer
    ("I think 3, or maybe 4", "any", None),
    ("#### 8", "any", "8"),
    ("<answer>8</answer> then \\boxed{9}", "any", "9"),
])
def test_extract_final_answer_reads_each_format(text, style, expected):
    assert ch07.extract_final_answer(text, style) == expected


@pytest.mark.parametrize("style", ch07.ANSWER_STYLES)
def test_no_answer_is_none_and_scores_zero(style):
    for text in ("", "I am not sure.", "   \n  "):
        assert ch07.extract_final_answer(text, style) is None
        assert ch07.verifiable_reward(text, 77, style) == 0.0


def test_answers_are_compared_as_exact_numbers_or_as_strings():
    assert ch07.verifiable_reward("#### 77.0", 77) == 1.0
    assert ch07.verifiable_reward("#### 0.5", "1/2") == 1.0
    assert ch07.verifiable_reward("#### 1,000", 1000) == 1.0
    assert ch07.verifiable_reward("#### 0.3333333", "1/3") == 0.0  # exact, no rounding
    assert ch07.verifiable_reward(r"\boxed{\frac{1}{2}}", r"\frac{1}{2}") == 1.0
    assert ch07.verifiable_reward(r"\boxed{x + 1}", "x  +  1") == 1.0  # whitespace normalised
    assert ch07.normalize_answer(" $77$. ") == "77"
    assert ch07.normalize_answer("3.5") == "3.5"
    assert ch07.normalize_answer("$ $") is None
    assert ch07.normalize_answer(r"\boxed{5} + 1") == r"\boxed{5} + 1"  # the box is not all of it


def test_extraction_agrees_with_the_worlds_verifier_on_arithmetic():
    problems = data.arithmetic_problems(seed=3, n=40)
    for i, problem in enumerate(problems):
        guess = problem.answer + (i % 3 == 0)  # every third response is wrong
        response = f"{problem.prompt} Working it out, the answer is {guess}."
        expected = data.verify(problem, response)
        assert ch07.verifiable_reward(response, problem.answer, "last_integer") == expected
        assert ch07.verifiable_reward(response, problem.answer, "the_answer_is") == expected


def test_a_lax_verifier_is_hacked_by_ending_with_a_guess_and_a_format_closes_it():
    # A policy that lists candidates and ends with a number satisfies "last integer" whenever
    # the last one is right, with no reasoning and no marked answer.
    hack = "Maybe 70 71 72 73 74 75 76 77"
    assert ch07.verifiable_reward(hack, 77, "last_integer") == 1.0
    assert ch07.verifiable_reward(hack, 77, "any") == 0.0
    assert ch07.format_reward(hack) == 0.0
    honest = "<think>2+3+5+7+11+13+17+19 = 77</think><answer>77</answer>"
    assert ch07.verifiable_reward(honest, 77) == 1.0 and ch07.format_reward(honest) == 1.0


@pytest.mark.parametrize("text, style, expected", [
    ("<think>2 + 2 is 4</think> <answer>4</answer>", "answer_tag", 1.0),
    ("  <think>\nsteps\n</think>\n<answer> 4 </answer>\n", "answer_tag", 1.0),
    ("<think>2 + 2 is 4</think> <answer>4</answer> and more", "answer_tag", 0.0),
    ("<think>2 + 2 is 4</think> The answer is 4.", "answer_tag", 0.0),
    ("<think>2 + 2 is 4</think> The answer is 4.", "the_answer_is", 1.0),
    ("<think>2 + 2 is 4</think> The answer is $\\boxed{4}$.", "boxed", 1.0),
    ("<think>the answer is 4</think> ok", "the_answer_is", 0.0),  # answer only in the thinking
    ("<think>   </think><answer>4</answer>", "answer_tag", 0.0),  # blank reasoning
    ("<answer>4</answer>", "answer_tag", 0.0),  # no reasoning block
    ("preamble <think>x</think><answer>4</answer>", "answer_tag", 0.0),  # not first
    ("<think>a</think><think>b</think><answer>4</answer>", "answer_tag", 0.0),  # two blocks
    ("</think><think>a<answer>4</answer>", "answer_tag", 0.0),  # wrong order
    ("<think>a</think><answer></answer>", "answer_tag", 0.0),  # blank answer
    ("<think>a</think><answer>1</answer><answer>2</answer>", "answer_tag", 0.0),
    ("<thinking>a</thinking><answer>4</answer>", "answer_tag", 0.0),  # the tag is <think>
])
def test_format_reward_is_exactly_the_documented_template(text, style, expected):
    assert ch07.format_reward(text, style) == expected


def test_the_verifiers_name_the_bad_argument():
    with pytest.raises(ValueError, match="text"):
        ch07.extract_final_answer(None)
    with pytest.raises(ValueError, match="style"):
        ch07.extract_final_answer("#### 1", "latex")
    with pytest.raises(ValueError, match="gold"):
        ch07.verifiable_reward("#### 1", None)
    with pytest.raises(ValueError, match="gold"):
        ch07.verifiable_reward("#### 1", "  ")
    with pytest.raises(ValueError, match="text"):
        ch07.format_reward(b"<think>")
    with pytest.raises(ValueError, match="answer"):
        ch07.normalize_answer(7)


# ----------------------------------------------------------------------------------------------
# Chapter 7 introduction: the code example, unit-test rewards


def _run_book_tests(fib) -> list[bool]:
    """The book's three assertions, each recorded instead of raised."""
    return [fib(0) == 0, fib(1) == 1, fib(10) == 55]


def test_the_books_fib_tests_gate_or_give_partial_credit():
    def fib(n):  # the book's function
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    def fib_identity(n):  # a wrong program that passes the first two tests
        return n

    assert _run_book_tests(fib) == [True, True, True]
    assert float(ch07.unit_test_reward(_run_book_tests(fib))) == 1.0
    assert float(ch07.unit_test_reward(_run_book_tests(fib), "fraction")) == 1.0
    passed = _run_book_tests(fib_identity)
    assert passed == [True, True, False]
    assert float(ch07.unit_test_reward(passed, "all")) == 0.0
    np.testing.assert_allclose(float(ch07.unit_test_reward(passed, "fraction")), 2 / 3, rtol=1e-6)


def test_unit_test_reward_batches_and_jits():
    passed = np.array([[1, 1, 1, 1], [1, 0, 1, 1], [0, 0, 0, 0]], bool)
    for mode, expected in (("all", [1.0, 0.0, 0.0]), ("fraction", [1.0, 0.75, 0.0])):
        eager = ch07.unit_test_reward(passed, mode)
        np.testing.assert_allclose(eager, expected)
        np.testing.assert_allclose(jax.jit(ch07.unit_test_reward, static_argnums=1)(passed, mode),
                                   eager)
    with pytest.raises(ValueError, match="passed"):
        ch07.unit_test_reward([1, 2, 1])
    with pytest.raises(ValueError, match="passed"):
        ch07.unit_test_reward(np.zeros((3, 0)))
    with pytest.raises(ValueError, match="passed"):
        ch07.unit_test_reward(True)
    with pytest.raises(ValueError, match="mode"):
        ch07.unit_test_reward([1, 1], "most")


# ----------------------------------------------------------------------------------------------
# §7.2.3 Offline difficulty filtering, online filtering


def test_pass_rates_are_the_group_means():
    rewards = np.array([[1, 0, 0, 0], [1, 1, 1, 0], [0.5, 0.5, 1, 0]], np.float32)
    np.testing.assert_allclose(ch07.pass_rates(rewards), [0.25, 0.75, 0.5])
    np.testing.assert_allclose(jax.jit(ch07.pass_rates)(rewards), [0.25, 0.75, 0.5])
    with pytest.raises(ValueError, match="rewards"):
        ch07.pass_rates([[1.0, 2.0]])
    with pytest.raises(ValueError, match="rewards"):
        ch07.pass_rates([1.0, 0.0])  # not [B, G]


def test_difficulty_filter_keeps_20_to_80_percent_inclusive():
    # at N = 16 the representable pass rates around the bounds are 3/16, 4/16 and 12/16, 13/16
    rates = np.array([0, 3 / 16, 4 / 16, 0.5, 12 / 16, 13 / 16, 1.0], np.float32)
    np.testing.assert_array_equal(ch07.difficulty_filter(rates),
                                  [False, False, True, True, True, False, False])
    # the bounds themselves are kept, also when computed as a mean (1 of 5, 4 of 20, 4 of 5)
    at_bounds = ch07.pass_rates(np.array([[1, 0, 0, 0, 0] + [0] * 15, [1] * 4 + [0] * 16,
                                          [1] * 16 + [0] * 4], np.float32))
    np.testing.assert_allclose(at_bounds, [0.05, 0.2, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(ch07.difficulty_filter(at_bounds), [False, True, True])
    five = ch07.pass_rates(np.array([[1, 0, 0, 0, 0], [1, 1, 1, 1, 0]], np.float32))
    np.testing.assert_array_equal(ch07.difficulty_filter(five), [True, True])
    # shape kept; other bounds; jit
    grid = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    mask = ch07.difficulty_filter(grid, 0.3, 0.6)
    assert mask.shape == (3, 4) and mask.dtype == jnp.bool_
    np.testing.assert_array_equal(mask, (grid >= 0.3) & (grid <= 0.6))
    np.testing.assert_array_equal(jax.jit(ch07.difficulty_filter)(grid, 0.3, 0.6), mask)
    with pytest.raises(ValueError, match="high"):
        ch07.difficulty_filter(grid, 0.8, 0.2)
    with pytest.raises(ValueError, match="low"):
        ch07.difficulty_filter(grid, -0.1)
    with pytest.raises(ValueError, match="pass_rates"):
        ch07.difficulty_filter([0.5, 1.5])


def _binomial(n: int, p: float, k: int) -> float:
    return math.comb(n, k) * p ** k * (1 - p) ** (n - k)


@pytest.mark.parametrize("p", [0.5, 0.15, 0.9])
def test_the_filter_at_n_16_misclassifies_as_often_as_the_binomial_says(p):
    # the estimate p_hat of a prompt with true pass rate p has standard error sqrt(p(1-p)/16):
    # 0.125 at p = 0.5 (book §7.2.3's N = 16); the filter keeps it with P(4 <= K <= 12)
    assert math.isclose(math.sqrt(0.25 / 16), 0.125)
    keep = sum(_binomial(16, p, k) for k in range(4, 13))
    rng = np.random.default_rng(0)
    prompts = 20_000
    rewards = (rng.random((prompts, 16)) < p).astype(np.float32)
    kept = float(jnp.mean(ch07.difficulty_filter(ch07.pass_rates(rewards))))
    se = math.sqrt(keep * (1 - keep) / prompts)
    assert abs(kept - keep) < 4 * se, (kept, keep, se)


def test_zero_signal_probability_matches_the_closed_form_values():
    exact = lambda p, G: float(Fraction(p) ** G + (1 - Fraction(p)) ** G)  # noqa: E731
    assert math.isclose(exact("0.2", 16), 0.0281474976, rel_tol=1e-8)
    for p, G, value in [(0.2, 16, 0.028147), (0.8, 16, 0.028147), (0.1, 16, 0.1853),
                        (0.05, 16, 0.4401), (0.2, 8, 0.1678), (0.2, 4, 0.4112), (0.5, 4, 0.125)]:
        got = float(ch07.zero_signal_probability(p, G))
        assert math.isclose(got, exact(str(p), G), rel_tol=1e-5)
        assert abs(got - value) < 1e-4
    assert float(ch07.zero_signal_probability(0.5, 8)) == 0.0078125  # 2 / 2^8, exactly
    np.testing.assert_allclose(ch07.zero_signal_probability(np.array([0.0, 1.0, 0.3]), 1), 1.0)
    p = np.linspace(0, 1, 11, dtype=np.float32)
    np.testing.assert_allclose(jax.jit(ch07.zero_signal_probability, static_argnums=1)(p, 16),
                               ch07.zero_signal_probability(p, 16), rtol=1e-6)
    with pytest.raises(ValueError, match="p"):
        ch07.zero_signal_probability(1.2, 8)
    with pytest.raises(ValueError, match="G"):
        ch07.zero_signal_probability(0.5, 0)
    with pytest.raises(ValueError, match="G"):
        ch07.zero_signal_probability(0.5, 2.5)


@pytest.mark.parametrize("p, G", [(0.2, 16), (0.5, 8), (0.1, 4)])
def test_zero_signal_probability_against_monte_carlo(p, G):
    rng = np.random.default_rng(1)
    groups = 40_000
    rewards = (rng.random((groups, G)) < p).astype(np.float32)
    share = float(jnp.mean(ch07.zero_variance_groups(rewards)))
    expected = float(ch07.zero_signal_probability(p, G))
    se = math.sqrt(expected * (1 - expected) / groups)
    assert abs(share - expected) < 4 * se, (share, expected, se)


def test_zero_variance_groups_have_zero_advantage_and_zero_gradient():
    rewards = np.array([[1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 0, 0], [0.5, 0.5, 0.5, 0.5]],
                       np.float32)
    flat = ch07.zero_variance_groups(rewards)
    np.testing.assert_array_equal(flat, [True, True, False, True])
    np.testing.assert_array_equal(flat, ~ch06.dynamic_sampling_mask(rewards))
    for advantages in (ch06.grpo_advantages(rewards), ch07.maxrl_advantages(rewards)):
        np.testing.assert_array_equal(np.asarray(advantages)[np.asarray(flat)], 0.0)
    # the gradient of the policy-gradient loss through a flat group is exactly zero
    logits = jnp.array(np.random.default_rng(2).normal(size=(16, 3)), jnp.float32)

    def loss(logits, advantages):
        logp = jax.nn.log_softmax(logits)[:, :1]  # one sampled token per completion
        return ch06.policy_gradient_loss(logp, advantages.reshape(-1), jnp.ones((16, 1)))

    grad = jax.grad(loss)(logits, ch06.grpo_advantages(rewards))
    np.testing.assert_array_equal(np.asarray(grad).reshape(4, 4, 3)[np.asarray(flat)], 0.0)
    assert np.abs(np.asarray(grad).reshape(4, 4, 3)[2]).sum() > 0


# ----------------------------------------------------------------------------------------------
# MaxRL beside GRPO


def test_maxrl_advantages_by_hand():
    rewards = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]],
                       np.float32)
    # K right of G = 4: a right one gets (G - K) / K, a wrong one -1; nothing right: 0
    expected = [[3, -1, -1, -1], [1, 1, -1, -1], [1 / 3, 1 / 3, 1 / 3, -1], [0, 0, 0, 0],
                [0, 0, 0, 0]]
    np.testing.assert_allclose(ch07.maxrl_advantages(rewards), expected, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(ch07.maxrl_advantages)(rewards), expected, rtol=1e-6)
    # GRPO's z-score is symmetric in K and G - K, MaxRL's is not: rare success weighs more
    grpo = np.asarray(ch06.grpo_advantages(rewards))
    np.testing.assert_allclose(grpo[0, 0], -grpo[2, 3], rtol=1e-5)
    assert expected[0][0] > 3 * expected[2][0]
    np.testing.assert_allclose(ch07.maxrl_advantages([[0.5, 0.0], [2.0, 1.0]]),
                               [[1.0, -1.0], [1 / 3, -1 / 3]], rtol=1e-6)  # non-binary, >= 0
    with pytest.raises(ValueError, match="rewards"):
        ch07.maxrl_advantages([[1.0, -1.0]])
    with pytest.raises(ValueError, match="rewards"):
        ch07.maxrl_advantages([[1.0], [0.0]])  # G = 1


@pytest.mark.parametrize("G", [2, 3, 5, 8])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_maxrl_estimates_the_truncated_maximum_likelihood_gradient(G, p):
    """Exact expectation over all 2^G outcomes for a one-logit policy pi(right) = sigmoid(theta):
    grad log pi(right) = 1 - p, grad log pi(wrong) = -p, grad p = p (1 - p)."""
    outcomes = np.array(list(itertools.product([0.0, 1.0], repeat=G)), np.float32)
    k = outcomes.sum(axis=1)
    prob = p ** k * (1 - p) ** (G - k)
    score = np.where(outcomes == 1, 1 - p, -p)

    def expected_update(advantages):
        return float(np.sum(prob * np.mean(np.asarray(advantages, np.float64) * score, axis=1)))

    grad_p = p * (1 - p)
    # the gradient of log p truncated after G - 1 terms, -sum_{j<G} (1 - p)^j / j
    truncated_ml = sum((1 - p) ** (j - 1) for j in range(1, G)) * grad_p
    assert math.isclose(truncated_ml, grad_p * (1 - (1 - p) ** (G - 1)) / p, rel_tol=1e-12)
    assert math.isclose(expected_update(ch07.maxrl_advantages(outcomes)), truncated_ml,
                        rel_tol=1e-5, abs_tol=1e-7)
    # the harness on a known case: centred rewards (Dr. GRPO) give (G - 1) / G * grad p
    centred = ch06.grpo_advantages(outcomes, scale=False)
    assert math.isclose(expected_update(centred), (G - 1) / G * grad_p, rel_tol=1e-5)


def test_maxrl_approaches_grad_log_p_as_groups_grow():
    p = 0.05  # a hard prompt: grad log p is 20 times grad p
    for G, share in ((16, 0.54), (64, 0.96)):
        truncated = 1 - (1 - p) ** (G - 1)  # MaxRL's expected update in units of grad log p
        assert abs(truncated - share) < 0.01


# ----------------------------------------------------------------------------------------------
# §7.2.3 Several rewards: sum then normalise (GRPO) against normalise then sum (GDPO)


def _zscore(x, axis=-1, eps=1e-4):
    x = np.asarray(x, np.float64)
    return (x - x.mean(axis=axis, keepdims=True)) / (x.std(axis=axis, ddof=1, keepdims=True) + eps)


def test_one_reward_reduces_both_to_grpo():
    rewards = np.random.default_rng(3).normal(size=(3, 5, 1)).astype(np.float32)
    grpo = ch06.grpo_advantages(rewards[..., 0])
    np.testing.assert_allclose(ch07.sum_then_normalize(rewards), grpo, rtol=1e-5)
    np.testing.assert_allclose(ch07.normalize_then_sum(rewards, batch_normalize=False), grpo,
                               rtol=1e-5)


def test_normalize_then_sum_against_a_numpy_oracle():
    rng = np.random.default_rng(4)
    rewards = rng.normal(size=(3, 4, 2)).astype(np.float32)
    weights = np.array([1.0, 0.5], np.float32)
    combined = sum(weights[r] * _zscore(rewards[..., r]) for r in range(2))
    np.testing.assert_allclose(ch07.normalize_then_sum(rewards, weights, batch_normalize=False),
                               combined, rtol=1e-5, atol=1e-6)
    flat = combined.reshape(-1)
    batch = (combined - flat.mean()) / (flat.std(ddof=1) + 1e-4)
    out = ch07.normalize_then_sum(rewards, weights)
    np.testing.assert_allclose(out, batch, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([float(jnp.mean(out)), float(jnp.std(out, ddof=1))], [0, 1],
                               atol=1e-3)
    np.testing.assert_allclose(ch07.sum_then_normalize(rewards, weights),
                               _zscore(rewards @ weights), rtol=1e-5, atol=1e-6)
    # jit == eager
    np.testing.assert_allclose(jax.jit(ch07.normalize_then_sum)(rewards, weights), out,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.jit(ch07.sum_then_normalize)(rewards, weights),
                               ch07.sum_then_normalize(rewards, weights), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", [10.0, 100.0, 1000.0])
def test_a_large_reward_swamps_correctness_when_summed_first_but_not_under_gdpo(scale):
    # one prompt, four completions: correctness (0/1) and a second reward (say length) that
    # varies by `scale` independently of it
    correct = np.array([1, 1, 0, 0], np.float32)
    other = np.array([0, 1, 0, 1], np.float32) * scale
    rewards = np.stack([correct, other], axis=-1)[None]  # [1, 4, 2]

    def correctness_effect(adv):
        adv = np.asarray(adv)[0]
        return adv[correct == 1].mean() - adv[correct == 0].mean()

    def other_effect(adv):
        adv = np.asarray(adv)[0]
        return adv[other > 0].mean() - adv[other == 0].mean()

    summed = ch07.sum_then_normalize(rewards)
    decoupled = ch07.normalize_then_sum(rewards, batch_normalize=False)
    # summed first: correctness moves the advantage 1/scale as much as the other reward, and
    # the right answer with the low other-reward gets a *negative* advantage
    np.testing.assert_allclose(correctness_effect(summed) / other_effect(summed), 1 / scale,
                               rtol=1e-4)
    assert float(summed[0, 0]) < 0 < float(summed[0, 3])
    # normalised first: both count equally (2 * 0.866 = sqrt(3) each), whatever the scale
    np.testing.assert_allclose(correctness_effect(decoupled), math.sqrt(3), rtol=1e-3)
    np.testing.assert_allclose(other_effect(decoupled), math.sqrt(3), rtol=1e-3)
    np.testing.assert_allclose(decoupled, [[0.0, math.sqrt(3), -math.sqrt(3), 0.0]], atol=1e-3)


def test_gdpo_is_invariant_to_one_rewards_scale_and_keeps_combinations_apart():
    rng = np.random.default_rng(5)
    rewards = rng.integers(0, 2, size=(4, 6, 2)).astype(np.float32)
    rewards[:, 0, :] = [1, 0]  # no flat groups
    rewards[:, 1, :] = [0, 1]
    stretched = rewards * np.array([1.0, 50.0], np.float32)
    np.testing.assert_allclose(ch07.normalize_then_sum(stretched), ch07.normalize_then_sum(rewards),
                               atol=1e-3)
    assert not np.allclose(ch07.sum_then_normalize(stretched), ch07.sum_then_normalize(rewards),
                           atol=1e-2)
    # GDPO's "advantage collapse" example, G = 2: total rewards [0, 1] and [0, 2] get the same
    # GRPO advantages; normalising each reward first keeps them apart
    one = np.array([[[0, 0], [0, 1]]], np.float32)  # only the second reward differs
    two = np.array([[[0, 0], [1, 1]]], np.float32)  # both differ
    np.testing.assert_allclose(ch07.sum_then_normalize(one), ch07.sum_then_normalize(two),
                               rtol=1e-4)
    a1 = np.asarray(ch07.normalize_then_sum(one, batch_normalize=False))
    a2 = np.asarray(ch07.normalize_then_sum(two, batch_normalize=False))
    np.testing.assert_allclose(a2, 2 * a1, rtol=1e-4)


def test_several_rewards_name_the_bad_argument():
    rewards = np.zeros((2, 3, 2), np.float32)
    with pytest.raises(ValueError, match="weights"):
        ch07.normalize_then_sum(rewards, [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="weights"):
        ch07.sum_then_normalize(rewards, [1.0, np.nan])
    with pytest.raises(ValueError, match="rewards"):
        ch07.sum_then_normalize(rewards[..., 0])
    with pytest.raises(ValueError, match="rewards"):
        ch07.normalize_then_sum(rewards[:, :1])
    with pytest.raises(ValueError, match="eps"):
        ch07.normalize_then_sum(rewards, eps=0.0)
    assert np.all(np.isfinite(ch07.normalize_then_sum(rewards)))  # all flat: zeros, not NaN


# ----------------------------------------------------------------------------------------------
# §7.2.3 Parallel test-time compute: majority vote


def test_majority_vote_and_its_tie_rule():
    assert ch07.majority_vote([9, 9, 8]) == 9
    assert ch07.majority_vote([8, 9, 9, 8]) == 8  # tie: 8 was seen first
    assert ch07.majority_vote([9, 8, 8, 9]) == 9
    assert ch07.majority_vote([None, "3", None, "4", "4"]) == "4"  # None does not vote
    assert ch07.majority_vote([None, None]) is None
    assert ch07.majority_vote([]) is None
    assert ch07.majority_vote(("a",)) == "a"
    with pytest.raises(ValueError, match="answers"):
        ch07.majority_vote("99")
    with pytest.raises(ValueError, match="answers"):
        ch07.majority_vote([[1], [1]])


def test_majority_vote_index_agrees_with_the_python_vote():
    rng = np.random.default_rng(6)
    answers = rng.integers(0, 4, size=(300, 7))
    valid = rng.random((300, 7)) < 0.8
    valid[:5] = False  # no vote at all
    index = np.asarray(ch07.majority_vote_index(answers, valid))
    jitted = np.asarray(jax.jit(ch07.majority_vote_index)(answers, valid))
    np.testing.assert_array_equal(index, jitted)
    for row, v, i in zip(answers, valid, index):
        expected = ch07.majority_vote([int(a) if ok else None for a, ok in zip(row, v)])
        if expected is None:
            assert i == -1
        else:
            assert v[i] and row[i] == expected
            assert i == next(j for j in range(7) if v[j] and row[j] == expected)  # first sample
    vmapped = jax.vmap(ch07.majority_vote_index)(answers.reshape(30, 10, 7),
                                                 valid.reshape(30, 10, 7))
    np.testing.assert_array_equal(np.asarray(vmapped).reshape(-1), index)
    # integers are compared as integers (float32 would merge 2^24 and 2^24 + 1)
    assert int(ch07.majority_vote_index(np.array([2 ** 24 + 1, 2 ** 24, 2 ** 24]))) == 1
    assert int(ch07.majority_vote_index([3.0, 1.5, 1.5])) == 1
    with pytest.raises(ValueError, match="valid"):
        ch07.majority_vote_index([1, 2, 3], [True, False])
    with pytest.raises(ValueError, match="answers"):
        ch07.majority_vote_index([1.0, np.nan])


def _brute_force_vote_accuracy(p_correct, wrong, N):
    """Sum over every sequence of N samples (0 = right, 1.. = wrong answers, None = no answer)
    of its probability when majority_vote picks 0."""
    categories = [(0, p_correct)] + [(i + 1, q) for i, q in enumerate(wrong)]
    categories.append((None, 1 - p_correct - sum(wrong)))
    total = 0.0
    for seq in itertools.product(categories, repeat=N):
        if ch07.majority_vote([a for a, _ in seq]) == 0:
            total += math.prod(q for _, q in seq)
    return total


@pytest.mark.parametrize("p_correct, wrong", [(0.5, [0.25, 0.25]), (0.3, [0.4, 0.1]),
                                               (0.35, [0.2, 0.15]), (0.6, [0.4])])
def test_majority_vote_accuracy_equals_brute_force_enumeration(p_correct, wrong):
    for N in range(1, 6):
        np.testing.assert_allclose(ch07.majority_vote_accuracy(p_correct, wrong, N),
                                   _brute_force_vote_accuracy(p_correct, wrong, N), rtol=1e-10)


def test_majority_vote_accuracy_by_hand_and_its_shape():
    # N = 1 is one sample
    for p, wrong in ((0.5, [0.25, 0.25]), (0.2, [0.1] * 8), (0.7, [])):
        assert math.isclose(ch07.majority_vote_accuracy(p, wrong, 1), p, rel_tol=1e-12)
    # three classes, p = 0.5: N = 2 ties half the time (0.25 + 2 * 0.25 / 2); N = 3 wins with two
    # or three votes (0.5) or a three-way tie (3! * 0.5 * 0.25 * 0.25 / 3)
    assert math.isclose(ch07.majority_vote_accuracy(0.5, [0.25, 0.25], 2), 0.5, rel_tol=1e-12)
    assert math.isclose(ch07.majority_vote_accuracy(0.5, [0.25, 0.25], 3), 0.5625, rel_tol=1e-12)
    curve = [ch07.majority_vote_accuracy(0.5, [0.25, 0.25], N) for N in (1, 5, 25)]
    assert curve[0] < curve[1] < curve[2]
    # a plurality is enough: 30% right beats 7 wrong answers of 10% each ...
    spread = [ch07.majority_vote_accuracy(0.3, [0.1] * 7, N) for N in (1, 9, 33)]
    assert spread[0] < spread[1] < spread[2]
    # ... but not one wrong answer of 40%: voting then makes things worse
    peaked = [ch07.majority_vote_accuracy(0.3, [0.4, 0.3], N) for N in (1, 9, 33)]
    assert peaked[0] > peaked[1] > peaked[2]
    assert ch07.majority_vote_accuracy(1.0, [], 7) == 1.0
    assert ch07.majority_vote_accuracy(0.0, [0.5], 7) == 0.0
    # no answer at all counts as wrong: with only abstentions besides, accuracy = P(>= 1 right)
    assert math.isclose(ch07.majority_vote_accuracy(0.2, [], 4), 1 - 0.8 ** 4, rel_tol=1e-12)


def test_majority_vote_accuracy_against_monte_carlo():
    p_correct, wrong, N, trials = 0.35, [0.25, 0.2, 0.1], 9, 40_000
    probs = np.array([p_correct, *wrong, 1 - p_correct - sum(wrong)])
    rng = np.random.default_rng(7)
    draws = rng.choice(len(probs), p=probs, size=(trials, N))  # last category: no answer
    winner = np.asarray(ch07.majority_vote_index(draws, draws < len(probs) - 1))
    won = (winner >= 0) & (np.take_along_axis(draws, np.maximum(winner, 0)[:, None], 1)[:, 0] == 0)
    exact = ch07.majority_vote_accuracy(p_correct, wrong, N)
    se = math.sqrt(exact * (1 - exact) / trials)
    assert abs(won.mean() - exact) < 4 * se, (won.mean(), exact, se)


def test_majority_vote_accuracy_names_the_bad_argument():
    with pytest.raises(ValueError, match="p_correct"):
        ch07.majority_vote_accuracy(1.5, [], 3)
    with pytest.raises(ValueError, match="wrong_probs"):
        ch07.majority_vote_accuracy(0.5, [0.3, 0.3], 3)
    with pytest.raises(ValueError, match="wrong_probs"):
        ch07.majority_vote_accuracy(0.5, [-0.1], 3)
    with pytest.raises(ValueError, match="N"):
        ch07.majority_vote_accuracy(0.5, [0.2], 0)


# ----------------------------------------------------------------------------------------------
# pass@k


def test_pass_at_k_by_hand_n_10_c_3():
    got = [float(ch07.pass_at_k(10, 3, k)) for k in (1, 2, 5, 10)]
    np.testing.assert_allclose(got, [0.3, 8 / 15, 11 / 12, 1.0], rtol=1e-6)
    np.testing.assert_allclose(got[1], 0.5333, atol=1e-4)
    np.testing.assert_allclose(got[2], 0.9167, atol=1e-4)
    for k in (1, 2, 5, 10):  # the definition with binomial coefficients
        np.testing.assert_allclose(float(ch07.pass_at_k(10, 3, k)),
                                   1 - math.comb(7, k) / math.comb(10, k), rtol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 4, 7])
def test_pass_at_k_equals_the_share_of_k_subsets_with_a_correct_sample(n):
    for c in range(n + 1):
        samples = [1] * c + [0] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(samples, k))
            share = sum(any(s) for s in subsets) / len(subsets)
            np.testing.assert_allclose(float(ch07.pass_at_k(n, c, k)), share, atol=1e-6)


def test_pass_at_k_is_unbiased_where_the_plug_in_is_not():
    n = 16
    counts = np.arange(n + 1)
    for p in (0.05, 0.3, 0.7):
        weights = np.array([_binomial(n, p, c) for c in counts])
        for k in (1, 4, 16):
            estimate = np.asarray(ch07.pass_at_k(n, counts, k), np.float64)
            np.testing.assert_allclose(weights @ estimate, 1 - (1 - p) ** k, rtol=1e-5)
            plug_in = weights @ (1 - (1 - counts / n) ** k)
            if k > 1:
                assert plug_in < 1 - (1 - p) ** k  # biased low (Jensen: concave in c / n)
    # vectorised over problems; the edges are exact
    c = np.array([0, 1, 5, 60, 63, 64])
    out = np.asarray(ch07.pass_at_k(64, c, 4))
    np.testing.assert_allclose(out, [1 - math.comb(64 - ci, 4) / math.comb(64, 4) for ci in c],
                               rtol=1e-5, atol=1e-7)
    assert out[0] == 0.0 and out[-1] == 1.0 and out[-2] == 1.0


def test_pass_at_k_jits_and_vmaps_over_k():
    c = np.array([0, 3, 7, 10])
    eager = np.stack([np.asarray(ch07.pass_at_k(10, c, k)) for k in range(1, 11)])
    jitted = jax.jit(ch07.pass_at_k, static_argnums=0)(10, c, 3)
    np.testing.assert_allclose(jitted, eager[2], rtol=1e-6)
    curve = jax.vmap(lambda k: ch07.pass_at_k(10, c, k))(jnp.arange(1, 11))
    np.testing.assert_allclose(curve, eager, rtol=1e-6, atol=1e-7)
    assert np.all(np.diff(eager, axis=0) >= -1e-7)  # pass@k never falls with k


def test_pass_at_k_names_the_bad_argument():
    with pytest.raises(ValueError, match="k"):
        ch07.pass_at_k(10, 3, 11)  # k > n
    with pytest.raises(ValueError, match="k"):
        ch07.pass_at_k(10, 3, 0)
    with pytest.raises(ValueError, match="k"):
        ch07.pass_at_k(10, 3, 2.5)
    with pytest.raises(ValueError, match="c"):
        ch07.pass_at_k(10, 11, 2)
    with pytest.raises(ValueError, match="c"):
        ch07.pass_at_k(10, 2.5, 2)
    with pytest.raises(ValueError, match="c"):
        ch07.pass_at_k(10, np.array([], np.float32), 2)
    with pytest.raises(ValueError, match="n"):
        ch07.pass_at_k(0, 0, 1)
    with pytest.raises(ValueError, match="n"):
        ch07.pass_at_k(10.0, 3, 2)


def test_pass_at_k_stays_finite_and_exact_for_large_n_when_every_subset_holds_a_correct_one():
    # n - c < k: the factors below i = k are large and negative (1 - 150/2 = -74); their product
    # overflows float32 before the zero factor at i = k arrives, and inf * 0 is NaN
    c = np.array([0, 1, 50, 199, 200])
    for k in (2, 100, 150, 200):
        out = np.asarray(ch07.pass_at_k(200, c, k), np.float64)
        assert np.all(np.isfinite(out)), (k, out)
        expected = [1 - float(Fraction(math.comb(200 - ci, k), math.comb(200, k))) for ci in c]
        np.testing.assert_allclose(out, expected, atol=1e-6)
    assert float(ch07.pass_at_k(200, 199, 150)) == 1.0


# ----------------------------------------------------------------------------------------------
# The graded exercises 7.1-7.7: the reference passes every check; plausible wrong versions fail
# it with the hint that names their mistake.

EXERCISES_7 = {"7.1": ch07.extract_final_answer, "7.2": ch07.unit_test_reward,
               "7.3": ch07.pass_at_k, "7.4": ch07.zero_signal_probability,
               "7.5": ch07.difficulty_filter, "7.6": ch07.majority_vote,
               "7.7": ch07.maxrl_advantages}


@pytest.mark.parametrize("exercise_id", sorted(EXERCISES_7))
def test_the_reference_passes_each_check_of_chapter_7(exercise_id):
    exercise = catalog.get_exercise(exercise_id)
    assert exercise.reference() is EXERCISES_7[exercise_id]
    assert exercise.difficulty in catalog.DIFFICULTIES
    exercise.checker()(exercise.reference())


def test_chapter_7_stubs_keep_the_contract_and_raise_not_started():
    chapter = catalog.get_chapter("ch07")
    assert [e.id for e in chapter.exercises][:7] == sorted(EXERCISES_7)
    namespace = {}
    exec(compile(stubs.stub_source(chapter), "stub", "exec"), namespace)
    calls = {"7.1": ("The answer is 4.",), "7.2": ([True, False],), "7.3": (10, 3, 2),
             "7.4": (0.5, 8), "7.5": ([0.1, 0.5],), "7.6": ([1, 1, 2],),
             "7.7": ([[1.0, 0.0]],)}
    for exercise_id, reference in EXERCISES_7.items():
        stub = namespace[reference.__name__]
        assert stub.__doc__ == stubs.split_docstring(reference.__doc__)[0]
        with pytest.raises(NotImplementedError, match=f"Exercise {exercise_id} "):
            stub(*calls[exercise_id])


def test_the_oracles_agree_with_each_other_and_with_the_book():
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert checks.pass_at_k_oracle(n, c, k) == pytest.approx(
                    checks.pass_at_k_enumeration(n, c, k), abs=1e-12)
    assert checks.pass_at_k_oracle(10, 3, 2) == pytest.approx(8 / 15)
    assert sum(_primes_below(20)) == 77 and checks.BOOK_PRIMES_RESPONSE.endswith(
        "The answer is $\\boxed{77}$.")
    assert checks.difficulty_filter_oracle(range(17), 16).tolist() == [
        False] * 4 + [True] * 9 + [False] * 4  # 4/16 .. 12/16 lie in [0.2, 0.8]
    assert checks.majority_vote_oracle([8, 9, 9, 8]) == 8
    assert checks.majority_vote_oracle([None, None, 5]) == 5
    assert checks.majority_vote_oracle([None]) is None
    np.testing.assert_allclose(checks.maxrl_loop([[1, 0, 0, 0], [0, 0, 0, 0]]),
                               [[3, -1, -1, -1], [0, 0, 0, 0]])


# Wrong versions: each is the reference with one common mistake.

def _box_by_lazy_regex(text, style="any"):
    if style == "boxed":  # stops at the first "}", nested braces or not
        found = re.findall(r"\\boxed\{(.*?)\}", text)
        return ch07.normalize_answer(found[-1]) if found else None
    return ch07.extract_final_answer(text, style)


def _first_answer_tag(text, style="any"):
    if style == "answer_tag":
        found = re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
        return ch07.normalize_answer(found[0]) if found else None
    return ch07.extract_final_answer(text, style)


def _any_falls_back_to_the_last_integer(text, style="any"):
    found = ch07.extract_final_answer(text, style)
    return ch07.extract_final_answer(text, "last_integer") if found is None and style == "any" \
        else found


def _gate_with_any(passed, mode="all"):
    passed = jnp.asarray(passed, jnp.float32)
    return jnp.max(passed, axis=-1) if mode == "all" else jnp.mean(passed, axis=-1)


def _count_not_fraction(passed, mode="all"):
    passed = jnp.asarray(passed, jnp.float32)
    return jnp.min(passed, axis=-1) if mode == "all" else jnp.sum(passed, axis=-1)


def _reduce_everything(passed, mode="all"):
    passed = jnp.asarray(passed, jnp.float32)
    return jnp.min(passed) if mode == "all" else jnp.mean(passed)


def _plug_in(n, c, k):
    return 1.0 - (1.0 - jnp.asarray(c, jnp.float32) / n) ** k


def _by_factorials(n, c, k):  # the n - c < k case handled, but Gamma(201) overflows float32
    c = jnp.asarray(c, jnp.float32)
    gamma = jax.scipy.special.gamma

    def comb(a, b):
        return gamma(a + 1) / (gamma(b + 1) * gamma(a - b + 1))
    return jnp.where(n - c < k, 1.0, 1.0 - comb(n - c, k) / comb(n, k))


def _one_factor_too_many(n, c, k):
    c = jnp.asarray(c, jnp.float32)
    i = jnp.arange(1, n + 1, dtype=jnp.float32)
    factors = jnp.where(i >= (n - c)[..., None], 1.0 - k / i, 1.0)  # i = n - c included
    return jnp.where(n - c < k, 1.0, 1.0 - jnp.prod(factors, axis=-1))


def _all_wrong_only(p, G):
    return (1.0 - jnp.asarray(p, jnp.float32)) ** G


def _share_with_signal(p, G):
    p = jnp.asarray(p, jnp.float32)
    return 1.0 - p ** G - (1.0 - p) ** G


def _strict_bounds(pass_rates, low=0.2, high=0.8):
    rates = jnp.asarray(pass_rates, jnp.float32)
    return (rates > low) & (rates < high)


def _no_rounding_allowance(pass_rates, low=0.2, high=0.8):
    rates = jnp.asarray(pass_rates, jnp.float32)
    return (rates >= low) & (rates <= high)


def _the_books_bounds_always(pass_rates, low=0.2, high=0.8):
    rates = jnp.asarray(pass_rates, jnp.float32)
    return (rates >= 0.2 - 1e-6) & (rates <= 0.8 + 1e-6)


def _none_votes(answers):
    counts = {}
    for answer in answers:
        counts[answer] = counts.get(answer, 0) + 1
    return max(counts, key=counts.__getitem__) if counts else None


def _last_occurrence_wins(answers):
    counts = {}
    for answer in reversed(answers):
        if answer is not None:
            counts[answer] = counts.get(answer, 0) + 1
    return max(counts, key=counts.__getitem__) if counts else None


def _smallest_wins_ties(answers):
    counts = {}
    for answer in answers:
        if answer is not None:
            counts[answer] = counts.get(answer, 0) + 1
    return max(sorted(counts), key=counts.__getitem__) if counts else None


def _grpo_std(rewards):
    rewards = jnp.asarray(rewards, jnp.float32)
    mean = rewards.mean(axis=1, keepdims=True)
    return (rewards - mean) / (rewards.std(axis=1, keepdims=True) + 1e-4)


def _mean_plus_eps(rewards):
    rewards = jnp.asarray(rewards, jnp.float32)
    mean = rewards.mean(axis=1, keepdims=True)
    return (rewards - mean) / (mean + 1e-4)


def _no_zero_rule(rewards):
    rewards = jnp.asarray(rewards, jnp.float32)
    mean = rewards.mean(axis=1, keepdims=True)
    return (rewards - mean) / mean


def _audit(a, b, text, **change):
    """The reference audit with some checks recomputed by a wrong rule."""
    from rlhf_book.ch07_reasoning.reasoning_length import STATED, STEP, audit_worked_answer
    out = audit_worked_answer(a, b, text)
    if out is None:
        return None
    steps = [[int(t) if t else 0 for t in step] for step in STEP.findall(text)[:2]]
    stated = STATED.search(text)
    for key, rule in change.items():
        out[key] = rule(a, b, steps, stated)
    return out


def _facts_without_the_carry(a, b, text):
    return _audit(a, b, text, facts=lambda a, b, st, _: all(x + y == s for x, y, _c, s in st))


def _outcome_not_process(a, b, text):
    return _audit(a, b, text, follows=lambda a, b, st, stated:
                  stated is not None and int(stated.group(1)) == a + b)


def _columns_in_order(a, b, text):
    return _audit(a, b, text, columns=lambda a, b, st, _:
                  st[0][:2] == [a % 10, b % 10] and st[1][:2] == [a // 10, b // 10])


def _facts_of_the_ones_step_only(a, b, text):
    return _audit(a, b, text, facts=lambda a, b, st, _: st[0][0] + st[0][1] + st[0][2] == st[0][3])


def _columns_of_the_ones_step_only(a, b, text):
    return _audit(a, b, text, columns=lambda a, b, st, _:
                  sorted(st[0][:2]) == sorted([a % 10, b % 10]))


def _any_third_term_is_a_carry(a, b, text):
    return _audit(a, b, text, carry=lambda a, b, st, _:
                  (st[1][2] > 0) == (a % 10 + b % 10 >= 10))


def _audits_direct_answers(a, b, text):
    out = _audit(a, b, text)
    return dict.fromkeys(("facts", "columns", "carry", "follows"), False) if out is None else out


WRONG_VERSIONS = [
    ("extract_final_answer", _box_by_lazy_regex, "nested braces balanced"),
    ("extract_final_answer", _first_answer_tag, "the LAST <answer> tag"),
    ("extract_final_answer", _any_falls_back_to_the_last_integer,
     "'any' never falls back to last_integer"),
    ("unit_test_reward", _gate_with_any, "gating: one failed test gives 0"),
    ("unit_test_reward", _count_not_fraction, "partial credit: 2 of the 3 tests pass"),
    ("unit_test_reward", _reduce_everything, "reduce over the last axis"),
    ("pass_at_k", _plug_in, "the plug-in 1 - (1 - c/n)^k draws with replacement"),
    ("pass_at_k", _by_factorials, "overflows float32"),
    ("pass_at_k", _one_factor_too_many, "vs math.comb: 1 - C(n - c, k) / C(n, k): the share"),
    ("zero_signal_probability", _all_wrong_only, "all right (p^G) or all wrong"),
    ("zero_signal_probability", _share_with_signal, "about 0.02815"),
    ("difficulty_filter", _strict_bounds, "both bounds inclusive"),
    ("difficulty_filter", _no_rounding_allowance, "allows 1e-6 of rounding"),
    ("difficulty_filter", _the_books_bounds_always, "use the low and high passed in"),
    ("majority_vote", _none_votes, "does not vote"),
    ("majority_vote", _last_occurrence_wins, "first occurrence comes first wins"),
    ("majority_vote", _smallest_wins_ties, "not the smallest"),
    ("maxrl_advantages", _grpo_std, "no eps and no std"),
    ("maxrl_advantages", _mean_plus_eps, "no eps and no std"),
    ("maxrl_advantages", _no_zero_rule, "not NaN"),
    ("audit_worked_answer", _facts_without_the_carry, "the carry is a term of the tens sum"),
    ("audit_worked_answer", _outcome_not_process, "not whether it is right"),
    ("audit_worked_answer", _columns_in_order, "in either order"),
    ("audit_worked_answer", _audits_direct_answers, "not audited"),
    ("audit_worked_answer", _facts_of_the_ones_step_only, "both steps must be true"),
    ("audit_worked_answer", _columns_of_the_ones_step_only, "both columns must be right"),
    ("audit_worked_answer", _any_third_term_is_a_carry, "a carry is 1, never 2"),
]


@pytest.mark.parametrize("check, wrong, hint", WRONG_VERSIONS,
                         ids=[wrong.__name__.strip("_") for _, wrong, _ in WRONG_VERSIONS])
def test_the_chapter_7_checks_catch_wrong_versions_with_their_hint(check, wrong, hint):
    with pytest.raises(Mismatch) as caught:
        getattr(checks, check)(wrong)
    assert hint in str(caught.value), str(caught.value)


def _pass_at_k_by_log_gamma(n, c, k):  # right: float32 log-gamma, the n - c < k case handled
    c = jnp.asarray(c, jnp.float32)
    lgamma = jax.scipy.special.gammaln

    def log_comb(a, b):
        return lgamma(a + 1) - lgamma(b + 1) - lgamma(a - b + 1)
    ratio = jnp.exp(log_comb(jnp.maximum(n - c, k), k) - log_comb(n, k))
    return jnp.where(n - c < k, 1.0, 1.0 - ratio)


def _vote_by_counter(answers):  # right: Counter keeps first-occurrence order among equal counts
    import collections

    counts = collections.Counter(a for a in answers if a is not None)
    return counts.most_common(1)[0][0] if counts else None


def _audit_by_splitting(a, b, text):  # right: no regular expression, str.split only
    steps = []
    for part in text.replace(".", ",").split(","):
        lhs, eq, rhs = part.strip().partition(" = ")
        terms = lhs.split(" + ")
        if eq and 2 <= len(terms) <= 3 and all(t.isdigit() for t in terms) and rhs.isdigit():
            steps.append(([int(t) for t in terms], int(rhs)))
    if len(steps) < 2:
        return None
    (t0, s0), (t1, s1) = steps[:2]
    _, found, tail = text.rpartition("answer is ")
    digits = tail.split(".")[0].strip()
    overflow = a % 10 + b % 10 >= 10
    return {"facts": sum(t0) == s0 and sum(t1) == s1,
            "columns": sorted(t0[:2]) == sorted([a % 10, b % 10])
            and sorted(t1[:2]) == sorted([a // 10, b // 10]),
            "carry": t1[2:] == ([1] if overflow else []),
            "follows": bool(found) and digits.isdigit() and int(digits) == 10 * s1 + s0 % 10}


@pytest.mark.parametrize("check, right", [("pass_at_k", _pass_at_k_by_log_gamma),
                                          ("majority_vote", _vote_by_counter),
                                          ("audit_worked_answer", _audit_by_splitting)],
                         ids=["log-gamma", "counter", "split"])
def test_other_right_solutions_pass_the_chapter_7_checks(check, right):
    getattr(checks, check)(right)


def test_the_grader_counts_the_failing_sub_checks_of_a_wrong_chapter_7_version():
    result = grading.run_check(catalog.get_exercise("7.6"), _none_votes)
    assert result.status != grading.PASSED and "does not vote" in result.hint
