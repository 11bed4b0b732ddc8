"""Grading checks for chapter 7 (reasoning: RL with verifiable rewards, inference-time scaling).

Oracles: the book's worked examples (the chapter's introduction: the primes below 20 sum to 77,
its response ending "The answer is $\\boxed{77}$."; the ``fib`` unit tests, all-pass gating
against partial credit; §7.2.3's 20-80% filter at N = 16), hand-written expected answers for
every answer format, and plain Python computed here: pass@k from ``math.comb`` in exact
rationals and by enumerating every ``k``-subset of the samples, its Binomial average ``1 - (1 -
p)^k`` (Chen et al. 2021: the estimator is unbiased); the share of flat groups ``p^G + (1 -
p)^G`` against its values and a Monte Carlo simulation (4 standard errors); the filter from
exact fractions; the majority vote by an independent counting loop (:func:`majority_vote_oracle`);
MaxRL's advantage by a float64 loop (:func:`maxrl_loop`) and its invariants (a group sums to 0;
a right completion among ``c`` of ``G`` gets ``(G - c) / c``, a wrong one -1). The oracle helpers
are public so that the chapter's tests use the same ones; none of them takes the graded
function.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_book.lm import gpt
from rlhf_book.textbook.checks import (as_array, expect, expect_close, expect_dtype,
                                       expect_finite, expect_shape, jit, require)
from rlhf_book.textbook.checks import ch06_policy_gradients as ch06


def _f32(x) -> np.ndarray:
    return np.asarray(x, np.float32)


def _short(text: str, limit: int = 60) -> str:
    """``repr(text)``, its middle cut when it is long (one line: newlines stay escaped)."""
    r = repr(text)
    return r if len(r) <= limit else r[:limit // 2 - 2] + " ... " + r[-(limit // 2 - 2):]


# ----------------------------------------------------------------------------------------------
# 7.1 Reading the final answer (book ch. 7 introduction)

# The book's math example in our words: the primes below 20, added one at a time, then the boxed
# answer. Its reasoning holds many other integers; only the marked 77 is the answer.
BOOK_PRIMES_RESPONSE = (
    "The prime numbers less than 20 are 2, 3, 5, 7, 11, 13, 17, 19. Adding them one at a time: "
    "2 + 3 = 5, 5 + 5 = 10, 10 + 7 = 17, 17 + 11 = 28, 28 + 13 = 41, 41 + 17 = 58, 58 + 19 = 77."
    " The answer is $\\boxed{77}$.")

# (text, style, expected, why): the expected answers are written by hand from the contract.
EXTRACTION_CASES = (
    (BOOK_PRIMES_RESPONSE, "boxed", "77", "the book's primes example: the boxed 77"),
    (BOOK_PRIMES_RESPONSE, "the_answer_is", "77",
     "the book's primes example: 'The answer is' followed by a box reads the box"),
    (BOOK_PRIMES_RESPONSE, "any", "77", "the book's primes example"),
    (BOOK_PRIMES_RESPONSE, "last_integer", "77", "the lax rule: the last integer, as a str"),
    (BOOK_PRIMES_RESPONSE, "answer_tag", None, "no <answer> tag in the text: None"),
    (BOOK_PRIMES_RESPONSE, "hashes", None, "no #### in the text: None"),
    ("48 / 2 = 24 clips in May.\n48 + 24 = 72\n#### 72", "hashes", "72",
     "GSM8K's format: what follows #### on its line"),
    ("So in all:\n#### 77", "any", "77", "#### 77"),
    ("#### 1,000", "hashes", "1000", "normalize_answer drops the thousands comma"),
    ("Reasoning first.\n<answer>\n42\n</answer>", "answer_tag", "42",
     "an <answer> tag may span lines"),
    ("so x = \\boxed{\\frac{1}{2}}.", "boxed", "\\frac{1}{2}",
     "nested braces balanced: a regex like \\boxed{(.*?)} stops at the first }; scan with a "
     "depth counter"),
    ("\\boxed{\\sqrt{\\frac{a}{b}}} is the length", "boxed", "\\sqrt{\\frac{a}{b}}",
     "nested braces balanced, two levels deep: a greedy or lazy regex cuts it wrong"),
    ("First \\boxed{3}, then, correcting the carry: \\boxed{5}.", "boxed", "5",
     "the LAST box, not the first: a response may box an intermediate result first"),
    ("<answer>3</answer> no, recount: <answer>5</answer>", "answer_tag", "5",
     "the LAST <answer> tag, not the first"),
    ("#### 3\nWait, that is wrong.\n#### 5", "hashes", "5", "the LAST ####, not the first"),
    ("The answer is 3. Hmm, the carry was lost; the answer is 5.", "the_answer_is", "5",
     "the LAST 'answer is', not the first"),
    ("The final answer is: 3.5", "the_answer_is", "3.5",
     "an optional colon; a decimal point is not a full stop that ends a sentence"),
    ("THE ANSWER IS 12. Done.", "the_answer_is", "12",
     "'answer is' in any case; the line up to the full stop that ends the sentence"),
    ("The answer is $\\boxed{\\frac{1}{2}}$ because the halves match.", "the_answer_is",
     "\\frac{1}{2}", "a box right after 'answer is' is the answer, its contents only"),
    ("\\boxed{77", "boxed", None, "a \\boxed{ whose brace never closes is no box: None"),
    ("<answer>4</answer> and also \\boxed{5}", "any", "5",
     "'any' tries boxed first, then answer_tag, hashes, the_answer_is"),
    ("#### 7\n<answer>8</answer>", "any", "8",
     "'any' tries answer_tag before hashes"),
    ("We computed 42 in total.", "any", None,
     "'any' never falls back to last_integer: a response with no marked answer has none"),
    ("We computed 42 in total.", "last_integer", "42", "the lax rule: the last integer"),
    ("I am not sure.", "boxed", None, "no answer: None"),
    ("I am not sure.", "answer_tag", None, "no answer: None"),
    ("I am not sure.", "hashes", None, "no answer: None"),
    ("I am not sure.", "the_answer_is", None, "no answer: None"),
    ("I am not sure.", "last_integer", None, "no integer: None"),
    ("I am not sure.", "any", None, "no answer: None"),
)


def extract_final_answer(fn):
    for text, style, expected, why in EXTRACTION_CASES:
        got = fn(text, style)
        ok = (got is None) if expected is None else (isinstance(got, str) and got == expected)
        expect(ok, f"extract_final_answer({_short(text)}, {style!r}) returned {got!r}, expected "
                   f"{expected!r} ({why})")
    got = fn(BOOK_PRIMES_RESPONSE)
    expect(got == "77", f"extract_final_answer(the book's primes example) with the default "
                        f"style returned {got!r}, expected '77' (the default style is 'any')")


# ----------------------------------------------------------------------------------------------
# 7.2 Unit-test rewards (book ch. 7 introduction, the fib example)


def _fib(n: int) -> int:
    return n if n < 2 else _fib(n - 1) + _fib(n - 2)


def _fib_identity(n: int) -> int:  # a wrong program: passes fib(0) == 0 and fib(1) == 1 only
    return n


def _book_fib_tests(program) -> list[bool]:
    """The book's three assertions, each recorded instead of raised."""
    return [program(0) == 0, program(1) == 1, program(10) == 55]


def unit_test_reward(fn):
    passed = _book_fib_tests(_fib_identity)  # [True, True, False]
    for mode, expected, why in (
            ("all", 0.0, "gating: one failed test gives 0, the book's 'all pass -> reward = 1'"),
            ("fraction", 2 / 3, "partial credit: 2 of the 3 tests pass")):
        what = f"unit_test_reward({passed}, {mode!r}) (the book's fib tests on a wrong fib)"
        out = expect_shape(fn(passed, mode), (), what)
        expect_dtype(out, "f", what + " (a float reward)")
        expect_close(out, expected, what + f" ({why})", atol=1e-6)
    good = _book_fib_tests(_fib)
    for mode in ("all", "fraction"):
        expect_close(fn(good, mode), 1.0, f"unit_test_reward({good}, {mode!r}) (the book's fib "
                     "passes all three tests: reward 1)", atol=1e-6)
    expect_close(fn(passed), 0.0, f"unit_test_reward({passed}) (the default mode is 'all', "
                 "gating)", atol=1e-6)

    rng = np.random.default_rng(1)
    batch = rng.random((2, 3, 4)) < 0.7
    batch[0, 0] = True  # one program passes everything
    for mode in ("all", "fraction"):
        expected = np.all(batch, axis=-1) if mode == "all" else np.mean(batch, axis=-1)
        what = f"unit_test_reward(passed [2, 3, 4] bools, {mode!r})"
        out = expect_shape(fn(batch, mode), (2, 3), what + " (one reward per program: reduce "
                           "over the last axis, the tests, only)")
        expect_close(out, expected.astype(np.float64), what + (
            " (gating: 1.0 only where every test of the program passes)" if mode == "all" else
            " (partial credit: the fraction of the K tests passed, not their count)"), atol=1e-6)
    as_ints = batch.astype(np.int32)
    expect_close(fn(as_ints, "fraction"), np.mean(batch, axis=-1),
                 "unit_test_reward(passed as 0/1 ints [2, 3, 4], 'fraction')", atol=1e-6)
    one = np.array([[True], [False]])
    for mode in ("all", "fraction"):
        expect_close(fn(one, mode), [1.0, 0.0], f"unit_test_reward([[True], [False]], {mode!r}) "
                     "(one test per program: the reward is its outcome)", atol=1e-6)
    expect_close(jit(fn, static_argnums=1)(batch, "all"), np.all(batch, axis=-1),
                 "jax.jit(unit_test_reward, static_argnums=1)(passed, 'all')", atol=1e-6)


# ----------------------------------------------------------------------------------------------
# 7.3 The unbiased pass@k (Chen et al. 2021)


def pass_at_k_oracle(n: int, c: int, k: int) -> float:
    """``1 - C(n - c, k) / C(n, k)`` from ``math.comb`` in exact rationals (``math.comb`` is 0
    when ``k > n - c``)."""
    return float(1 - Fraction(math.comb(n - c, k), math.comb(n, k)))


def pass_at_k_enumeration(n: int, c: int, k: int) -> float:
    """The share of the ``k``-subsets of ``n`` samples (the first ``c`` correct) holding a
    correct sample, by listing every subset."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def _pass_curve(fn, n, cs, k, what, dtype=np.int32) -> np.ndarray:
    out = expect_shape(fn(n, np.asarray(cs, dtype), k), (len(cs),), what)
    return out.astype(np.float64)


SUBSETS = ("1 - C(n - c, k) / C(n, k): the share of the k-subsets of the n samples, drawn "
           "WITHOUT replacement, that hold a correct one")
PLUG_IN = ("the plug-in 1 - (1 - c/n)^k draws with replacement and is biased low; the unbiased "
           + SUBSETS)


def pass_at_k(fn):
    n = 10
    cs = np.arange(n + 1)
    for k in (1, 2, 5, 8):
        what = f"pass_at_k({n}, c = 0..{n}, {k})"
        expected = [pass_at_k_oracle(n, int(c), k) for c in cs]
        out = _pass_curve(fn, n, cs, k, what)
        plug_in = np.allclose(out, 1 - (1 - cs / n) ** k, atol=1e-5)
        expect_close(out, expected, what + f" vs math.comb: {PLUG_IN if plug_in else SUBSETS}",
                     atol=1e-5)

    for n in range(1, 7):  # every k-subset of every small case
        for k in range(1, n + 1):
            what = f"pass_at_k({n}, c = 0..{n}, {k})"
            expected = [pass_at_k_enumeration(n, c, k) for c in range(n + 1)]
            expect_close(_pass_curve(fn, n, range(n + 1), k, what), expected,
                         what + " vs the share of all k-subsets that hold a correct sample",
                         atol=1e-5)

    what = "pass_at_k(10, c = [8, 9, 10, 3], 3)"
    expect_close(_pass_curve(fn, 10, [8, 9, 10, 3], 3, what)[:3], [1.0, 1.0, 1.0],
                 what + ": exactly 1 when n - c < k (every 3-subset of the 10 holds a correct "
                 "sample; C(n - c, k) = 0, and a log-gamma of a negative number is not)",
                 atol=1e-7)
    what = "pass_at_k(10, c = [0, 0], 4)"
    expect_close(_pass_curve(fn, 10, [0, 0], 4, what), [0.0, 0.0],
                 what + ": exactly 0 when nothing is correct", atol=1e-7)

    n = 200
    cs = [0, 1, 5, 50, 100, 150, 190, 199, 200]
    for k in (1, 10, 100, 150, 200):
        what = f"pass_at_k({n}, c = {cs}, {k})"
        out = _pass_curve(fn, n, cs, k, what)
        expect(bool(np.all(np.isfinite(out))),
               f"{what} = {np.round(out, 4).tolist()} is not finite: C(200, 100) is about 9e58 and "
               f"overflows float32 (largest 3.4e38); compute C(n - c, k) / C(n, k) without "
               f"factorials, e.g. as a product of factors (1 - k / i)")
        expect_close(out, [pass_at_k_oracle(n, c, k) for c in cs],
                     what + " vs math.comb in exact rationals (large n: no overflow, no loss of "
                     "precision)", atol=2e-4)

    n = 20
    cs = np.arange(n + 1)
    for p in (0.1, 0.35, 0.8):
        weights = np.array([math.comb(n, c) * p ** c * (1 - p) ** (n - c) for c in cs])
        for k in (1, 4, 10, 20):
            what = f"pass_at_k({n}, c, {k}) averaged over c ~ Binomial({n}, {p})"
            average = float(weights @ _pass_curve(fn, n, cs, k, f"pass_at_k({n}, c, {k})"))
            expect_close(average, 1 - (1 - p) ** k,
                         what + " (the estimator is unbiased: its average is the true pass@k "
                         f"1 - (1 - p)^k exactly; {SUBSETS})", atol=2e-5)

    what = "pass_at_k(10, 3, 2) (c a scalar)"
    expect_close(expect_shape(fn(10, 3, 2), (), what), pass_at_k_oracle(10, 3, 2), what,
                 atol=1e-5)
    what = "pass_at_k(10, c as floats [0., 3., 10.], 2)"
    expect_close(_pass_curve(fn, 10, [0, 3, 10], 2, what, np.float32),
                 [pass_at_k_oracle(10, c, 2) for c in (0, 3, 10)], what, atol=1e-5)
    cs = np.array([0, 2, 5, 9, 16], np.int32)
    expect_close(jit(fn, static_argnums=(0, 2))(16, cs, 4),
                 [pass_at_k_oracle(16, int(c), 4) for c in cs],
                 "jax.jit(pass_at_k, static_argnums=(0, 2))(16, c, 4)", atol=1e-5)


# ----------------------------------------------------------------------------------------------
# 7.4 The share of groups with no signal (book §7.2.3, online filtering)

FLAT = "all right (p^G) or all wrong ((1 - p)^G): the two add"


def zero_signal_probability(fn):
    what = "zero_signal_probability(0.2, 16)"
    out = expect_shape(fn(0.2, 16), (), what)
    expect_close(out, 0.2 ** 16 + 0.8 ** 16, what + " (about 0.02815: at the 20% end of the "
                 f"book's filter, 16 samples are all wrong 2.8% of the time; {FLAT})", atol=1e-4)
    what = "zero_signal_probability(0.5, 8)"
    expect_close(fn(0.5, 8), 0.0078125, what + f" (= 2 / 2^8 exactly; {FLAT})", atol=1e-8,
                 rtol=0)
    for p, G, expected, why in ((0.0, 8, 1.0, "never right: every group is all wrong"),
                                (1.0, 8, 1.0, "always right: every group is all right"),
                                (0.3, 1, 1.0, "one sample is always a flat group"),
                                (0.5, 2, 0.5, "two fair coins agree half the time")):
        expect_close(fn(p, G), expected, f"zero_signal_probability({p}, {G}) ({why})",
                     atol=1e-6)

    ps = np.array([[0.0, 0.1, 0.25], [0.5, 0.9, 1.0]])
    for G in (2, 5, 16):
        what = f"zero_signal_probability(p [2, 3], {G})"
        out = expect_shape(fn(_f32(ps), G), (2, 3), what + " (elementwise: the shape of p)")
        expect_close(out, ps ** G + (1 - ps) ** G, what + f" ({FLAT})", atol=1e-6)

    rng = np.random.default_rng(7)
    draws = 20_000
    for p, G in ((0.3, 4), (0.5, 3), (0.9, 8), (0.05, 16), (0.6, 2)):
        rewards = rng.random((draws, G)) < p
        flat = np.mean(np.all(rewards, axis=1) | ~np.any(rewards, axis=1))
        se = max(math.sqrt(flat * (1 - flat) / draws), 1 / draws)
        got = float(as_array(fn(p, G), f"zero_signal_probability({p}, {G})"))
        expect(abs(got - flat) <= 4 * se,
               f"zero_signal_probability({p}, {G}) = {got:.5f}, but in {draws} simulated groups "
               f"of {G} Bernoulli({p}) rewards {flat:.5f} were flat (all equal), standard error "
               f"{se:.5f}: more than 4 standard errors apart ({FLAT})")

    grid = _f32([0.1, 0.5, 0.8])
    expect_close(jit(fn, static_argnums=1)(grid, 6), grid.astype(np.float64) ** 6
                 + (1 - grid.astype(np.float64)) ** 6,
                 "jax.jit(zero_signal_probability, static_argnums=1)(p, 6)", atol=1e-6)


# ----------------------------------------------------------------------------------------------
# 7.5 The difficulty filter (book §7.2.3, offline difficulty filtering)


def difficulty_filter_oracle(successes, N: int, low=Fraction(1, 5), high=Fraction(4, 5)):
    """Which of the pass rates ``successes / N`` lie in ``[low, high]``, in exact fractions."""
    return np.array([low <= Fraction(int(s), N) <= high for s in successes])


def _kept(fn, rates, what, *args):
    out = expect_shape(fn(rates, *args), np.shape(rates), what + " (one bool per pass rate)")
    return expect_dtype(out, "b", what + " (a bool mask)")


def difficulty_filter(fn):
    N = 16  # the book's N
    successes = np.arange(N + 1)
    rates = _f32(successes / N)
    what = "difficulty_filter(pass rates 0/16 .. 16/16)"
    expect_close(_kept(fn, rates, what), difficulty_filter_oracle(successes, N),
                 what + " (the book's 20-80%: keep 0.2 <= rate <= 0.8, drop the prompts "
                 "always or never solved)")

    N = 20  # 4/20 and 16/20 are exactly the bounds, as a float32 mean computes them
    rewards = (np.arange(N)[None, :] < np.arange(N + 1)[:, None]).astype(np.float32)
    rates = rewards.mean(axis=1, dtype=np.float32)
    what = "difficulty_filter(pass rates 0/20 .. 20/20, as float32 means)"
    expect_close(_kept(fn, rates, what), difficulty_filter_oracle(range(N + 1), N),
                 what + " (both bounds inclusive: a pass rate of exactly 0.2 or 0.8 is kept)")

    rates = _f32([0.2 - 5e-7, 0.2 - 1e-5, 0.8 + 5e-7, 0.8 + 1e-5, 0.5])
    what = "difficulty_filter([0.2 - 5e-7, 0.2 - 1e-5, 0.8 + 5e-7, 0.8 + 1e-5, 0.5])"
    expect_close(_kept(fn, rates, what), [True, False, True, False, True],
                 what + " (the comparison allows 1e-6 of rounding at each bound, no more)")

    successes = np.arange(21)
    rates = _f32(successes / 20)
    for low, high in ((Fraction(1, 4), Fraction(3, 5)), (Fraction(1, 2), Fraction(1, 2)),
                      (Fraction(0), Fraction(1)), (Fraction(0), Fraction(1, 10))):
        what = f"difficulty_filter(pass rates 0/20 .. 20/20, low={float(low)}, high={float(high)})"
        expect_close(_kept(fn, rates, what, float(low), float(high)),
                     difficulty_filter_oracle(successes, 20, low, high),
                     what + " (use the low and high passed in, bounds included)")

    rng = np.random.default_rng(5)
    rates = rng.integers(0, 17, (2, 3, 4)) / 16
    what = "difficulty_filter(pass rates [2, 3, 4])"
    expect_close(_kept(fn, _f32(rates), what), (rates >= 0.2) & (rates <= 0.8),
                 what + " (elementwise: the mask has the shape of the pass rates)")
    expect_close(jit(fn)(_f32(rates)), (rates >= 0.2) & (rates <= 0.8),
                 "jax.jit(difficulty_filter)(pass rates [2, 3, 4])")


# ----------------------------------------------------------------------------------------------
# 7.6 Majority vote (book §7.2.3, parallel test-time compute; Wang et al. 2023)


def majority_vote_oracle(answers):
    """The vote counted another way: for each answer at its first occurrence, count its copies
    in the whole list; a later answer replaces the leader only with strictly more votes."""
    best, best_count = None, 0
    for i, answer in enumerate(answers):
        if answer is None or any(answers[j] == answer for j in range(i)):
            continue  # no vote, or counted at its first occurrence
        count = sum(1 for other in answers if other is not None and other == answer)
        if count > best_count:
            best, best_count = answer, count
    return best


VOTE_CASES = (
    ([9, 9, 8], 9, "the answer given most often"),
    ([42], 42, "one sample: its answer"),
    ([8, 9, 9, 8], 8, "a tie: the answer whose first occurrence comes first wins"),
    ([8, 9, 8, 9], 8, "a tie: the answer whose first occurrence comes first wins, not the "
                      "last one seen"),
    ([9, 8, 8, 9], 9, "a tie: the answer whose first occurrence comes first wins, not the "
                      "smallest"),
    ([9, 8, 8, 9, 7, 7], 9, "a three-way tie: the answer whose first occurrence comes first wins"),
    ([3, 5, 5, 3, 3], 3, "the most votes wins, wherever they are"),
    ([None, None, None, 5], 5, "None (no answer extracted) does not vote"),
    ([None, 7, None, 8, 8, None], 8, "None does not vote, however often it appears"),
    ([None, None], None, "nothing voted: None"),
    ([], None, "no samples: None"),
    (["77", None, "76", "76", "77", None, None], "77",
     "strings from extract_final_answer: a tie, the first-seen wins; None does not vote"),
    (("1000", "1000", "999"), "1000", "a tuple of answers"),
)


def _same_vote(got, expected) -> bool:
    return got is None if expected is None else (got is not None and got == expected)


def majority_vote(fn):
    for answers, expected, why in VOTE_CASES:
        got = fn(answers)
        expect(_same_vote(got, expected),
               f"majority_vote({answers!r}) returned {got!r}, expected {expected!r} ({why})")
    rng = np.random.default_rng(3)
    pool = [0, 1, 2, 3, 4, None]
    for trial in range(150):
        n = int(rng.integers(1, 33))
        answers = [pool[int(i)] for i in rng.integers(0, len(pool), n)]
        if trial % 2:
            answers = [None if a is None else f"{a}" for a in answers]  # strings this time
        got, expected = fn(answers), majority_vote_oracle(answers)
        expect(_same_vote(got, expected),
               f"majority_vote({answers!r}) returned {got!r}, expected {expected!r} (the most "
               f"votes; ties to the first occurrence; None does not vote)")
        if not _same_vote(got, expected):
            return  # one random failure is enough to read


# ----------------------------------------------------------------------------------------------
# 7.7 MaxRL's advantage (Tajwar et al. 2026)


def maxrl_loop(rewards) -> np.ndarray:
    """``(r_i - mean) / mean`` per group (row) in float64, 0 for a group whose mean is 0."""
    rewards = np.asarray(rewards, np.float64)
    out = np.zeros(rewards.shape)
    for b, row in enumerate(rewards):
        mean = sum(row) / len(row)
        if mean > 0:
            out[b] = [(r - mean) / mean for r in row]
    return out


MAXRL = ("(r - mean) / mean, no eps and no std: a right completion among c of G right gets "
         "(G - c)/c, a wrong one -1")


def maxrl_advantages(fn):
    table = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 1], [0, 0, 1, 0]], np.float32)
    what = "maxrl_advantages([[1,0,0,0], [1,1,0,0], [0,1,1,1], [0,0,1,0]])"
    out = expect_shape(fn(table), (4, 4), what)
    expected = [[3, -1, -1, -1], [1, 1, -1, -1], [-1, 1 / 3, 1 / 3, 1 / 3], [-1, -1, 3, -1]]
    expect_close(out, expected, what + f" ({MAXRL})", atol=1e-5)

    flat = np.array([[0, 0, 0, 0], [1, 0, 1, 0], [1, 1, 1, 1]], np.float32)
    what = "maxrl_advantages([[0,0,0,0], [1,0,1,0], [1,1,1,1]])"
    out = expect_shape(fn(flat), (3, 4), what)
    expect(bool(np.all(np.isfinite(as_array(out, what)))),
           f"{what} = {as_array(out, what).tolist()} is not finite: a group with nothing right "
           "(mean 0) gets A = 0, not NaN or a division by zero")
    expect_close(out, [[0, 0, 0, 0], [1, -1, 1, -1], [0, 0, 0, 0]],
                 what + " (a group whose mean is 0 gets A = 0; an all-right group gets 0 too, "
                 "r = mean)", atol=1e-6)

    rng = np.random.default_rng(11)
    for B, G in ((64, 8), (16, 3), (5, 32)):
        rewards = (rng.random((B, G)) < rng.random((B, 1))).astype(np.float32)
        what = f"maxrl_advantages(random binary rewards [{B}, {G}])"
        out = expect_shape(fn(rewards), (B, G), what + " (one group per ROW)")
        expect_close(out, maxrl_loop(rewards), what + f" vs a float64 loop ({MAXRL})", atol=1e-5)
        expect_close(out.sum(axis=1), np.zeros(B), what + ": the advantages of a group sum to 0",
                     atol=1e-4)
        c = rewards.sum(axis=1, keepdims=True)
        right = np.where(c > 0, (G - c) / np.maximum(c, 1), 0.0)
        expected = np.where(rewards > 0, right, np.where(c > 0, -1.0, 0.0))
        expect_close(out, expected, what + ": right completions get (G - c)/c, wrong ones -1 "
                     "(0 in a group with nothing right)", atol=1e-5)

    graded = rng.random((6, 5)) * 2
    graded[1] = 0.0
    graded[2, :2] = 0.0
    what = "maxrl_advantages(rewards >= 0 that are not binary [6, 5])"
    expect_close(fn(_f32(graded)), maxrl_loop(graded.astype(np.float32)),
                 what + " ((r - mean) / mean for any rewards >= 0; 0 where the mean is 0)",
                 atol=1e-5)
    rewards = (rng.random((4, 6)) < 0.4).astype(np.float32)
    expect_close(jit(fn)(rewards), maxrl_loop(rewards), "jax.jit(maxrl_advantages)(rewards)",
                 atol=1e-5)


# ----------------------------------------------------------------------------------------------
# 7.8 The RLVR step: verified rewards -> advantages -> loss -> gradient


RLVR_STEP_STATIC = ("model_config", "advantage", "online_filter", "aggregation")


def _jf32(x) -> jax.Array:
    return jnp.asarray(np.asarray(x, np.float32))


def rlvr_step_loss_loop(logp, old_logp, ref_logp, rewards, mask, advantage, online_filter,
                        beta, clip_low, clip_high, aggregation) -> float:
    """One RLVR loss in float64, token by token: groups whose rewards all tie dropped (when
    ``online_filter``), the advantage rule, eq. 52 clipped, k3, each term aggregated over the
    kept tokens."""
    rewards = np.asarray(rewards, np.float64)
    B, G = rewards.shape
    if advantage == "maxrl":
        adv = maxrl_loop(rewards)
    else:
        adv = ch06.grpo_loop(rewards, scale=advantage == "grpo")
    adv = adv.reshape(-1)
    mask = np.array(mask, np.float64)
    for b in range(B):
        if online_filter and max(rewards[b]) == min(rewards[b]):
            mask[b * G:(b + 1) * G] = 0.0
    logp, old_logp, ref_logp = (np.asarray(x, np.float64) for x in (logp, old_logp, ref_logp))
    N, T = logp.shape
    policy, kl = np.zeros((N, T)), np.zeros((N, T))
    for n in range(N):
        for t in range(T):
            rho = math.exp(min(max(logp[n, t] - old_logp[n, t], -20.0), 20.0))
            clipped = min(max(rho, 1 - clip_low), 1 + clip_high)
            policy[n, t] = -min(rho * adv[n], clipped * adv[n])
            d = ref_logp[n, t] - logp[n, t]
            kl[n, t] = math.exp(d) - d - 1.0
    return (ch06.aggregate_loop(policy, mask, aggregation)
            + beta * ch06.aggregate_loop(kl, mask, aggregation))


@jax.jit
def _pg_grad(params, tokens, mask, adv):
    """d/d params of ``-A log pi`` per token, averaged over the tokens where ``mask`` is 1 (the
    per-token aggregation of eq. 68), at the old policy."""

    def loss(params):
        logp = ch06._oracle_logp(params, tokens, gpt.get_config("tiny"), mask)
        return -jnp.sum(adv[:, None] * logp * mask) / jnp.maximum(jnp.sum(mask), 1.0)

    return jax.grad(loss)(params)


def _unpack_rlvr(out, what, B):
    require(isinstance(out, (tuple, list)) and len(out) == 3,
            f"{what} must return (loss, grads, keep), got {type(out).__name__}"
            + (f" of length {len(out)}" if isinstance(out, (tuple, list)) else ""))
    loss, grads, keep = out
    loss = expect_finite(expect_shape(loss, (), what + " loss (a scalar)"), what + " loss")
    keep = expect_shape(keep, (B,), what + " keep (one flag per group)")
    return loss, grads, np.asarray(keep).astype(bool)


def rlvr_step(fn):
    config, params = ch06._tiny_gpt()
    tokens, mask = ch06._grpo_rollout()
    N, T = mask.shape
    logits = np.asarray(ch06._forward(params, tokens, config))
    logp = ch06.token_logp_loop(logits, tokens, mask)
    # binary verdicts: group 0 has signal (2 of 4 right), group 1 none (all wrong)
    rewards = np.array([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    B, G = rewards.shape
    step = jit(fn, static_argnames=RLVR_STEP_STATIC)

    def run(rewards, old, ref, advantage="grpo", online_filter=True, beta=0.0,
            aggregation="per_token", clip_high=0.28):
        return step(params, tokens, _jf32(mask), _jf32(rewards), _jf32(old), _jf32(ref),
                    model_config=config, advantage=advantage, online_filter=online_filter,
                    beta=beta, clip_low=0.2, clip_high=clip_high, aggregation=aggregation,
                    temperature=1.0)

    # at the old policy: REINFORCE's gradient with the group advantages, over kept tokens only
    for advantage in ("maxrl", "grpo"):
        what = (f"rlvr_step(2 prompts x 4, verdicts [[1, 0, 0, 1], [0, 0, 0, 0]], "
                f"advantage={advantage!r}, online_filter=True, at the old policy)")
        loss, grads, keep = _unpack_rlvr(run(rewards, logp, logp, advantage), what, B)
        require(keep.tolist() == [True, False],
                f"{what}: keep must be [True, False] (group 1's rewards all tie: no signal, "
                f"dropped), got {keep.tolist()}")
        expect_close(loss, rlvr_step_loss_loop(logp, logp, logp, rewards, mask, advantage, True,
                                               0.0, 0.2, 0.28, "per_token"),
                     what + " loss (at rho = 1: minus the per-token mean of the advantages over "
                     "the tokens of kept groups only: a dropped group's tokens count neither in "
                     "the sum nor in the normaliser; maxrl: (r - mean) / mean, grpo: (r - mean) "
                     "/ (std + 1e-4), Bessel-corrected)", atol=2e-5)
        adv = (maxrl_loop(rewards) if advantage == "maxrl" else ch06.grpo_loop(rewards)).reshape(-1)
        kept_mask = mask * np.repeat(keep, G)[:, None]
        ch06._expect_grads(grads, _pg_grad(params, tokens, _jf32(kept_mask), _jf32(adv)),
                           what + " grads vs the gradient of -A log pi averaged over the kept "
                           "groups' tokens (the dropped group must not count in the normaliser "
                           "either)")

    # off-policy, with a KL term and other aggregations, no filter
    rng = np.random.default_rng(11)
    old = np.where(mask > 0, logp + 0.4 * rng.standard_normal((N, T)), 0.0)
    ref = np.where(mask > 0, logp + 0.3 * rng.standard_normal((N, T)), 0.0)
    mixed = np.array([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 1.0]])
    nothing_right = np.array([[0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 1.0, 1.0]])
    for rewards, advantage, online_filter, aggregation, beta, clip_high in (
            (mixed, "maxrl", False, "per_sequence", 0.1, 0.28),
            (mixed, "dr_grpo", True, "fixed_length", 0.05, 0.2),
            (mixed, "grpo", False, "per_token", 0.0, 0.28),
            (nothing_right, "maxrl", False, "per_token", 0.0, 0.28)):
        what = (f"rlvr_step(off-policy, verdicts {rewards.astype(int).tolist()}, advantage="
                f"{advantage!r}, online_filter={online_filter}, aggregation={aggregation!r}, "
                f"beta={beta}, clip_high={clip_high})")
        loss, _, keep = _unpack_rlvr(run(rewards, old, ref, advantage, online_filter, beta,
                                         aggregation, clip_high), what, B)
        require(keep.tolist() == [not online_filter or float(np.ptp(r)) > 0 for r in rewards],
                f"{what}: keep must be True for every group when online_filter is False, and "
                f"for the groups whose verdicts differ otherwise; got {keep.tolist()}")
        expect_close(loss, rlvr_step_loss_loop(logp, old, ref, rewards, mask, advantage,
                                               online_filter, beta, 0.2, clip_high, aggregation),
                     what + " loss (-min(rho A, clip(rho, 1 - clip_low, 1 + clip_high) A) + beta "
                     "* k3 per token, each term aggregated as chapter 6's aggregate_loss; maxrl: "
                     "a right answer in a group with K of G right gets (G - K) / K, and a group "
                     "with nothing right (mean 0) gets A = 0, not NaN)", atol=2e-5)

    # nothing to learn from: every group ties, so no group is kept
    ties = np.array([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    what = "rlvr_step(every group's verdicts tie, off-policy, beta=0.1, online_filter=True)"
    loss, grads, keep = _unpack_rlvr(run(ties, old, ref, "grpo", True, 0.1), what, B)
    require(not keep.any(), f"{what}: keep must be all False, got {keep.tolist()}")
    expect_close(loss, 0.0, what + " loss (no kept token: 0, not NaN -- the KL term too is over "
                 "kept tokens only)", atol=1e-7)
    flat = np.concatenate([as_array(g, what).reshape(-1) for g in jax.tree.leaves(grads)])
    expect_close(np.abs(flat).max(), 0.0, what + " grads (no kept group, no gradient)",
                 atol=1e-10)


# ----------------------------------------------------------------------------------------------
# 7.9 A process check of a worked answer (the reasoning-length notebook)

AUDIT_KEYS = ("facts", "columns", "carry", "follows")
FOLLOWS = ("'follows' asks whether the stated answer is the one the written steps give "
           "(10 * tens + ones % 10), not whether it is right")


def _column_steps(a: int, b: int) -> list[list[int]]:
    """The two steps of column addition as ``[x, y, carry, sum]``, computed here (not by
    ``data.scratchpad``): the ones digits, then the tens digits and the carry."""
    ones = [a % 10, b % 10]
    carry = int(sum(ones) >= 10)
    tens = [a // 10, b // 10]
    return [ones + [0, sum(ones)], tens + [carry, sum(tens) + carry]]


def _write(steps, stated) -> str:
    """A worked reply from ``steps`` (``[x, y, carry, sum]``, carry 0 = not written)."""
    parts = [f"{x} + {y}" + (f" + {c}" if c else "") + f" = {s}" for x, y, c, s in steps]
    tail = "" if stated is None else f" The answer is {stated}."
    return ", ".join(parts) + "." + tail


def _follows(steps) -> int:
    return 10 * steps[1][3] + steps[0][3] % 10


def audit_cases(rng) -> list[tuple[int, int, str, dict | None, str]]:
    """``(a, b, reply, expected audit, why)``: hand-made replies whose every flaw is made on
    purpose, so the expected audit is known by construction."""
    cases = [
        (47, 38, "7 + 8 = 15, 4 + 3 + 1 = 8. The answer is 85.", dict.fromkeys(AUDIT_KEYS, True),
         "the right column addition; the carry is a term of the tens sum: 4 + 3 + 1 = 8 is true"),
        (47, 38, "The answer is 85.", None, "a direct answer writes no step: not audited"),
        (47, 38, "7 + 8 = 15. The answer is 85.", None, "one step is not a worked answer"),
        (47, 38, "7 + 8 = 15, 4 + 3 + 1 = 8.", {"facts": True, "columns": True, "carry": True,
                                                 "follows": False},
         "no stated answer: nothing follows"),
        (47, 38, "8 + 7 = 15, 3 + 4 + 1 = 8. The answer is 85.", dict.fromkeys(AUDIT_KEYS, True),
         "the terms of a column in either order"),
        (21, 34, "1 + 4 = 5, 2 + 3 = 5. The answer is 55.", dict.fromkeys(AUDIT_KEYS, True),
         "no carry when the ones do not overflow"),
        (95, 87, "5 + 7 = 12, 9 + 8 + 1 = 18. The answer is 182.", dict.fromkeys(AUDIT_KEYS, True),
         "a three-digit answer: 10 * 18 + 2"),
        (47, 38, "7 + 8 = 15, 4 + 3 + 2 = 9. The answer is 95.",
         {"facts": True, "columns": True, "carry": False, "follows": True},
         "a carry is 1, never 2"),
        (47, 38, "7 + 8 = 15, 4 + 3 + 1 = 8. The answer is 84. No: the answer is 85.",
         dict.fromkeys(AUDIT_KEYS, True), "the LAST stated answer counts, as for the verifier"),
        (47, 38, "7 + 8 + 0 + 0 = 15, 4 + 3 + 1 = 8, 8 + 7 = 15. The answer is 158.",
         {"facts": True, "columns": False, "carry": False, "follows": True},
         "a sum of four terms is no step: the steps read are 4 + 3 + 1 = 8 and 8 + 7 = 15"),
    ]
    for _ in range(40):
        a, b = (int(x) for x in rng.integers(10, 100, 2))
        right = _column_steps(a, b)
        overflow = bool(right[1][2])
        # a false fact: the ones sum written one too high, the answer following from it
        steps = [list(s) for s in right]
        steps[0][3] += 1
        cases.append((a, b, _write(steps, _follows(steps)),
                      {"facts": False, "columns": True, "carry": True, "follows": True},
                      "a false fact whose answer follows from the steps: only 'facts' fails; "
                      + FOLLOWS))
        # the wrong column: a's tens digit in the ones step, the sum true
        steps = [list(s) for s in right]
        if a // 10 != a % 10 and a // 10 != b % 10:
            steps[0][0] = a // 10
            steps[0][3] = steps[0][0] + steps[0][1]
            cases.append((a, b, _write(steps, _follows(steps)),
                          {"facts": True, "columns": False, "carry": True, "follows": True},
                          "a true sum of the wrong digits"))
        # the carry forgotten (or invented), each sum true for what it writes
        steps = [list(s) for s in right]
        steps[1][2] = 0 if overflow else 1
        steps[1][3] = steps[1][0] + steps[1][1] + steps[1][2]
        cases.append((a, b, _write(steps, _follows(steps)),
                      {"facts": True, "columns": True, "carry": False, "follows": True},
                      "the carry forgotten" if overflow else "a carry the ones never made"))
        # a false tens fact, the answer following from it
        steps = [list(s) for s in right]
        steps[1][3] += 1
        cases.append((a, b, _write(steps, _follows(steps)),
                      {"facts": False, "columns": True, "carry": True, "follows": True},
                      "a false fact in the TENS step: both steps must be true"))
        # the wrong tens column: b's ones digit in the tens step, its sum true
        steps = [list(s) for s in right]
        if b % 10 != b // 10 and b % 10 != a // 10:
            steps[1][1] = b % 10
            steps[1][3] = sum(steps[1][:3])
            cases.append((a, b, _write(steps, _follows(steps)),
                          {"facts": True, "columns": False, "carry": True, "follows": True},
                          "the TENS step adds a ones digit: both columns must be right"))
        # right steps, a different stated answer
        cases.append((a, b, _write(right, a + b + 10),
                      {"facts": True, "columns": True, "carry": True, "follows": False},
                      "the steps are right but the stated answer is not theirs"))
    return cases


def audit_worked_answer(fn):
    rng = np.random.default_rng(9)
    for a, b, text, expected, why in audit_cases(rng):
        got = fn(a, b, text)
        what = f"audit_worked_answer({a}, {b}, {_short(text, 70)})"
        if expected is None:
            expect(got is None, f"{what} returned {got!r}, expected None ({why})")
            continue
        require(isinstance(got, dict) and set(got) >= set(AUDIT_KEYS),
                f"{what} returned {got!r}: expected a dict with the keys {AUDIT_KEYS}")
        for key in AUDIT_KEYS:
            because = why if key != "follows" or FOLLOWS in why else f"{why}; {FOLLOWS}"
            expect(bool(got[key]) == expected[key],
                   f"{what}[{key!r}] is {got[key]!r}, expected {expected[key]} ({because})")
