"""Tests of chapter 16's library (rlhf_book.ch16_evaluation) and its graded exercises.

Expected values come from outside the implementation: the book's prompts and numbers (book
§16.1's few-shot multiple-choice prompt and Tulu 3's MMLU prompt; Appendix C.2, Table 7)
and values derived from them by hand (the intervals of Table 7's differences, the winner's
curse of Appendix C.3), closed forms for the expected maximum of normals (n = 2 to 5),
the two-sample power formula with fixed normal quantiles, strings and arrays built so that the
answer is known by construction, an independent Bradley-Terry fit (choix, and a float64 Newton
fit written here), and Monte Carlo simulations compared within a few standard errors.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from math import comb

import jax
import numpy as np
import pytest

from rlhf_book import ch16_evaluation as ch16
from rlhf_book import cli, data
from rlhf_book.ch16_evaluation import experiments, harness
from rlhf_book.lm import gpt, train
from rlhf_book.textbook import catalog, grading
from rlhf_book.textbook.checks import Mismatch
from rlhf_book.textbook.checks import ch16_evaluation as checks

# ----------------------------------------------------------------------------------------------
# The graded exercises 16.1-16.7: the reference passes every check, in process and through the
# grader; plausible wrong versions fail with the hint that names their mistake.

EXERCISES_16 = {"16.1": ch16.extract_strict_answer, "16.2": ch16.choice_log_likelihood,
                "16.3": ch16.rerun_std, "16.4": ch16.diff_ci, "16.5": ch16.ngram_contamination,
                "16.6": ch16.elo_update, "16.7": ch16.elo_ratings, "16.8": ch16.maj_at_k}


@pytest.mark.parametrize("exercise_id", sorted(EXERCISES_16))
def test_the_reference_passes_each_check_of_chapter_16(exercise_id):
    exercise = catalog.get_exercise(exercise_id)
    assert exercise.reference() is EXERCISES_16[exercise_id]
    assert exercise.difficulty in catalog.DIFFICULTIES
    exercise.checker()(exercise.reference())


def test_the_grader_passes_the_library_on_chapter_16():
    """Through ``rlhf-book grade``: the function in another process, its jit and vmap run
    there by probes, only arguments and outputs crossing."""
    results = grading.grade(["ch16"], impl="reference")
    assert [r.id for r in results] == sorted(EXERCISES_16)
    assert all(r.status == grading.PASSED for r in results), [(r.id, r.message) for r in results]


def _extract_first(text, style="tulu"):
    patterns = {"tulu": r"Therefore, the answer is \(([A-J])\)", "boxed": r"\\boxed\{([^{}]+)\}",
                "answer_is": r"The answer is:[ \t]*([^\n]+)"}
    found = re.search(patterns[style], text)
    return None if found is None else found.group(1).strip().removesuffix(".")


def _extract_ignoring_case(text, style="tulu"):
    if style == "tulu":
        found = re.findall(r"Therefore, the answer is \(([A-J])\)", text, re.IGNORECASE)
        return found[-1] if found else None
    return ch16.extract_strict_answer(text, style)


def _extract_keeping_the_full_stop(text, style="tulu"):
    if style == "answer_is":
        found = re.findall(r"The answer is:[ \t]*([^\n]+)", text)
        return found[-1].strip() if found else None
    return ch16.extract_strict_answer(text, style)


def _scores_multiplying_by_the_mask(token_log_probs, mask, chars=None, norm="none"):
    total = (jax.numpy.asarray(token_log_probs) * jax.numpy.asarray(mask)).sum(-1)
    if norm == "token":
        return total / jax.numpy.asarray(mask).sum(-1)
    return total if norm == "none" else total / jax.numpy.asarray(chars)


def _scores_per_position(token_log_probs, mask, chars=None, norm="none"):
    if norm == "token":
        total = ch16.choice_log_likelihood(token_log_probs, mask)
        return total / np.shape(token_log_probs)[-1]  # every position, not the answer's tokens
    return ch16.choice_log_likelihood(token_log_probs, mask, chars, norm)


def _std_over_sqrt_n(p):
    p = jax.numpy.asarray(p, jax.numpy.float32)
    return jax.numpy.sqrt((p * (1 - p)).sum(-1)) / jax.numpy.sqrt(p.shape[-1])


def _ci_of_one_model(sigma_a, sigma_b=None, n_a=1, n_b=1, z=1.96):
    return z * jax.numpy.asarray(sigma_a, jax.numpy.float32) / math.sqrt(n_a)


def _ci_adding_sigmas(sigma_a, sigma_b=None, n_a=1, n_b=1, z=1.96):
    sigma_b = sigma_a if sigma_b is None else sigma_b
    return z * (jax.numpy.asarray(sigma_a, jax.numpy.float32) / math.sqrt(n_a)
                + jax.numpy.asarray(sigma_b, jax.numpy.float32) / math.sqrt(n_b)) / math.sqrt(2)


def _ngram_joining_the_corpus(train_texts, eval_texts, n=8):
    return ch16.ngram_contamination([" ".join(train_texts)], eval_texts, n)


def _ngram_without_short_items(train_texts, eval_texts, n=8):
    flags = ch16.ngram_contamination(train_texts, eval_texts, n)
    return flags & np.array([len(ch16.words(t)) >= n for t in eval_texts], bool)


def _ngram_on_raw_tokens(train_texts, eval_texts, n=8):
    def grams(text, size):
        w = text.split()
        return {tuple(w[i:i + size]) for i in range(len(w) - size + 1)}
    flags = []
    for item in eval_texts:
        size = min(n, len(item.split()))
        corpus = set().union(*(grams(t, size) for t in train_texts))
        flags.append(bool(grams(item, size) & corpus))
    return np.array(flags, bool)


def _elo_natural_base(r_a, r_b, s_a, k=32.0):
    change = k * (jax.numpy.asarray(s_a, jax.numpy.float32)
                  - jax.nn.sigmoid((jax.numpy.asarray(r_a) - r_b) / 400.0))
    return r_a + change, r_b - change


def _elo_loser_gains_too(r_a, r_b, s_a, k=32.0):
    new_a, _ = ch16.elo_update(r_a, r_b, s_a, k)
    return new_a, r_b + (new_a - r_a)


def _elo_all_at_once(pairs, outcomes, n_players, k=32.0, initial=1000.0):
    """Every battle scored against the starting ratings, the changes added up: order-free."""
    pairs = jax.numpy.asarray(pairs)
    change = k * (jax.numpy.asarray(outcomes, jax.numpy.float32) - 0.5)
    ratings = jax.numpy.full(n_players, initial, jax.numpy.float32)
    return ratings.at[pairs[:, 0]].add(change).at[pairs[:, 1]].add(-change)


def _maj_counting_none(answers, gold, k):
    """A vote in which "no answer" is an answer too."""
    n = min(len(a) for a in answers)
    return np.array([np.mean([max(a[b * k:(b + 1) * k], key=list(a[b * k:(b + 1) * k]).count)
                              == g for a, g in zip(answers, gold)]) for b in range(n // k)])


def _maj_pooling_blocks(answers, gold, k):
    """One vote over all samples, repeated for every block."""
    n = min(len(a) for a in answers)
    full = ch16.maj_at_k([list(a[:n]) for a in answers], gold, n)[0]
    return np.full(n // k, full)


WRONG_VERSIONS = [
    ("extract_strict_answer", _extract_first, "the LAST"),
    ("extract_strict_answer", _extract_ignoring_case, "case-sensitive"),
    ("extract_strict_answer", _extract_keeping_the_full_stop, "one final full stop"),
    ("choice_log_likelihood", _scores_multiplying_by_the_mask, "-inf * 0 is NaN"),
    ("choice_log_likelihood", _scores_per_position, "the mask's sum"),
    ("rerun_std", _std_over_sqrt_n, "3.54 points"),
    ("diff_ci", _ci_of_one_model, "sigma_b = sigma_a"),
    ("diff_ci", _ci_adding_sigmas, "their variances add, not the sigmas"),
    ("ngram_contamination", _ngram_joining_the_corpus, "windows never cross"),
    ("ngram_contamination", _ngram_without_short_items, "occurs whole as a consecutive run"),
    ("ngram_contamination", _ngram_on_raw_tokens, "case and punctuation"),
    ("elo_update", _elo_natural_base, "0.7597"),
    ("elo_update", _elo_loser_gains_too, "R_B' = R_B - K (S_A - E_A)"),
    ("elo_ratings", _elo_all_at_once, "CURRENT ratings"),
    ("maj_at_k", _maj_counting_none, "None abstains"),
    ("maj_at_k", _maj_pooling_blocks, "blocks"),
]


@pytest.mark.parametrize("check, wrong, hint", WRONG_VERSIONS,
                         ids=[wrong.__name__.strip("_") for _, wrong, _ in WRONG_VERSIONS])
def test_the_chapter_16_checks_catch_wrong_versions_with_their_hint(check, wrong, hint):
    with pytest.raises(Mismatch) as caught:
        getattr(checks, check)(wrong)
    assert hint in str(caught.value), str(caught.value)


def test_the_check_oracles_on_hand_cases():
    assert checks.elo_expected_score(1200, 1000) == pytest.approx(0.7597, abs=5e-5)
    np.testing.assert_allclose(checks.elo_loop([[0, 1]], [1.0], 2), [1016.0, 984.0])
    assert checks.rerun_std_loop(np.full((1, 200), 0.5))[0] == pytest.approx(0.0353553, abs=1e-7)
    assert checks.ngram_oracle([["a", "b", "c"]], [["b", "c"], ["c", "b"], ["a", "b", "c", "d"],
                                                   ["b", "c", "d"]], 3).tolist() == [
        True, False, True, False]
    np.testing.assert_allclose(checks.choice_scores_loop(checks.FLIP_LOGP, checks.FLIP_MASK,
                                                         checks.FLIP_CHARS, "char"),
                               checks.FLIP["char"][0], atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Prompt formats (book §16.1)

BOOK_FEWSHOT_PROMPT = """# Few-Shot Prompt

Below are examples of MMLU-style questions and answers:

### Example 1
Q: A right triangle has legs of lengths 3 and 4. What is the length of its hypotenuse?
Choices:
(A) 5
(B) 6
(C) 7
(D) 8

Correct Answer: (A)

### Example 2
Q: Which of the following is the chemical symbol for Sodium?
Choices:
(A) Na
(B) S
(C) N
(D) Ca

Correct Answer: (A)

### Now answer the new question in the same style:

Q: Which theorem states that if a function $f$ is continuous on a closed interval $[a,b]$, then $f$ must attain both a maximum and a minimum on that interval?
Choices:
(A) The Mean Value Theorem
(B) The Intermediate Value Theorem
(C) The Extreme Value Theorem
(D) Rolle's Theorem

Correct Answer:"""

BOOK_EXAMPLES = [
    {"question": "A right triangle has legs of lengths 3 and 4. What is the length of its "
                 "hypotenuse?", "choices": ["5", "6", "7", "8"], "answer": "A"},
    {"question": "Which of the following is the chemical symbol for Sodium?",
     "choices": ["Na", "S", "N", "Ca"], "answer": "A"},
]
BOOK_QUERY = {
    "question": "Which theorem states that if a function $f$ is continuous on a closed interval "
                "$[a,b]$, then $f$ must attain both a maximum and a minimum on that interval?",
    "choices": ["The Mean Value Theorem", "The Intermediate Value Theorem",
                "The Extreme Value Theorem", "Rolle's Theorem"],
}


def test_fewshot_mc_prompt_reproduces_the_books_prompt():
    assert ch16.fewshot_mc_prompt(BOOK_EXAMPLES, BOOK_QUERY) == BOOK_FEWSHOT_PROMPT


def test_mc_block_letters_the_choices():
    assert ch16.mc_block("Q?", ["x", "y"]) == "Q: Q?\nChoices:\n(A) x\n(B) y"
    assert ch16.mc_block("Q?", [str(i) for i in range(10)]).endswith("(J) 9")


# Tulu 3's MMLU chain-of-thought prompt (book §16.1; Lambert et al. 2024), sentence by sentence.
TULU3_SENTENCES = (
    "Answer the following multiple-choice question by giving the correct answer letter in "
    "parentheses.",
    'Provide CONCISE reasoning for the answer, and make sure to finish the response with '
    '"Therefore, the answer is (ANSWER_LETTER)" where (ANSWER_LETTER) is one of (A), (B), (C), '
    '(D), (E), etc.',
    'Answer the above question and REMEMBER to finish your response with the exact phrase '
    '"Therefore, the answer is (ANSWER_LETTER)" where (ANSWER_LETTER) is one of (A), (B), (C), '
    '(D), (E), etc.',
)


def test_tulu3_mmlu_cot_prompt_holds_the_books_instruction_verbatim():
    prompt = ch16.tulu3_mmlu_cot_prompt(BOOK_QUERY["question"], BOOK_QUERY["choices"])
    for sentence in TULU3_SENTENCES:
        assert sentence in prompt
    lines = prompt.splitlines()
    assert lines[0].startswith(TULU3_SENTENCES[0]) and lines[-1] == TULU3_SENTENCES[2]
    assert f"Question: {BOOK_QUERY['question']}" in lines
    assert [line for line in lines if line[:1] == "("] == [
        "(A) The Mean Value Theorem", "(B) The Intermediate Value Theorem",
        "(C) The Extreme Value Theorem", "(D) Rolle's Theorem"]
    # the suffix the prompt asks for is the one the "tulu" style reads
    assert ch16.extract_strict_answer("f is continuous on [a,b]. Therefore, the answer is (C)") == "C"


# ----------------------------------------------------------------------------------------------
# Variance: the winner's curse, power, Table 7's statistic, avg@k and maj@k (Appendix C.2, C.3)


def test_expected_max_normal_gives_the_tabulated_values_and_the_closed_forms():
    assert [round(ch16.expected_max_normal(n), 3) for n in (2, 3, 5, 10)] == [
        0.564, 0.846, 1.163, 1.539]
    assert ch16.expected_max_normal(1) == pytest.approx(0.0, abs=1e-9)
    # closed forms for n = 2..5 (order statistics of the normal)
    sqrt_pi = math.sqrt(math.pi)
    closed = {2: 1 / sqrt_pi, 3: 3 / (2 * sqrt_pi),
              4: 6 / math.pi ** 1.5 * math.atan(math.sqrt(2)),
              5: 5 / (4 * sqrt_pi) * (1 + 6 / math.pi * math.asin(1 / 3))}
    for n, value in closed.items():
        assert ch16.expected_max_normal(n) == pytest.approx(value, abs=1e-6), n
    # the best of 10 equally good training runs looks 2.28 points better on GPQA (sigma = 1.48)
    assert 1.48 * ch16.expected_max_normal(10) == pytest.approx(2.28, abs=0.005)


def test_expected_max_normal_agrees_with_monte_carlo():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((200_000, 10))
    for n in (2, 3, 5, 10):
        maxima = z[:, :n].max(axis=1)
        se = maxima.std() / math.sqrt(len(maxima))
        assert abs(ch16.expected_max_normal(n) - maxima.mean()) < 4 * se, n


Z_975, Z_80 = 1.959964, 0.841621  # the standard normal's 97.5% and 80% quantiles


@pytest.mark.parametrize("sigma, delta", [(1.48, 1.0), (1.48, 4.1), (0.22, 0.5), (1.24, 0.5),
                                          (0.88, 0.3), (0.5, 2.0)])
def test_runs_needed_matches_the_two_sample_formula(sigma, delta):
    value = (Z_975 + Z_80) ** 2 * 2 * sigma ** 2 / delta ** 2
    assert abs(value - round(value)) > 1e-3  # not at a boundary the quantiles' rounding could move
    assert ch16.runs_needed(sigma, delta) == max(1, math.ceil(value))


def test_runs_needed_reaches_the_power_it_is_asked_for():
    normal = statistics.NormalDist()
    for sigma, delta, alpha, power in ((1.48, 1.0, 0.05, 0.8), (0.29, 0.2, 0.01, 0.9),
                                       (1.24, 1.5, 0.1, 0.95)):
        z = normal.inv_cdf(1 - alpha / 2)

        def reached(n):  # two-sided test of a true gain delta with n runs per model
            shift = delta / math.sqrt(2 * sigma ** 2 / n)
            return normal.cdf(shift - z) + normal.cdf(-shift - z)

        n = ch16.runs_needed(sigma, delta, alpha, power)
        assert reached(n) >= power and (n == 1 or reached(n - 1) < power), (sigma, delta, n)


def test_table7_std_averages_each_models_std_over_its_runs():
    scores = [[1.0, 2.0, 3.0], [2.0, 2.0, 2.0], [0.0, 4.0, 8.0]]  # stds 1, 0, 4 (Bessel)
    assert ch16.table7_std(scores) == pytest.approx(5 / 3)
    assert ch16.table7_std([[60.0, 62.0]]) == pytest.approx(math.sqrt(2))


def test_table7_runs_from_high_variance_to_very_stable_and_gives_gpqas_interval():
    values = list(ch16.TABLE7.values())
    assert values == sorted(values, reverse=True) and len(values) == 14
    assert float(ch16.diff_ci(ch16.TABLE7["GPQA"])) == pytest.approx(4.10, abs=0.005)


def test_avg_at_k_on_a_hand_array():
    correct = [[1, 0, 1, 1, 1], [0, 0, 1, 0, 0]]
    np.testing.assert_allclose(ch16.avg_at_k(correct, 1), [0.5, 0.0, 1.0, 0.5, 0.5])
    np.testing.assert_allclose(ch16.avg_at_k(correct, 2), [0.25, 0.75])  # the 5th is left over
    np.testing.assert_allclose(ch16.avg_at_k(correct, 5), [0.5])


def test_avg_at_k_spread_shrinks_like_one_over_sqrt_k():
    rng = np.random.default_rng(1)
    N, n = 50, 16_000
    p = rng.uniform(0.1, 0.9, N)
    correct = (rng.random((N, n)) < p[:, None]).astype(np.int8)
    q = p * (1 - p)
    sigma_1 = math.sqrt(q.sum()) / N  # one run's std (book Appendix C.2)
    excess_1 = float(np.sum(q * (1 - 6 * q)) / q.sum() ** 2)  # excess kurtosis of one run
    for k in (1, 4, 16):
        blocks = ch16.avg_at_k(correct, k)
        assert blocks.shape == (n // k,)
        sigma_k = sigma_1 / math.sqrt(k)
        # the standard error of a sample std over B blocks, from the kurtosis of avg@k
        se = sigma_k * math.sqrt((2 + excess_1 / k) / (4 * len(blocks)))
        assert abs(blocks.std(ddof=1) - sigma_k) < 4 * se, k
        assert abs(blocks.mean() - p.mean()) < 4 * sigma_k / math.sqrt(len(blocks)), k


def test_maj_at_k_counts_a_question_when_the_vote_is_gold():
    np.testing.assert_array_equal(ch16.maj_at_k([[9, 9, 8]], [9], 3), [1.0])
    np.testing.assert_array_equal(ch16.maj_at_k([[8, 9, 9, 8, 8, 8]], [9], 3), [1.0, 0.0])
    np.testing.assert_array_equal(ch16.maj_at_k([[9, 8, 9]], [9], 1), [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(ch16.maj_at_k([[9, 9, 8], [None, None, 7]], [9, 7], 3), [1.0])
    np.testing.assert_array_equal(ch16.maj_at_k([[9, 9, 8, 8]], [8], 3), [0.0])  # one block


# ----------------------------------------------------------------------------------------------
# Contamination (book §16.4)

# fifty characters, no trailing space, found once
PHRASE = "the extreme value theorem says f attains a maximum"


def test_words_and_word_ngrams():
    assert ch16.words("Hello, World! x2-y") == ["hello", "world", "x2", "y"]
    assert ch16.word_ngrams("a b c a b", 2) == {("a", "b"), ("b", "c"), ("c", "a")}
    assert ch16.word_ngrams("a b", 3) == set()


def test_substring_contamination_finds_a_50_character_window_and_no_less():
    assert len(PHRASE) == 50
    train = ["####" + PHRASE + "####", "an unrelated text about cooking pasta"]
    items = ["@@@@" + PHRASE + "@@@@",                            # exactly 50 shared
             "@@@@" + PHRASE[:49] + "@@@@",                       # 49 shared
             "@@@@" + PHRASE.upper().replace(" ", "  \n ") + "@@@@",  # case, whitespace
             "Extreme Value",                                    # short, inside the corpus
             "value extreme",                                    # short, not
             "cooking pasta"]
    out = ch16.substring_contamination(train, items)
    assert out.dtype == bool and out.tolist() == [True, False, True, True, False, True]
    assert ch16.substring_contamination(train, items[1:2], length=49).tolist() == [True]
    # a window never runs from one training text into the next
    split = ["####" + PHRASE[:25], PHRASE[25:] + "####"]
    assert ch16.substring_contamination(split, items[:1]).tolist() == [False]


# ----------------------------------------------------------------------------------------------
# Leaderboards: Bradley-Terry and the Elo scale (book §16.3; book eq. 13)


def _battles(n_players=5, n_battles=600):
    return checks.random_battles(np.random.default_rng(2), n_players, n_battles)


def _choix_data(pairs, outcomes):
    """Each decisive battle twice, a tie once each way: twice the Bradley-Terry likelihood with
    ties counted half to each side, in choix's (winner, loser) lists."""
    data = []
    for (a, b), s in zip(pairs.tolist(), outcomes.tolist()):
        data += [(a, b)] * 2 if s == 1 else [(b, a)] * 2 if s == 0 else [(a, b), (b, a)]
    return data


def _bt_newton_float64(pairs, outcomes, n_players, l2):
    """Maximise sum s log sigma(r_a - r_b) + (1 - s) log sigma(r_b - r_a) - l2 / 2 |r|^2 by
    Newton's method in float64 NumPy."""
    x = np.zeros((len(pairs), n_players))
    x[np.arange(len(pairs)), pairs[:, 0]] += 1
    x[np.arange(len(pairs)), pairs[:, 1]] -= 1
    s = np.asarray(outcomes, np.float64)
    r = np.zeros(n_players)
    for _ in range(100):
        p = 1 / (1 + np.exp(-x @ r))
        grad = x.T @ (s - p) - l2 * r
        hess = (x.T * (p * (1 - p))) @ x + l2 * np.eye(n_players)
        r = r + np.linalg.solve(hess, grad)
    return r


def test_bt_ratings_agree_with_choix_and_a_float64_newton_fit():
    choix = pytest.importorskip("choix")
    pairs, outcomes = _battles()
    got = np.asarray(ch16.bt_ratings(pairs, outcomes, 5), np.float64)
    strengths = choix.opt_pairwise(5, _choix_data(pairs, outcomes), alpha=1e-3)
    np.testing.assert_allclose(got, 1000 + ch16.ELO_SCALE * (strengths - strengths.mean()),
                               atol=0.05)
    r = _bt_newton_float64(pairs, outcomes, 5, 1e-3)
    np.testing.assert_allclose(got, 1000 + 400 / math.log(10) * (r - r.mean()), atol=0.05)
    assert got.mean() == pytest.approx(1000.0, abs=1e-3)


def test_bt_ratings_are_order_free_and_elo_ratings_are_not():
    pairs, outcomes = _battles()
    order = np.random.default_rng(3).permutation(len(pairs))
    bt = np.asarray(ch16.bt_ratings(pairs, outcomes, 5))
    np.testing.assert_allclose(ch16.bt_ratings(pairs[order], outcomes[order], 5), bt, atol=1e-2)
    elo = np.asarray(ch16.elo_ratings(pairs, outcomes, 5))
    assert np.abs(np.asarray(ch16.elo_ratings(pairs[order], outcomes[order], 5)) - elo).max() > 1


def test_the_elo_scale_puts_ten_to_one_odds_at_400_points():
    assert ch16.ELO_SCALE == pytest.approx(400 / math.log(10))
    assert float(ch16.elo_expected(1400.0, 1000.0)) == pytest.approx(10 / 11, abs=1e-6)
    assert float(ch16.elo_expected(1200.0, 1000.0)) == pytest.approx(0.7597, abs=5e-5)
    # a record of 100 wins to 10 losses: Bradley-Terry's odds 10:1, a gap of 400 Elo points
    pairs = np.array([[0, 1]] * 110, np.int32)
    outcomes = np.array([1.0] * 100 + [0.0] * 10, np.float32)
    ratings = np.asarray(ch16.bt_ratings(pairs, outcomes, 2, l2=1e-6), np.float64)
    assert ratings[0] - ratings[1] == pytest.approx(400.0, abs=0.05)
    assert ratings.mean() == pytest.approx(1000.0, abs=1e-3)


def test_bootstrap_ratings_shape_and_mean():
    pairs, outcomes = _battles()
    full = np.asarray(ch16.bt_ratings(pairs, outcomes, 5), np.float64)
    boot = ch16.bootstrap_ratings(jax.random.PRNGKey(0), pairs, outcomes, 5, n_boot=200)
    assert isinstance(boot, np.ndarray) and boot.shape == (200, 5)
    # the resampled fits centre on the full fit: within 5 Monte Carlo standard errors (the
    # bootstrap's own bias, O(1 / M) for M = 600 battles, is far smaller than that)
    se = boot.std(axis=0, ddof=1) / math.sqrt(len(boot))
    assert np.all(np.abs(boot.mean(axis=0) - full) < 5 * se), (boot.mean(axis=0) - full, se)
    assert np.all(boot.std(axis=0) > 1)  # resamples differ
    elo = ch16.bootstrap_ratings(jax.random.PRNGKey(1), pairs, outcomes, 5, rate=ch16.elo_ratings,
                                 n_boot=50)
    assert elo.shape == (50, 5)
    np.testing.assert_allclose(elo.sum(axis=1), 5 * 1000.0, atol=0.1)  # Elo is zero-sum


# ----------------------------------------------------------------------------------------------
# Bad inputs raise ValueError naming the argument

_LOGP = np.zeros((2, 3), np.float32)
_MASK = np.ones((2, 3), np.float32)
_PAIRS = np.array([[0, 1], [1, 2]], np.int32)
_OUTCOMES = np.array([1.0, 0.0], np.float32)

BAD_INPUTS = [
    ("extract_strict_answer", lambda: ch16.extract_strict_answer("x", style="latex"), "style"),
    ("extract_strict_answer", lambda: ch16.extract_strict_answer(3), "text"),
    ("choice_log_likelihood", lambda: ch16.choice_log_likelihood(_LOGP, _MASK, norm="char"),
     "chars"),
    ("choice_log_likelihood", lambda: ch16.choice_log_likelihood(_LOGP, _MASK, norm="mean"),
     "norm"),
    ("choice_log_likelihood", lambda: ch16.choice_log_likelihood(_LOGP, _MASK[:, :2]), "mask"),
    ("rerun_std", lambda: ch16.rerun_std(0.5), "p"),
    ("diff_ci", lambda: ch16.diff_ci(1.0, n_a=0), "n_a"),
    ("diff_ci", lambda: ch16.diff_ci(1.0, n_b=0), "n_b"),
    ("diff_ci", lambda: ch16.diff_ci(1.0, z=0.0), "z"),
    ("runs_needed", lambda: ch16.runs_needed(0.0, 1.0), "sigma"),
    ("runs_needed", lambda: ch16.runs_needed(1.0, 0.0), "delta"),
    ("runs_needed", lambda: ch16.runs_needed(1.0, 1.0, alpha=0.0), "alpha"),
    ("runs_needed", lambda: ch16.runs_needed(1.0, 1.0, power=0.0), "power"),
    ("expected_max_normal", lambda: ch16.expected_max_normal(0), "n"),
    ("expected_max_normal", lambda: ch16.expected_max_normal(2.0), "n"),
    ("table7_std", lambda: ch16.table7_std([[1.0], [2.0]]), "scores"),
    ("avg_at_k", lambda: ch16.avg_at_k([[1, 0, 1]], 0), "k"),
    ("avg_at_k", lambda: ch16.avg_at_k([[1, 0, 1]], 4), "k"),
    ("avg_at_k", lambda: ch16.avg_at_k([1, 0, 1], 1), "correct"),
    ("maj_at_k", lambda: ch16.maj_at_k([[1, 1]], [1], 0), "k"),
    ("maj_at_k", lambda: ch16.maj_at_k([[1, 1]], [1, 2], 1), "answers"),
    ("ngram_contamination", lambda: ch16.ngram_contamination(["a b"], ["a"], 0), "n"),
    ("ngram_contamination", lambda: ch16.ngram_contamination("a b", ["a"]), "train_texts"),
    ("ngram_contamination", lambda: ch16.ngram_contamination(["a b"], "a"), "eval_texts"),
    ("substring_contamination", lambda: ch16.substring_contamination(["a"], ["a"], 0), "length"),
    ("elo_update", lambda: ch16.elo_update(1000.0, 1000.0, 1.0, k=0.0), "k"),
    ("elo_ratings", lambda: ch16.elo_ratings(_PAIRS, _OUTCOMES, 2), "pairs"),
    ("elo_ratings", lambda: ch16.elo_ratings(_PAIRS.astype(np.float32), _OUTCOMES, 3), "pairs"),
    ("elo_ratings", lambda: ch16.elo_ratings(_PAIRS, np.array([1.5, 0.0]), 3), "outcomes"),
    ("elo_ratings", lambda: ch16.elo_ratings(_PAIRS, np.array([-0.5, 0.0]), 3), "outcomes"),
    ("elo_ratings", lambda: ch16.elo_ratings(_PAIRS, _OUTCOMES[:1], 3), "outcomes"),
    ("elo_ratings", lambda: ch16.elo_ratings(_PAIRS, _OUTCOMES, 1), "n_players"),
    ("elo_ratings", lambda: ch16.elo_ratings(_PAIRS, _OUTCOMES, 3, k=-1.0), "k"),
    ("bt_ratings", lambda: ch16.bt_ratings(_PAIRS + 5, _OUTCOMES, 3), "pairs"),
    ("bootstrap_ratings",
     lambda: ch16.bootstrap_ratings(jax.random.PRNGKey(0), _PAIRS, _OUTCOMES, 3, n_boot=0),
     "n_boot"),
    ("fewshot_mc_prompt",
     lambda: ch16.fewshot_mc_prompt([{**BOOK_EXAMPLES[0], "answer": "E"}], BOOK_QUERY),
     "examples[0]['answer']"),
    ("mc_block", lambda: ch16.mc_block("Q?", ["only one"]), "choices"),
    ("words", lambda: ch16.words(None), "text"),
]


@pytest.mark.parametrize("function, call, name", BAD_INPUTS,
                         ids=[f"{f}-{n}-{i}" for i, (f, _, n) in enumerate(BAD_INPUTS)])
def test_bad_inputs_raise_value_error_naming_the_argument(function, call, name):
    with pytest.raises(ValueError, match="^" + re.escape(name) + r"(?!\w)"):
        call()


def test_runs_needed_rejects_a_power_or_level_of_one_naming_it():
    with pytest.raises(ValueError, match="^power(?!\\w)"):
        ch16.runs_needed(1.0, 1.0, power=1.0)
    with pytest.raises(ValueError, match="^alpha(?!\\w)"):
        ch16.runs_needed(1.0, 1.0, alpha=1.0)


# ----------------------------------------------------------------------------------------------
# The contamination experiment's data: what is planted is found, what is clean is not


def test_detection_finds_the_planted_contamination_and_nothing_clean():
    split = experiments.leak_split()
    conversations = (data.sft_demonstrations(seed=0, n=experiments.LEAK_CONFIG.n_demonstrations)
                     + experiments.leaked_conversations(split.leaked))
    flags = experiments.detection(conversations, split)
    assert len(split.leaked) == experiments.LEAK_FACTS * experiments.LEAK_TEMPLATES
    assert flags["leaked"].all()
    assert not flags["clean"].any()
    # the leaked facts' other phrasings are mostly not copies of a leaked text
    assert flags["paraphrased"].mean() < 0.25
    # without the leak, nothing held out is flagged: the world's held-out questions are clean
    clean_run = experiments.detection(conversations[:experiments.LEAK_CONFIG.n_demonstrations],
                                      split)
    assert not any(v.any() for v in clean_run.values())
    # the same answer under the char rule: every leaked item occurs whole in the corpus
    texts = experiments.sft_texts(conversations)
    assert ch16.substring_contamination(texts, [q.prompt for q in split.leaked]).all()


# ----------------------------------------------------------------------------------------------
# The evaluation harness and `rlhf-book eval`


def test_harness_summarise_matches_a_plain_numpy_computation():
    rng = np.random.default_rng(0)
    q, n = 7, 5
    answers = {"gold": rng.normal(size=(q, n)), "right": (rng.random((q, n)) < 0.4) * 1.0,
               "bytes": rng.integers(5, 40, size=(q, n)) * 1.0}
    reference = {"gold": rng.normal(size=(q, n))}
    out = harness.summarise(answers, reference, ks=(1, 3))
    per_q = answers["gold"].mean(1)
    assert out["gold"] == pytest.approx(per_q.mean())
    assert out["gold_se"] == pytest.approx(per_q.std(ddof=1) / np.sqrt(q))
    diff = per_q - reference["gold"].mean(1)
    assert out["gain"] == pytest.approx(diff.mean())
    assert out["gain_se"] == pytest.approx(diff.std(ddof=1) / np.sqrt(q))
    for k in (1, 3):
        c = answers["right"].sum(1).astype(int)
        exact = np.asarray([1 - comb(n - ci, k) / comb(n, k) for ci in c])
        assert out[f"pass@{k}"] == pytest.approx(exact.mean(), abs=1e-6)
        assert out[f"pass@{k}_se"] == pytest.approx(exact.std(ddof=1) / np.sqrt(q), abs=1e-6)
    # pass@1 is the accuracy
    assert out["pass@1"] == pytest.approx(out["right"], abs=1e-6)


def test_harness_infers_each_model_size_and_refuses_other_trees():
    for config in gpt.CONFIGS.values():
        assert harness.infer_config(gpt.init_params(jax.random.PRNGKey(0), config)) == config
    with pytest.raises(ValueError, match="^params"):
        harness.infer_config({"w": np.zeros((3, 3))})


def test_harness_suites_are_the_worlds_held_out_questions():
    splits = data.question_splits()
    trained = {(q.topic, q.subject, q.prompt) for q in splits.train}
    for suite in harness.SUITES:
        qs = harness.suite_questions(suite)
        assert qs and not any((q.topic, q.subject, q.prompt) in trained for q in qs)
    assert all(q.rephrased for q in harness.suite_questions("rephrased"))
    assert {q.topic for q in harness.suite_questions("arithmetic")} == {"arithmetic"}
    assert len(harness.suite_questions("unseen", 5, seed=1)) == 5
    with pytest.raises(ValueError, match="^suite"):
        harness.suite_questions("mmlu")


def test_eval_command_prints_one_row_per_model_and_suite(tmp_path, capsys):
    config = gpt.get_config("tiny")
    for name, seed in (("a", 0), ("b", 1)):
        train.save_checkpoint(tmp_path / f"{name}-tiny.msgpack",
                              gpt.init_params(jax.random.PRNGKey(seed), config))
    code = cli.main(["eval", str(tmp_path / "a-tiny.msgpack"), str(tmp_path / "b-tiny.msgpack"),
                     "--reference", str(tmp_path / "a-tiny.msgpack"), "--suites", "rephrased",
                     "arithmetic", "--questions", "3", "--samples", "2",
                     "--json", str(tmp_path / "rows.json")])
    out = capsys.readouterr().out
    assert code == 0
    rows = [line.split()[:2] for line in out.splitlines()[2:] if line.startswith(("a ", "b "))]
    assert rows == [["a", "rephrased"], ["b", "rephrased"], ["a", "arithmetic"],
                    ["b", "arithmetic"]]
    saved = json.loads((tmp_path / "rows.json").read_text())
    assert len(saved) == 4
    # "a" is the reference, named again: the same model, so its KL is exactly 0 and its row
    # has no gain over itself
    assert saved[0]["metrics"]["kl"] == 0.0 and "gain" not in saved[0]["metrics"]
    assert "gain" in saved[1]["metrics"]
    assert saved[1]["metrics"]["kl"] > 0.01
    # bad input: one line naming the problem, exit code 2
    assert cli.main(["eval", str(tmp_path / "missing.msgpack")]) == 2
    assert "checkpoint must be" in capsys.readouterr().err


def test_harness_samples_every_model_with_the_same_keys():
    config = gpt.get_config("tiny")
    params = gpt.init_params(jax.random.PRNGKey(0), config)
    copy = jax.tree.map(lambda x: x + 0, params)          # equal values, another object
    other = gpt.init_params(jax.random.PRNGKey(1), config)
    rows = harness.evaluate({"ref": params, "copy": copy, "other": other}, config,
                            reference=params, suites=("rephrased",), questions=3, samples=2)
    by = {r.model: r.metrics for r in rows}
    assert "gain" not in by["ref"] and by["ref"]["kl"] == 0.0
    # common random numbers: an identical model gives identical answers, a paired gain of 0
    assert by["copy"]["gain"] == 0.0 and by["copy"]["gain_se"] == 0.0
    assert abs(by["copy"]["kl"]) < 1e-4 and by["other"]["kl"] > 0.01
