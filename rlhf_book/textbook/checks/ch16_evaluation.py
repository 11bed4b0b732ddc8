"""Grading checks for chapter 16 (evaluation) and Appendix C.2 (evaluation variance).

Oracles: the book's numbers and numbers derived from them by hand (Tulu 3's suffix "Therefore,
the answer is (C)", a box and "The answer is:", the two formats book §16.2 says conflict;
Table 7's standard deviations and the interval ``1.96 * 1.48 * sqrt(2) = 4.10`` points of
GPQA; a coin on each of 200 questions moving by 3.54 points; 1200 beating 1000 by Elo, worked
by hand to 1207.69 and 992.31), hand-made inputs
whose answer is known by construction (log-probabilities where the length normalisation flips
the prediction; training texts with a planted 8-gram and a 7-word near miss), and plain Python
or float64 NumPy loops written from the formulas: the masked sum over each choice's tokens,
``sqrt(sum_i p_i (1 - p_i)) / N``, every word window of every training text compared with every
window of an item, and Elo's update played battle after battle (Elo 1978). Monte Carlo runs are
compared within a few standard errors (the standard error of a standard deviation from the
kurtosis of the simulated score). None of the oracles takes the graded function.
"""

from __future__ import annotations

import math

import numpy as np

from rlhf_book.textbook.checks import (as_array, expect, expect_close, expect_dtype,
                                       expect_finite, expect_shape, jit, require, vmap)


def _f32(x) -> np.ndarray:
    return np.asarray(x, np.float32)


def _short(text: str, limit: int = 60) -> str:
    """``repr(text)``, its middle cut when it is long (one line: newlines stay escaped)."""
    r = repr(text)
    return r if len(r) <= limit else r[:limit // 2 - 2] + " ... " + r[-(limit // 2 - 2):]


def _call(fn, what, shape, *args, **kwargs) -> np.ndarray:
    out = expect_shape(fn(*args, **kwargs), shape, what)
    return expect_finite(out, what).astype(np.float64)


# ----------------------------------------------------------------------------------------------
# 16.1 Strict answer extraction (book §16.1, exact match; §16.2, answer-format conflicts)

TULU_SUFFIX = "Therefore, the answer is (C)"  # Tulu 3's MMLU suffix (book §16.1)

# (text, style, expected, why): expected answers written by hand from the contract.
EXTRACTION_CASES = (
    (TULU_SUFFIX, "tulu", "C", "Tulu 3's suffix: the letter inside the parentheses"),
    ("The Extreme Value Theorem guarantees both extrema on [a, b]. " + TULU_SUFFIX, "tulu", "C",
     "a chain of thought, then the suffix"),
    ("Therefore, the answer is (J)", "tulu", "J", "ten choices: the letters A to J"),
    ("the answer is (C)", "tulu", None,
     "a strict suffix is case-sensitive: 'the answer is (C)' is not Tulu 3's suffix"),
    ("Therefore the answer is C", "tulu", None,
     "no comma and no parentheses: not the format, scored wrong"),
    ("Therefore, the answer is C", "tulu", None, "the letter must be in parentheses"),
    ("Therefore, the answer is (c)", "tulu", None, "a capital letter only: matching is "
     "case-sensitive"),
    ("Therefore, the answer is (A). Wait, f must be continuous on a closed interval. "
     "Therefore, the answer is (C)", "tulu", "C",
     "the LAST match counts: a chain of thought may try an answer before it commits"),
    ("\\boxed{9}", "boxed", "9", "NuminaMath's format: what is inside the box"),
    ("First \\boxed{3}, then, with the carry: \\boxed{9}.", "boxed", "9",
     "the LAST box, not the first"),
    ("So x = \\boxed{x^2 - 1}", "boxed", "x^2 - 1", "the whole content of the box"),
    ("The answer is: 9", "answer_is", "9", "MetaMath's format: the rest of the line"),
    ("The answer is: 9.", "answer_is", "9", "one final full stop is dropped"),
    ("The answer is:   9  ", "answer_is", "9", "surrounding spaces are stripped"),
    ("The answer is: 3.5", "answer_is", "3.5",
     "a decimal point is not a final full stop"),
    ("The answer is: 9\nbecause 4 + 5 = 9", "answer_is", "9",
     "the rest of the LINE only, not what follows on the next"),
    ("The answer is: 3\nNo, recount. The answer is: 9.", "answer_is", "9",
     "the LAST 'The answer is:', not the first"),
    ("the answer is: 9", "answer_is", None,
     "case-sensitive: 'the answer is:' is not the format"),
    ("The answer is 9", "answer_is", None, "no colon: not the format"),
    # book §16.2: a model trained on both formats answers in one, a harness reads the other
    ("\\boxed{9}", "answer_is", None,
     "a boxed answer read by a harness that wants 'The answer is:' scores wrong (book §16.2)"),
    ("The answer is: 9", "boxed", None,
     "'The answer is:' read by a harness that wants a box scores wrong (book §16.2)"),
    ("\\boxed{9}", "tulu", None, "a box is not Tulu 3's suffix"),
    ("I am not sure.", "tulu", None, "no answer: None"),
    ("I am not sure.", "boxed", None, "no answer: None"),
    ("I am not sure.", "answer_is", None, "no answer: None"),
)


def extract_strict_answer(fn):
    for text, style, expected, why in EXTRACTION_CASES:
        got = fn(text, style)
        ok = (got is None) if expected is None else (isinstance(got, str) and got == expected)
        expect(ok, f"extract_strict_answer({_short(text)}, {style!r}) returned {got!r}, expected "
                   f"{expected!r} ({why})")
    got = fn("Therefore, the answer is (B)")
    expect(isinstance(got, str) and got == "B",
           f"extract_strict_answer('Therefore, the answer is (B)') with the default style returned "
           f"{got!r}, expected 'B' (the default style is 'tulu')")


# ----------------------------------------------------------------------------------------------
# 16.2 Log-likelihood scores of the choices (book §16.1, log-likelihood scoring)

NORM_HOW = {
    "none": "the masked sum of the answer's token log-probabilities",
    "token": "the masked sum divided by the number of answer tokens (the mask's sum)",
    "char": "the masked sum divided by the answer's characters, chars",
}


def choice_scores_loop(token_log_probs, mask, chars=None, norm: str = "none") -> np.ndarray:
    """The score of each choice by a plain float64 loop over the tokens: add the log-prob of
    every position the mask marks, then divide by nothing, the count of marked positions or
    the characters."""
    logp = np.asarray(token_log_probs, np.float64)
    mask = np.asarray(mask)
    out = np.zeros(logp.shape[:-1])
    for index in np.ndindex(*logp.shape[:-1]):
        total, count = 0.0, 0
        for t in range(logp.shape[-1]):
            if mask[index + (t,)]:
                total += float(logp[index + (t,)])
                count += 1
        if norm == "token":
            total /= count
        elif norm == "char":
            total /= float(np.asarray(chars)[index])
        out[index] = total
    return out


# Three answers of 1, 4 and 3 tokens (padded to 4 with -inf, as a log-softmax of a masked logit
# gives): choice 0 is short, choice 1 has the best tokens, choice 2 the most characters.
#   none:  -1.0, -2.0, -2.7              -> (A)
#   token: -1.0, -0.5, -0.9              -> (B)
#   char:  -1.0 / 2, -2.0 / 5, -2.7 / 30 -> (C)
_NEG_INF = -np.inf
FLIP_LOGP = np.array([[-1.0, _NEG_INF, _NEG_INF, _NEG_INF],
                      [-0.5, -0.5, -0.5, -0.5],
                      [-0.9, -0.9, -0.9, _NEG_INF]], np.float32)
FLIP_MASK = np.array([[1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]], np.float32)
FLIP_CHARS = np.array([2, 5, 30], np.int32)
FLIP = {"none": ([-1.0, -2.0, -2.7], 0), "token": ([-1.0, -0.5, -0.9], 1),
        "char": ([-0.5, -0.4, -0.09], 2)}


def choice_log_likelihood(fn):
    for norm, (expected, best) in FLIP.items():
        chars = FLIP_CHARS if norm == "char" else None
        what = (f"choice_log_likelihood(three answers of 1, 4 and 3 tokens padded with -inf, "
                f"norm={norm!r})")
        out = expect_shape(fn(FLIP_LOGP, FLIP_MASK, chars, norm), (3,), what)
        expect_finite(out, what + " (padding holds -inf: mask it with jnp.where, not by "
                      "multiplying, as -inf * 0 is NaN)")
        expect_close(out, expected, what + f" ({NORM_HOW[norm]})", atol=1e-5)
        picked = int(np.argmax(out))
        expect(picked == best, f"{what} predicts ({'ABC'[picked]}), expected ({'ABC'[best]}): "
               "the length normalisation decides the prediction (none favours the short "
               "answer, token the best tokens, char the long text)")

    # the prompt's positions and the padding are masked out, whatever they hold
    logp = _f32([[-7.0, -3.0, -0.2, -0.3, 5.0], [-0.1, -9.0, -0.6, _NEG_INF, _NEG_INF]])
    mask = _f32([[0, 0, 1, 1, 0], [0, 0, 1, 0, 0]])
    for norm, expected in (("none", [-0.5, -0.6]), ("token", [-0.25, -0.6])):
        what = f"choice_log_likelihood(answers after a prompt, then padding, norm={norm!r})"
        out = _call(fn, what, (2,), logp, mask, None, norm)
        expect_close(out, expected, what + " (only the positions where mask is 1 count: not "
                     "the prompt's, not the padding's, even when they hold 5.0 or -inf)",
                     atol=1e-5)

    rng = np.random.default_rng(16)
    logp = np.log(rng.uniform(0.01, 1.0, (2, 3, 4, 6))).astype(np.float32)
    mask = (rng.random((2, 3, 4, 6)) < 0.6).astype(np.float32)
    mask[..., 0] = 1.0  # every answer has a token
    logp[mask == 0] = -np.inf
    chars = rng.integers(1, 40, (2, 3, 4)).astype(np.int32)
    for norm in ("none", "token", "char"):
        what = f"choice_log_likelihood(token_log_probs [2, 3, 4, 6], norm={norm!r})"
        out = _call(fn, what, (2, 3, 4), logp, mask, chars if norm == "char" else None, norm)
        expect_close(out, choice_scores_loop(logp, mask, chars, norm),
                     what + f" vs a float64 loop ({NORM_HOW[norm]}; the leading axes are a "
                     "batch, the last two the choices and their tokens)", atol=1e-4, rtol=1e-5)
    what = "choice_log_likelihood(token_log_probs [2, 3, 4, 6], mask as bools, norm='token')"
    expect_close(_call(fn, what, (2, 3, 4), logp, mask > 0, None, "token"),
                 choice_scores_loop(logp, mask, None, "token"), what, atol=1e-4, rtol=1e-5)
    expect_close(jit(fn, static_argnums=3)(logp, mask, chars, "char"),
                 choice_scores_loop(logp, mask, chars, "char"),
                 "jax.jit(choice_log_likelihood, static_argnums=3)(..., norm='char')",
                 atol=1e-4, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# 16.3 The standard deviation of a re-run (book §16.2; Appendix C.2, Table 7)

RERUN = "sqrt(sum_i p_i (1 - p_i)) / N: the variance of a mean of N independent Bernoullis"


def rerun_std_loop(p) -> np.ndarray:
    """``sqrt(sum_i p_i (1 - p_i)) / N`` over the last axis, by a float64 loop."""
    p = np.asarray(p, np.float64)
    out = np.zeros(p.shape[:-1])
    for index in np.ndindex(*p.shape[:-1]):
        row = p[index]
        out[index] = math.sqrt(sum(q * (1 - q) for q in row)) / len(row)
    return out


def rerun_std(fn):
    what = "rerun_std([0, 1, 1, 0, 1])"
    expect_close(_call(fn, what, (), _f32([0, 1, 1, 0, 1])), 0.0,
                 what + " (every answer certain: a re-run cannot move the score)", atol=1e-7)
    what = "rerun_std(p = 0.5 on each of 200 questions)"
    expect_close(_call(fn, what, (), np.full(200, 0.5, np.float32)), 0.5 / math.sqrt(200),
                 what + " (0.0353553, i.e. 3.54 points: a coin on every question; " + RERUN
                 + ")", atol=1e-6)
    what = "rerun_std(p = 0.5 on each of MMLU's 14,042 questions)"
    out = _call(fn, what, (), np.full(14_042, 0.5, np.float32))
    expect_close(out * 100, 0.4219, what + " (0.4219 points: 0.5 / sqrt(14,042); " + RERUN + ")",
                 atol=1e-4)

    rng = np.random.default_rng(3)
    p = rng.uniform(0.0, 1.0, (3, 50))
    what = "rerun_std(p [3, 50])"
    out = _call(fn, what, (3,), _f32(p))
    expect_close(out, rerun_std_loop(_f32(p)), what + " (one std per row: the questions are the "
                 "last axis; " + RERUN + ")", atol=1e-6, rtol=1e-4)

    # Monte Carlo: re-run a 40-question evaluation R times and measure the spread of its score
    p = rng.uniform(0.05, 0.95, 40)
    R = 20_000
    scores = (rng.random((R, p.size)) < p).mean(axis=1)
    sample_std = float(scores.std(ddof=1))
    q = p * (1 - p)
    kurtosis = 3.0 + float(np.sum(q * (1 - 6 * q)) / np.sum(q) ** 2)  # of a sum of Bernoullis
    se = sample_std * math.sqrt((kurtosis - 1) / (4 * R))
    got = float(_call(fn, "rerun_std(p [40])", (), _f32(p)))
    expect(abs(got - sample_std) <= 4 * se,
           f"rerun_std(p [40]) = {got:.5f}, but {R} simulated re-runs of a 40-question "
           f"evaluation scored with a standard deviation of {sample_std:.5f} (standard error "
           f"{se:.5f}): more than 4 standard errors apart ({RERUN})")
    expect_close(jit(fn)(_f32(p)), rerun_std_loop(_f32(p)), "jax.jit(rerun_std)(p [40])",
                 atol=1e-6, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# 16.4 The interval of a difference between two models (book §16.2; Appendix C.2, Table 7)

DIFF = "z * sqrt(sigma_a^2 / n_a + sigma_b^2 / n_b): the variances of independent means add"

# Table 7's standard deviations (points) and 1.96 * sigma * sqrt(2) to two decimals, one run each.
TABLE7_INTERVALS = (("GPQA", 1.48, 4.10), ("AlpacaEval 3", 1.24, 3.44), ("IFEval", 0.88, 2.44),
                    ("LiveCodeBench", 0.29, 0.80), ("MMLU", 0.22, 0.61), ("PopQA", 0.16, 0.44))


def diff_ci(fn):
    for name, sigma, half_width in TABLE7_INTERVALS:
        what = f"diff_ci({sigma}) ({name} in Table 7, one run of each model)"
        out = _call(fn, what, (), sigma)
        expect_close(out, half_width, what + f" ({half_width:.2f} points to two decimals, "
                     "worked by hand from Table 7's sigma; "
                     f"{DIFF}, with sigma_b = sigma_a and n = 1)", atol=0.005, rtol=0)
        expect_close(out, 1.96 * sigma * math.sqrt(2), what + f" ({DIFF})", atol=1e-4)
    sigmas = np.array([s for _, s, _ in TABLE7_INTERVALS])
    what = "diff_ci(Table 7's sigmas [6])"
    expect_close(_call(fn, what, (6,), _f32(sigmas)), 1.96 * sigmas * math.sqrt(2),
                 what + " (elementwise)", atol=1e-4)

    what = "diff_ci(1.48, n_a=10, n_b=10)"
    expect_close(_call(fn, what, (), 1.48, n_a=10, n_b=10),
                 1.96 * 1.48 * math.sqrt(2) / math.sqrt(10),
                 what + " (averaging 10 re-runs of each model shrinks the interval by sqrt(10): "
                 f"4.10 -> 1.30 points; {DIFF})", atol=1e-4)
    what = "diff_ci(1.48, 0.22)"
    expect_close(_call(fn, what, (), 1.48, 0.22), 1.96 * math.sqrt(1.48 ** 2 + 0.22 ** 2),
                 what + f" (two different sigmas: their variances add, not the sigmas; {DIFF})",
                 atol=1e-4)
    what = "diff_ci(1.48, 0.22, n_a=4, n_b=1)"
    expect_close(_call(fn, what, (), 1.48, 0.22, n_a=4, n_b=1),
                 1.96 * math.sqrt(1.48 ** 2 / 4 + 0.22 ** 2),
                 what + f" (n_a divides sigma_a's variance only; {DIFF})", atol=1e-4)
    what = "diff_ci(1.0, z=2.576)"
    expect_close(_call(fn, what, (), 1.0, z=2.576), 2.576 * math.sqrt(2),
                 what + f" (a 99% interval: use the z passed in; {DIFF})", atol=1e-4)
    expect_close(jit(fn)(_f32(sigmas), _f32(sigmas[::-1])),
                 1.96 * np.sqrt(sigmas ** 2 + sigmas[::-1] ** 2),
                 "jax.jit(diff_ci)(sigma_a [6], sigma_b [6])", atol=1e-4)


# ----------------------------------------------------------------------------------------------
# 16.5 Word n-gram contamination (book §16.4; Tulu 3's 8-gram check)

NGRAM = ("an item of at least n words is flagged when one of its n-word windows occurs in a "
         "training text; words are the lower-cased runs of [a-z0-9]")

CORPUS = ["Notes from the archive: the quick brown fox jumps over the lazy dog near the river "
          "bank today",
          "An unrelated document about cooking pasta with garlic and olive oil for dinner."]

# (item, expected, why), each true of CORPUS by construction.
NGRAM_CASES = (
    ("A typing test asks: quick brown fox jumps over the lazy dog and then what follows?",
     True,
     "the 8 words 'quick brown fox jumps over the lazy dog' occur in the first training text"),
    ("Why does a brown fox jumps over the lazy dog again and again in this puzzle?", False,
     "it shares only a 7-word run ('brown fox jumps over the lazy dog') with the corpus: no "
     "8-gram"),
    ("Typing drill: QUICK-brown Fox; JUMPS over the LAZY dog (done).", True,
     "case and punctuation do not hide a copy: words are lower-cased runs of [a-z0-9]"),
    ("near the river bank today an unrelated document about cooking", False,
     "every 8-gram of this item runs from the end of one training text into the start of the "
     "next: windows never cross between two training texts"),
    ("cooking pasta with garlic", True,
     "an item shorter than n words is flagged when it occurs whole as a consecutive run"),
    ("Cooking, PASTA!", True, "a short item, its case and punctuation normalised"),
    ("cooking pasta with olive oil", False,
     "a short item whose words all occur, but not as one consecutive run"),
    ("river bank today an unrelated", False,
     "a short item must occur whole inside ONE training text, not across two"),
    ("garlic with pasta cooking", False, "a short item's words in another order"),
)


def ngram_oracle(train_words, eval_words, n: int) -> np.ndarray:
    """Brute force over word lists: an item of ``m`` words is flagged when some window of
    ``min(n, m)`` of its words equals, word by word, some window of as many words of one
    training text."""
    flags = []
    for item in eval_words:
        size = min(n, len(item))
        hit = False
        for i in range(len(item) - size + 1):
            for text in train_words:
                for j in range(len(text) - size + 1):
                    if all(item[i + k] == text[j + k] for k in range(size)):
                        hit = True
        flags.append(hit)
    return np.array(flags, bool)


_SEPARATORS = (" ", "  ", ", ", ". ", " -- ", "\n", "; ", "! ", " (", ") ")


def _render(words, rng) -> str:
    """Words written as text: random separators and random capitalisation."""
    parts = []
    for k, word in enumerate(words):
        case = int(rng.integers(0, 3))
        parts.append(word.upper() if case == 0 else word.title() if case == 1 else word)
        if k < len(words) - 1:
            parts.append(_SEPARATORS[int(rng.integers(0, len(_SEPARATORS)))])
    return "".join(parts)


def _draw(rng, vocab, low: int, high: int) -> list[str]:
    """Between ``low`` and ``high - 1`` words drawn uniformly from ``vocab``."""
    return [vocab[int(i)] for i in rng.integers(0, len(vocab), int(rng.integers(low, high)))]


def _flags(fn, train, items, what, *args) -> np.ndarray:
    out = expect_shape(fn(train, items, *args), (len(items),), what + " (one flag per item)")
    return expect_dtype(out, "b", what + " (a bool array)")


def ngram_contamination(fn):
    what = "ngram_contamination(a small corpus, nine items)"
    items = [item for item, _, _ in NGRAM_CASES]
    out = _flags(fn, CORPUS, items, what)
    for k, (item, expected, why) in enumerate(NGRAM_CASES):
        expect(bool(out[k]) == expected,
               f"ngram_contamination(the corpus, ...)[{k}] for {_short(item)} is {bool(out[k])}, "
               f"expected {expected} ({why}; n = 8 by default)")

    rng = np.random.default_rng(8)
    for vocab, n in ((("a", "b7", "cat"), 8), (tuple("abcdefghijkl"), 3),
                     (("x1", "y", "z", "w42"), 5)):
        train_words = [_draw(rng, vocab, 0, 30) for _ in range(12)]
        eval_words = []
        for _ in range(40):
            if rng.random() < 0.4:  # a copy from a training text, one word perhaps changed
                text = train_words[int(rng.integers(0, len(train_words)))]
                if not text:
                    continue
                start = int(rng.integers(0, len(text)))
                item = list(text[start:start + int(rng.integers(1, 13))])
                if rng.random() < 0.5:
                    word = vocab[int(rng.integers(0, len(vocab)))]
                    item[int(rng.integers(0, len(item)))] = word
            else:
                item = _draw(rng, vocab, 1, 13)
            eval_words.append(item)
        train = [_render(w, rng) for w in train_words]
        evals = [_render(w, rng) for w in eval_words]
        expected = ngram_oracle(train_words, eval_words, n)
        what = (f"ngram_contamination({len(train)} random texts over the words {vocab}, "
                f"{len(evals)} items, n={n})")
        expect_close(_flags(fn, train, evals, what, n), expected,
                     what + f" vs a brute-force comparison of every window ({NGRAM}; a shorter "
                     "item is flagged when it occurs whole; windows never cross two texts)")


# ----------------------------------------------------------------------------------------------
# 16.6 One Elo update (book §16.3; Elo 1978)

ELO = ("E_A = 1 / (1 + 10^((R_B - R_A) / 400)); R_A' = R_A + K (S_A - E_A), "
       "R_B' = R_B - K (S_A - E_A)")


def elo_expected_score(r_a: float, r_b: float) -> float:
    return 1.0 / (1.0 + 10.0 ** ((r_b - r_a) / 400.0))


def _pair(fn, what, *args, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    out = fn(*args, **kwargs)
    require(isinstance(out, (tuple, list)) and len(out) == 2,
            f"{what} returned {type(out).__name__}: expected a tuple (new R_A, new R_B)")
    return (expect_finite(as_array(out[0], what + "[0]"), what + "[0]").astype(np.float64),
            expect_finite(as_array(out[1], what + "[1]"), what + "[1]").astype(np.float64))


def elo_update(fn):
    what = "elo_update(1200.0, 1000.0, 1.0, 32.0)"
    a, b = _pair(fn, what, 1200.0, 1000.0, 1.0, 32.0)
    expect_close((a, b), (1207.69, 992.31), what + " (worked by hand, to two decimals: "
                 f"E_A = 0.7597, so A gains 32 (1 - 0.7597) = 7.69; {ELO})", atol=0.005, rtol=0)
    change = 32 * (1 - elo_expected_score(1200, 1000))
    expect_close((a, b), (1200 + change, 1000 - change), what + f" ({ELO})", atol=1e-3, rtol=0)

    what = "elo_update(1200.0, 1000.0, 0.0)"
    a, _ = _pair(fn, what, 1200.0, 1000.0, 0.0)
    expect_close((1200.0 - a) / 32.0, elo_expected_score(1200, 1000),
                 what + " read as A's expected score (1200 - R_A') / K (0.7597 = 1 / (1 + "
                 "10^(-200 / 400)): base 10 and a scale of 400, not e; the default K is 32)",
                 atol=1e-5)
    what = "elo_update(1000.0, 1200.0, 1.0)"
    a, b = _pair(fn, what, 1000.0, 1200.0, 1.0)
    expect_close((a, b), (1000 + 32 * (1 - elo_expected_score(1000, 1200)),
                          1200 - 32 * (1 - elo_expected_score(1000, 1200))),
                 what + f" (the underdog wins: a surprise, a large change; {ELO})", atol=1e-3,
                 rtol=0)
    what = "elo_update(1500.0, 1500.0, 0.5)"
    expect_close(_pair(fn, what, 1500.0, 1500.0, 0.5), (1500.0, 1500.0),
                 what + " (a tie between equals changes nothing: S_A = E_A = 1/2)", atol=1e-4,
                 rtol=0)
    what = "elo_update(1200.0, 1000.0, 1.0, k=16.0)"
    a, _ = _pair(fn, what, 1200.0, 1000.0, 1.0, k=16.0)
    expect_close(a, 1200 + 16 * (1 - elo_expected_score(1200, 1000)),
                 what + " (use the K passed in)", atol=1e-3, rtol=0)

    rng = np.random.default_rng(6)
    r_a = np.round(rng.uniform(800, 1600, 7), 1)
    r_b = np.round(rng.uniform(800, 1600, 7), 1)
    s_a = np.array([1.0, 0.0, 0.5, 1.0, 0.0, 0.5, 1.0])
    expected_a = np.array([ra + 24 * (s - elo_expected_score(ra, rb))
                           for ra, rb, s in zip(r_a, r_b, s_a)])
    expected_b = np.array([rb - 24 * (s - elo_expected_score(ra, rb))
                           for ra, rb, s in zip(r_a, r_b, s_a)])
    what = "elo_update(r_a [7], r_b [7], s_a [7], 24.0)"
    a, b = _pair(fn, what, _f32(r_a), _f32(r_b), _f32(s_a), 24.0)
    expect_close(a, expected_a, what + f"[0] (elementwise; {ELO})", atol=2e-3, rtol=0)
    expect_close(b, expected_b, what + f"[1] (elementwise; {ELO})", atol=2e-3, rtol=0)
    expect_close(a + b, r_a + r_b, what + " summed (zero-sum: the points A gains are the points B "
                 "loses)", atol=2e-3, rtol=0)
    out = jit(fn)(_f32(r_a), _f32(r_b), _f32(s_a), 24.0)
    require(isinstance(out, (tuple, list)) and len(out) == 2,
            "jax.jit(elo_update)(...) did not return a tuple (new R_A, new R_B)")
    expect_close(out[0], expected_a, "jax.jit(elo_update)(r_a, r_b, s_a, 24.0)[0]", atol=2e-3,
                 rtol=0)


# ----------------------------------------------------------------------------------------------
# 16.7 Elo ratings from a sequence of battles (book §16.3)


def elo_loop(pairs, outcomes, n_players: int, k: float = 32.0,
             initial: float = 1000.0) -> np.ndarray:
    """Elo ratings by a plain Python loop in float64: every player starts at ``initial``; the
    battles update their two players one after the other, in the order given."""
    ratings = [float(initial)] * n_players
    for (a, b), s in zip(np.asarray(pairs).tolist(), np.asarray(outcomes, np.float64).tolist()):
        change = k * (s - elo_expected_score(ratings[a], ratings[b]))
        ratings[a] += change
        ratings[b] -= change
    return np.array(ratings)


def random_battles(rng, n_players: int, n_battles: int) -> tuple[np.ndarray, np.ndarray]:
    """``pairs [M, 2]`` of two different players, ``outcomes [M]`` in {0, 1/2, 1}, the better
    (lower-numbered) player winning more often."""
    a = rng.integers(0, n_players, n_battles)
    b = (a + rng.integers(1, n_players, n_battles)) % n_players
    p_a = 1 / (1 + np.exp((a - b) / 1.5))
    u = rng.random(n_battles)
    outcomes = np.where(u < 0.1, 0.5, (u < 0.1 + 0.9 * p_a).astype(float))
    return np.stack([a, b], 1).astype(np.int32), outcomes.astype(np.float32)


IN_ORDER = ("each battle updates its two players from their CURRENT ratings, in the order "
            "given (a scan whose carry is the ratings)")


def _ratings(fn, what, P, *args, **kwargs) -> np.ndarray:
    return _call(fn, what, (P,), *args, **kwargs)


def elo_ratings(fn):
    what = "elo_ratings(pairs=[[0, 1]], outcomes=[1.0], n_players=2)"
    expect_close(_ratings(fn, what, 2, np.array([[0, 1]], np.int32), _f32([1.0]), 2),
                 [1016.0, 984.0], what + " (both start at 1000, E = 1/2: the winner gains "
                 "32 / 2 = 16, the loser loses it)", atol=1e-3)
    pairs = np.array([[0, 1], [0, 1], [0, 1]], np.int32)
    what = "elo_ratings(player 0 beats player 1 three times, n_players=3)"
    out = _ratings(fn, what, 3, pairs, _f32([1, 1, 1]), 3)
    expect_close(out, elo_loop(pairs, [1, 1, 1], 3), what + " (the second win is expected more "
                 "and gains less: " + IN_ORDER + "; player 2 never plays and keeps 1000)",
                 atol=1e-3)

    rng = np.random.default_rng(7)
    P = 5
    pairs, outcomes = random_battles(rng, P, 60)
    what = f"elo_ratings(60 random battles, n_players={P})"
    forward = _ratings(fn, what, P, pairs, outcomes, P)
    expect_close(forward, elo_loop(pairs, outcomes, P), what + f" vs a Python loop ({IN_ORDER})",
                 atol=2e-2)

    # the order matters: the same battles reversed give other ratings
    loop_forward, loop_reversed = elo_loop(pairs, outcomes, P), elo_loop(pairs[::-1],
                                                                         outcomes[::-1], P)
    require(np.abs(loop_forward - loop_reversed).max() > 1.0,
            "internal: the check's battles should depend on their order")
    what = f"elo_ratings(the same 60 battles in reverse order, n_players={P})"
    expect_close(_ratings(fn, what, P, pairs[::-1].copy(), outcomes[::-1].copy(), P),
                 loop_reversed, what + " (Elo depends on the order of the battles: reversed, "
                 f"the loop gives {np.round(loop_reversed, 1).tolist()}, not "
                 f"{np.round(loop_forward, 1).tolist()}; {IN_ORDER})", atol=2e-2)

    what = f"elo_ratings(60 random battles, n_players={P}, k=16.0, initial=1500.0)"
    out = _ratings(fn, what, P, pairs, outcomes, P, k=16.0, initial=1500.0)
    expect_close(out, elo_loop(pairs, outcomes, P, 16.0, 1500.0),
                 what + " (use the k and the initial rating passed in)", atol=2e-2)
    expect_close(out.sum(), P * 1500.0, what + " summed (each battle moves points from one "
                 "player to the other: the total stays P * initial)", atol=5e-2, rtol=0)

    what = f"jax.jit(elo_ratings, static_argnums=2)(60 battles, ..., {P})"
    expect_close(jit(fn, static_argnums=2)(pairs, outcomes, P), elo_loop(pairs, outcomes, P),
                 what + " (n_players static; the battles traced: no Python loop over their "
                 "values)", atol=2e-2)

    orders = np.stack([rng.permutation(len(pairs)) for _ in range(3)])
    what = f"jax.vmap(elo_ratings, in_axes=(0, 0, None))(3 orders of the 60 battles, ..., {P})"
    out = expect_shape(vmap(fn, in_axes=(0, 0, None))(pairs[orders], outcomes[orders], P),
                       (3, P), what)
    expect_close(out, np.stack([elo_loop(pairs[o], outcomes[o], P) for o in orders]),
                 what + " (one row of ratings per order)", atol=2e-2)


# ----------------------------------------------------------------------------------------------
# 16.8 maj@k (book §16.1, majority voting)


def _vote(block):
    """The most common non-None answer of ``block``, the first seen among ties; None if none."""
    counts, first = {}, {}
    for i, a in enumerate(block):
        if a is not None:
            counts[a] = counts.get(a, 0) + 1
            first.setdefault(a, i)
    if not counts:
        return None
    best = max(counts.values())
    return min((a for a in counts if counts[a] == best), key=first.__getitem__)


def _maj_oracle(answers, gold, k):
    n = min(len(a) for a in answers)
    blocks = n // k
    return np.array([sum(_vote(list(a)[b * k:(b + 1) * k]) == g for a, g in zip(answers, gold))
                     / len(gold) for b in range(blocks)])


def maj_at_k(fn):
    what = "maj_at_k([[9, 9, 8]], [9], 3)"
    expect_close(expect_shape(fn([[9, 9, 8]], [9], 3), (1,), what), [1.0],
                 what + " (9 is the majority of the three samples)", atol=0)
    cases = [
        ([[8, 9, 9, 8]], [8], 4, "a tie goes to the answer seen first, 8"),
        ([[None, None, 7]], [7], 3, "None abstains: 7 is the only vote"),
        ([[None, None]], [7], 2, "no answer at all is wrong"),
        ([[1, 2, 3, 3, 1, 1]], [1], 3,
         "blocks [1, 2, 3] (a three-way tie: 1, seen first) and [3, 1, 1]: both right"),
        ([["a", "b", "b"], ["c", "c", "a"]], ["b", "a"], 3, "strings; averaged over questions"),
        ([[1, 1, 2, 2, 2]], [2], 2, "blocks [1, 1] and [2, 2]; the fifth sample unused"),
    ]
    for answers, gold, k, why in cases:
        w = f"maj_at_k({answers}, {gold}, {k})"
        expect_close(expect_shape(fn(answers, gold, k), (len(answers[0]) // k,), w),
                     _maj_oracle(answers, gold, k), w + f" ({why})", atol=1e-12)
    rng = np.random.default_rng(0)
    answers = [[None if rng.random() < 0.2 else int(rng.integers(4)) for _ in range(12)]
               for _ in range(30)]
    gold = [int(rng.integers(4)) for _ in range(30)]
    for k in (1, 2, 3, 4, 6, 12):
        w = f"maj_at_k(30 questions x 12 random answers in 0..3 or None, k = {k})"
        expect_close(expect_shape(fn(answers, gold, k), (12 // k,), w),
                     _maj_oracle(answers, gold, k), w + " (a plain Python vote per block)",
                     atol=1e-12)
