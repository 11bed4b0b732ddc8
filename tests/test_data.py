"""Tests of the synthetic world (rlhf_book.data).

Expected values come from outside the implementation: the lecture notes' derived numbers
(the lesson pairs' byte lengths), hand computation from the documented gold-reward formula,
closed-form probabilities of the Bradley-Terry / logistic model, and Monte-Carlo estimates
compared within 4 standard errors.
"""

from __future__ import annotations

import ast
import math
import pathlib
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf_book.data import (DEMONSTRATOR_STYLES, FACT_TOPICS, GOLD_MAX, GOLD_MIN,
                            LESSON_EVAL_PROMPTS, LESSON_PREFERENCE_PAIRS, LESSON_QUANTUM_PAIR,
                            STYLES, TOPICS, TRAIN_TEMPLATES, UNBIASED, AnnotatorBias,
                            ArithmeticProblem, Question, all_facts, all_questions,
                            annotator_utility, answer_vocabulary, arithmetic_problems,
                            bt_accuracy_ceiling, count_confident, extract_answer, fact_questions,
                            gold_reward, gold_reward_batch, inter_annotator_agreement,
                            label_accuracy_ceiling, likert_ratings, majority_probability,
                            preference_pairs, pretraining_corpus, question_splits,
                            render_answer, sample_questions, scratchpad, sft_demonstrations,
                            simulate_annotators, split_facts, split_questions, stated_answer,
                            sum_demonstrations, two_digit_sums, verify)
from rlhf_book.data.styles import _CLOSERS, _OPENERS, OFF_TOPIC_SENTENCES

DATA_DIR = pathlib.Path(__file__).resolve().parents[1] / "rlhf_book" / "data"
CONTEXT = 128


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def within_4_se(estimate: float, p: float, n: int) -> bool:
    se = math.sqrt(p * (1 - p) / n)
    return abs(estimate - p) <= 4 * se + 1e-12


def is_ascii(text: str) -> bool:
    return all(ord(c) < 128 for c in text)


FRANCE = Question("capital", "What is the capital of France?", "Paris", "France")
SUM = Question("arithmetic", "What is 3 + 4?", "7", "3 + 4")


# --------------------------------------------------------------------------- the package's shape

def test_data_imports_neither_jax_nor_lm():
    """Data flows data -> lm -> chapters: no module here may import jax or rlhf_book.lm."""
    for path in DATA_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert not name.startswith(("jax", "flax", "optax")), (path.name, name)
                ours = name.startswith("rlhf_book.")
                assert not ours or name.startswith("rlhf_book.data"), (path.name, name)


def test_world_sizes_match_the_docstring():
    facts = all_facts()
    counts = {t: sum(f.topic == t for f in facts) for t in TOPICS}
    assert counts == {"capital": 28, "animal": 19, "color": 15, "opposite": 20,
                      "arithmetic": 9 * 9}
    questions = all_questions()
    assert len(questions) == 12 * len(facts)
    assert len({q.prompt for q in questions}) == len(questions)  # no prompt asks two facts


def test_answer_words_are_unambiguous_across_topics_and_padding():
    """A stated answer is read as the last answer word of a topic: no answer word of one topic
    occurs in another topic's answers, and none in the padding and off-topic sentences, so
    padding never changes (or supplies) the stated answer."""
    filler = " ".join(_OPENERS + _CLOSERS + OFF_TOPIC_SENTENCES)
    for topic in FACT_TOPICS:
        for text in [filler] + [f.answer for f in all_facts()
                                if f.topic not in (topic, "arithmetic")]:
            assert stated_answer(Question(topic, "", answer_vocabulary(topic)[0]), text) is None, \
                (topic, text)


def test_opposites_are_symmetric_and_their_statements_end_with_the_answer():
    opposites = {f.subject: f.answer for f in all_facts() if f.topic == "opposite"}
    assert all(opposites[b] == a for a, b in opposites.items())
    for f in all_facts():
        if f.topic == "opposite":
            for sentence in ("The opposite of {s} is {a}.", "{S} and {a} are opposites."):
                text = sentence.format(s=f.subject, S=f.subject.capitalize(), a=f.answer)
                assert stated_answer(Question("opposite", "", f.answer, f.subject), text) == f.answer


def test_arithmetic_facts_are_true():
    for f in all_facts():
        if f.topic == "arithmetic":
            a, op, b = f.subject.split()
            assert op == "+" and int(f.answer) == int(a) + int(b)


# --------------------------------------------------------------------------- determinism

GENERATORS = {
    "split": lambda s: split_questions(seed=s),
    "corpus": lambda s: pretraining_corpus(seed=s, n_documents=200),
    "sft": lambda s: sft_demonstrations(seed=s, n=100),
    "pairs": lambda s: preference_pairs(seed=s, n=100),
    "arithmetic": lambda s: arithmetic_problems(seed=s, n=100),
    "render": lambda s: [render_answer(q, st_, np.random.default_rng(s))
                         for q in all_questions()[::25] for st_ in STYLES],
    "annotators": lambda s: simulate_annotators(np.zeros(50), np.full(50, 0.3), 5, 1.0,
                                                np.random.default_rng(s)).tolist(),
    "likert": lambda s: likert_ratings(np.zeros(50), np.full(50, 0.3), 1.0,
                                       np.random.default_rng(s), n_points=8).tolist(),
}


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_same_seed_same_output_different_seed_different_output(name):
    make = GENERATORS[name]
    assert make(0) == make(0)
    assert make(0) != make(1)


def test_default_split_is_shared_by_every_generator():
    """The generators' seeds change the sampling, never the held-out split."""
    _, heldout = split_questions()
    held = {q.prompt for q in heldout}
    for seed in (0, 1, 2):
        prompts = {c[-2]["content"] for c in sft_demonstrations(seed=seed, n=500)}
        assert not prompts & held


# --------------------------------------------------------------------------- text limits

def test_prompts_are_ascii_and_at_most_48_bytes():
    for q in all_questions():
        assert is_ascii(q.prompt) and len(q.prompt.encode()) <= 48, q.prompt


def test_answers_are_ascii_and_at_most_72_bytes():
    for seed in range(3):
        rng = np.random.default_rng(seed)
        for q in all_questions():
            for style in STYLES:
                a = render_answer(q, style, rng)
                assert a and is_ascii(a) and len(a.encode()) <= 72, (style, a)


def test_corpus_documents_are_ascii_and_short():
    docs = pretraining_corpus(seed=3, n_documents=1000)
    assert len(docs) == 1000
    assert all(d and is_ascii(d) and len(d.encode()) <= 200 for d in docs)


def test_sft_conversations_fit_the_context():
    # <|bos|> + (role header + content + <|end|>) per turn: at most 7 special tokens for 3 turns.
    for conv in sft_demonstrations(seed=0, n=2000, system_prob=0.5):
        roles = [m["role"] for m in conv]
        assert roles in (["user", "assistant"], ["system", "user", "assistant"])
        assert all(is_ascii(m["content"]) for m in conv)
        assert sum(len(m["content"].encode()) for m in conv) + 1 + 2 * len(conv) <= CONTEXT


def test_preference_pairs_fit_the_context():
    for p in preference_pairs(seed=0, n=500) + preference_pairs(seed=0, n=2000,
                                                                correctness_fraction=1.0):
        assert is_ascii(p.prompt + p.chosen + p.rejected)
        longest = max(len(p.chosen.encode()), len(p.rejected.encode()))
        assert len(p.prompt.encode()) + longest + 5 <= CONTEXT


# --------------------------------------------------------------------------- held-out facts

def test_split_is_by_fact_and_stratified():
    train, heldout = split_questions(seed=0, heldout_fraction=0.2)
    assert len(train) + len(heldout) == len(all_questions()) - 8 * len(
        {(q.topic, q.subject) for q in train})  # the rest are the rephrased questions
    train_facts = {(q.topic, q.subject) for q in train}
    held_facts = {(q.topic, q.subject) for q in heldout}
    assert not train_facts & held_facts
    # every template of a held-out fact is held out: 12 questions per held-out fact
    assert len(heldout) == 12 * len(held_facts)
    facts = all_facts()
    for topic in TOPICS:
        n_topic = sum(f.topic == topic for f in facts)
        n_held = sum(t == topic for t, _ in held_facts)
        assert abs(n_held - 0.2 * n_topic) <= 0.5, topic
    assert split_questions(seed=1) != split_questions(seed=0)


def test_three_question_sets_partition_the_world():
    splits = question_splits(seed=0)
    assert sorted(map(len, splits)) and sum(map(len, splits)) == len(all_questions())
    train_facts = {(q.topic, q.subject) for q in splits.train}
    assert {(q.topic, q.subject) for q in splits.rephrased} == train_facts
    assert not train_facts & {(q.topic, q.subject) for q in splits.unseen}
    assert all(q.template < TRAIN_TEMPLATES and not q.rephrased for q in splits.train)
    assert all(q.template >= TRAIN_TEMPLATES and q.rephrased for q in splits.rephrased)
    assert len(splits.rephrased) == 2 * len(splits.train)  # 8 new phrasings to 4 trained
    # the main evaluation's size: 65 trained facts of the four fact topics x 8 phrasings
    assert len(fact_questions(splits.rephrased)) == 520
    assert {q.topic for q in fact_questions(splits.unseen)} == set(FACT_TOPICS)


def test_no_training_data_contains_a_rephrased_or_unseen_question():
    splits = question_splits()
    new = {q.prompt for q in splits.rephrased + splits.unseen}
    assert not {c[-2]["content"] for c in sft_demonstrations(seed=0, n=3000)} & new
    assert not {p.prompt for p in preference_pairs(seed=0, n=2000, correctness_fraction=0.5)} & new
    corpus = "\n".join(pretraining_corpus(seed=0))
    assert not [p for p in new if p in corpus]
    # while every trained phrasing is asked somewhere in the corpus's Q/A snippets
    asked = sum(q.prompt in corpus for q in splits.train)
    assert asked > 0.9 * len(splits.train), (asked, len(splits.train))


def test_split_facts_matches_split_questions():
    train_f, held_f = split_facts(seed=4, heldout_fraction=0.3)
    _, held_q = split_questions(seed=4, heldout_fraction=0.3)
    assert {(f.topic, f.subject) for f in held_f} == {(q.topic, q.subject) for q in held_q}
    assert not set(train_f) & set(held_f)


def test_heldout_facts_never_in_sft_or_default_preference_pairs():
    train, heldout = split_questions()
    held = {(q.topic, q.subject) for q in heldout}
    prompt_to_fact = {q.prompt: (q.topic, q.subject) for q in all_questions()}
    for conv in sft_demonstrations(seed=0, n=3000):
        assert prompt_to_fact[conv[-2]["content"]] not in held
    for p in preference_pairs(seed=0, n=1000):
        assert (p.question.topic, p.question.subject) not in held


def test_corpus_states_heldout_facts_but_never_asks_them():
    docs = pretraining_corpus(seed=0)
    text = "\n".join(docs)
    _, heldout = split_questions()
    assert not any(q.prompt in text for q in heldout)
    # the documented decision: held-out capitals are still stated as facts
    held_capitals = {q.answer for q in heldout if q.topic == "capital"}
    assert held_capitals and all(c in text for c in held_capitals)


# --------------------------------------------------------------------------- gold reward

@pytest.mark.parametrize("response, expected", [
    ("The capital of France is Paris.", 1.0),             # correct, 31 bytes, no hedges
    ("paris", 1.0),                                        # case-insensitive
    ("The capital of France is Berlin.", -1.0),           # wrong answer of the same kind
    ("Paris? No, Berlin.", -1.0),                         # the last stated answer counts
    ("", -0.5),                                            # nothing stated
    ("The capital of France is Lyon.", -0.5),              # Lyon is not a capital in this world
    ("I think it is Paris, but I am not sure.", 0.5),      # 2 hedges, 39 bytes
    ("Maybe perhaps probably possibly Paris.", 0.25),      # 4 hedges, capped at 3
    ("x" * 73, -0.5 - 0.5),                                # 25 bytes over 48, 0.02 a byte
    ("x" * 100, -0.5 - 1.0),                               # 52 bytes over: capped at 1
    ("It is definitely Paris.", 1.0),                      # confidence is not rewarded
])
def test_gold_reward_hand_computed(response, expected):
    assert gold_reward(FRANCE, response) == pytest.approx(expected)


@pytest.mark.parametrize("response, expected", [
    ("3 + 4 = 7.", 1.0), ("7", 1.0), ("3 + 4 = 8.", -1.0), ("7 is 3 + 4", -1.0), ("seven", -0.5),
])
def test_gold_reward_arithmetic_reads_the_last_integer(response, expected):
    assert gold_reward(SUM, response) == pytest.approx(expected)


def test_gold_reward_style_means_are_ordered():
    rng = np.random.default_rng(0)
    questions = sample_questions(all_questions(), 2000, rng)
    means = {s: np.mean([gold_reward(q, render_answer(q, s, rng)) for q in questions]) for s in STYLES}
    ordered = [means[s] for s in ("concise_correct", "verbose", "hedging", "off_topic", "wrong")]
    assert ordered == sorted(ordered, reverse=True) and len(set(ordered)) == 5
    # each style does what its name says, on every question
    for q in all_questions():
        assert gold_reward(q, render_answer(q, "concise_correct", rng)) == 1.0
        assert gold_reward(q, render_answer(q, "wrong", rng)) <= -1.0
        assert gold_reward(q, render_answer(q, "off_topic", rng)) <= -0.5
        assert 0.0 < gold_reward(q, render_answer(q, "verbose", rng)) < 1.0 + 1e-12


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_gold_reward_is_finite_and_bounded_on_any_text(text):
    for q in (FRANCE, SUM, all_questions()[100]):
        g = gold_reward(q, text)
        assert math.isfinite(g) and GOLD_MIN <= g <= GOLD_MAX


def test_gold_reward_on_garbage_bytes():
    rng = np.random.default_rng(0)
    for _ in range(50):
        text = bytes(rng.integers(0, 256, size=128).tolist()).decode("utf-8", errors="replace")
        g = gold_reward(FRANCE, text)
        assert math.isfinite(g) and GOLD_MIN <= g <= GOLD_MAX


def test_gold_reward_batch():
    qs = [FRANCE, SUM, FRANCE]
    rs = ["Paris.", "8", ""]
    np.testing.assert_allclose(gold_reward_batch(qs, rs), [1.0, -1.0, -0.5])
    with pytest.raises(ValueError, match="same length"):
        gold_reward_batch(qs, rs[:2])


# --------------------------------------------------------------------------- the lesson's toy data

def test_lesson_pairs_byte_lengths_match_the_reference_table():
    expected = [(30, 31, 109), (32, 71, 68), (19, 18, 116),
                (33, 29, 105), (31, 27, 123), (24, 126, 109)]
    got = [tuple(len(p[k].encode()) for k in ("prompt", "preferred", "rejected"))
           for p in LESSON_PREFERENCE_PAIRS]
    assert got == expected


def test_lesson_pairs_shorter_wins_on_four_of_six():
    """The numpy lesson's "shorter is better" scores 4/6 (pairs 2 and 6 prefer the longer answer)."""
    wins = [len(p["preferred"]) < len(p["rejected"]) for p in LESSON_PREFERENCE_PAIRS]
    assert wins == [True, False, True, True, True, False]


def test_lesson_quantum_pair_and_eval_prompts():
    assert LESSON_EVAL_PROMPTS == ("What is the capital of France?", "Explain gravity.",
                                   "Name three programming languages.")
    assert LESSON_QUANTUM_PAIR["prompt"] == "Explain quantum computing"
    assert LESSON_QUANTUM_PAIR["preferred"].startswith("Quantum computing uses qubits")
    assert LESSON_QUANTUM_PAIR["rejected"].endswith("claimed by Google in 2019.")
    texts = [v for p in LESSON_PREFERENCE_PAIRS + (LESSON_QUANTUM_PAIR,) for v in p.values()]
    assert all(is_ascii(t) for t in texts)


# --------------------------------------------------------------------------- simulated annotators

def test_noiseless_annotators_pick_the_higher_gold():
    rng = np.random.default_rng(0)
    gold_a = rng.normal(size=2000)
    gold_b = gold_a + rng.choice([-1, 1], size=2000) * rng.uniform(1e-3, 2.0, size=2000)
    votes = simulate_annotators(gold_a, gold_b, 7, 1e-6, rng)
    assert votes.shape == (2000, 7)
    np.testing.assert_array_equal(votes, np.repeat((gold_a > gold_b)[:, None], 7, axis=1))
    assert inter_annotator_agreement(votes) == 1.0


@pytest.mark.parametrize("delta, noise",
                         [(0.0, 1.0), (0.5, 1.0), (-1.0, 0.5), (2.0, 0.5), (0.3, 3.0)])
def test_annotator_probability_is_bradley_terry(delta, noise):
    n = 40_000
    votes = simulate_annotators(delta, 0.0, n, noise, np.random.default_rng(1))
    assert votes.shape == (n,)
    assert within_4_se(votes.mean(), sigmoid(delta / noise), n)


def test_agreement_matches_p_squared_and_falls_with_noise():
    rng = np.random.default_rng(2)
    gold_a = rng.uniform(-1, 1, size=4000)
    gold_b = rng.uniform(-1, 1, size=4000)
    agreements = []
    for noise in (0.05, 0.3, 1.0, 5.0):
        votes = simulate_annotators(gold_a, gold_b, 4, noise, rng)
        observed = inter_annotator_agreement(votes)
        p = np.array([sigmoid(d / noise) for d in gold_a - gold_b])
        expected = np.mean(p ** 2 + (1 - p) ** 2)
        # each item's agreement is an average of 6 dependent pair indicators in [0, 1]:
        # its variance is at most 1/4, so 4 SE of the mean over items is at most 4 * 0.5 / sqrt(N).
        assert abs(observed - expected) <= 4 * 0.5 / math.sqrt(len(p))
        agreements.append(observed)
    assert agreements == sorted(agreements, reverse=True)
    assert agreements[-1] < 0.6  # very noisy annotators barely agree beyond chance (0.5)


def test_agreement_hand_example():
    # item 1: all agree -> 1; item 2: votes (1, 1, 0) -> 1 of 3 annotator pairs agree
    assert inter_annotator_agreement([[1, 1, 1], [1, 1, 0]]) == pytest.approx((1 + 1 / 3) / 2)


def test_accuracy_ceiling_matches_monte_carlo():
    rng = np.random.default_rng(3)
    gold_a = rng.uniform(-1, 1, size=20_000)
    gold_b = rng.uniform(-1, 1, size=20_000)
    noise = 0.4
    ceiling = bt_accuracy_ceiling(gold_a, gold_b, noise)
    # the Bayes predictor picks the higher gold; score it against one simulated annotator
    label = simulate_annotators(gold_a, gold_b, 1, noise, rng)[:, 0]
    accuracy = np.mean(label == (gold_a > gold_b))
    assert within_4_se(accuracy, ceiling, len(label))
    # and by hand: equal golds give 0.5, a gap of noise * log(3) gives 0.75
    assert bt_accuracy_ceiling(0.3, 0.3, 1.0) == pytest.approx(0.5)
    assert bt_accuracy_ceiling(0.0, math.log(3) * 0.7, 0.7) == pytest.approx(0.75)


@pytest.mark.parametrize("n_annotators", [1, 2, 3, 4, 5])
def test_majority_probability_matches_simulated_panels(n_annotators):
    rng = np.random.default_rng(n_annotators)
    gold_a, gold_b = rng.uniform(-1, 1, size=20_000), rng.uniform(-1, 1, size=20_000)
    votes = simulate_annotators(gold_a, gold_b, n_annotators, 0.5, rng)
    k = votes.sum(axis=1)
    # the panel's label, with a coin for ties as preference_pairs does
    label_a = (2 * k > n_annotators) | ((2 * k == n_annotators) & (rng.random(len(k)) < 0.5))
    q = majority_probability([sigmoid(d / 0.5) for d in gold_a - gold_b], n_annotators)
    assert within_4_se(label_a.mean(), q.mean(), len(k))
    ceiling = bt_accuracy_ceiling(gold_a, gold_b, 0.5, n_annotators)
    assert within_4_se(np.mean(label_a == (gold_a > gold_b)), ceiling, len(k))


def test_majority_probability_by_hand():
    # three annotators at p: p^3 + 3 p^2 (1 - p); two: p^2 + half of 2 p (1 - p) = p
    assert majority_probability(0.8, 3) == pytest.approx(0.8**3 + 3 * 0.8**2 * 0.2)
    assert majority_probability(0.8, 2) == pytest.approx(0.8)
    assert majority_probability(0.5, 7) == pytest.approx(0.5)
    # a larger panel is a better judge: the ceiling grows with n (odd n)
    c = [bt_accuracy_ceiling(0.3, 0.0, 0.5, n) for n in (1, 3, 5)]
    assert c[0] < c[1] < c[2]


def test_preference_pairs_follow_the_majority():
    for p in preference_pairs(seed=0, n=500, n_annotators=3, noise=0.5):
        assert len(p.votes) == 3 and sum(p.votes) >= 2  # odd panel: no ties
        assert p.p_chosen == pytest.approx(sum(p.votes) / 3)
        assert p.p_true == pytest.approx(sigmoid((p.gold_chosen - p.gold_rejected) / 0.5))
        assert p.style_chosen != p.style_rejected
        assert p.gold_chosen == gold_reward(p.question, p.chosen)
        assert p.gold_rejected == gold_reward(p.question, p.rejected)
        assert p.topic == p.question.topic and p.prompt == p.question.prompt
    for p in preference_pairs(seed=0, n=300, n_annotators=4):
        assert sum(p.votes) >= 2  # ties (2 of 4) are allowed, minorities are not


def test_single_annotator_labels_are_right_at_the_ceiling_rate():
    pairs = [p for p in preference_pairs(seed=5, n=4000, n_annotators=1, noise=0.5)
             if p.gold_chosen != p.gold_rejected]
    correct = np.mean([p.gold_chosen > p.gold_rejected for p in pairs])
    ceiling = bt_accuracy_ceiling([p.gold_chosen for p in pairs],
                                  [p.gold_rejected for p in pairs], 0.5)
    assert within_4_se(correct, ceiling, len(pairs))


def test_position_bias_shifts_the_logit_of_the_first_shown(delta=0.3, noise=0.5, position=0.4):
    n = 40_000
    votes = simulate_annotators(delta, 0.0, n, noise, np.random.default_rng(11), position)
    assert within_4_se(votes.mean(), sigmoid(delta / noise + position), n)


def test_annotator_utility_adds_the_documented_biases():
    bias = AnnotatorBias(verbosity=0.01, confidence=0.3, position=0.0)
    text = "It is definitely Paris, for sure."   # 33 bytes, two confident phrases
    assert count_confident(text) == 2
    assert annotator_utility(FRANCE, text, bias) == pytest.approx(1.0 + 0.33 + 0.6)
    assert annotator_utility(FRANCE, text, UNBIASED) == gold_reward(FRANCE, text) == 1.0


def test_default_biases_prefer_a_padded_answer_that_gold_ranks_lower():
    """The verbosity bias the defaults document: most annotators prefer a padded correct answer
    to a concise one, though its gold reward is lower (book ch. 11 and 14)."""
    padded = "Great question! The capital of France is Paris. I hope this helps!"  # 66 bytes
    concise = "The capital of France is Paris."
    bias = AnnotatorBias()
    assert gold_reward(FRANCE, padded) < gold_reward(FRANCE, concise)
    gap = annotator_utility(FRANCE, padded, bias) - annotator_utility(FRANCE, concise, bias)
    assert 0.5 < sigmoid(gap / 0.5) < 0.7


def without_last(text: str, word: str) -> str:
    at = text.lower().rfind(word.lower())
    return text[:at] + text[at + len(word):]


def test_correctness_pairs_differ_only_in_the_answer():
    pairs = preference_pairs(seed=3, n=400, correctness_fraction=1.0, bias=AnnotatorBias())
    assert {p.kind for p in pairs} == {"correctness"}
    for p in pairs:
        right, wrong = ((p.chosen, p.rejected) if p.gold_chosen > p.gold_rejected
                        else (p.rejected, p.chosen))
        assert stated_answer(p.question, right) == p.question.answer
        assert stated_answer(p.question, wrong) not in (None, p.question.answer)
        # the same template: cutting the last statement of each answer leaves the same text
        assert without_last(right, p.question.answer) == without_last(
            wrong, stated_answer(p.question, wrong)), (right, wrong)
    style = preference_pairs(seed=3, n=400, correctness_fraction=0.0)
    assert {p.kind for p in style} == {"style"}
    mixed = preference_pairs(seed=3, n=2000, correctness_fraction=0.75)
    assert within_4_se(np.mean([p.kind == "correctness" for p in mixed]), 0.75, 2000)


def test_biased_pairs_record_the_probability_their_annotators_used():
    """``p_true`` is the annotators' probability of the chosen response, biases and position
    included: one annotator's labels agree with the higher-``p_true`` response at the rate
    :func:`label_accuracy_ceiling` computes."""
    pairs = preference_pairs(seed=6, n=4000, n_annotators=1, bias=AnnotatorBias(),
                             correctness_fraction=0.5)
    p = np.array([x.p_true for x in pairs])
    assert within_4_se(np.mean(p > 0.5), label_accuracy_ceiling(p, 1), len(p))
    # unbiased pairs: p_true is the Bradley-Terry probability of the gold rewards
    for x in preference_pairs(seed=6, n=50):
        assert x.p_true == pytest.approx(sigmoid((x.gold_chosen - x.gold_rejected) / 0.5))


def test_demonstrators_write_in_the_documented_shares():
    rng = np.random.default_rng(0)
    questions = question_splits().train
    by_prompt = {q.prompt: q for q in questions}
    conversations = sft_demonstrations(seed=0, n=4000)
    answers = [(by_prompt[c[-2]["content"]], c[-1]["content"]) for c in conversations]
    right = np.mean([gold_reward(q, a) > 0 for q, a in answers])
    expected = sum(w for s, w in DEMONSTRATOR_STYLES.items() if s in ("concise_correct",
                                                                      "verbose", "hedging"))
    assert within_4_se(right, expected, len(answers))
    assert within_4_se(np.mean([gold_reward(q, a) == 1.0 for q, a in answers]),
                       DEMONSTRATOR_STYLES["concise_correct"], len(answers))
    perfect = sft_demonstrations(seed=0, n=300, styles={"concise_correct": 1.0})
    assert all(gold_reward(by_prompt[c[-2]["content"]], c[-1]["content"]) == 1.0
               for c in perfect)
    del rng


# --------------------------------------------------------------------------- Likert ratings

@pytest.mark.parametrize("delta", [-1.0, 0.0, 0.7])
def test_eight_point_likert_reduces_to_bradley_terry(delta):
    n, noise = 40_000, 0.5
    r = likert_ratings(delta, 0.0, noise, np.random.default_rng(4), n_points=8, n_annotators=n)
    assert r.shape == (n,) and r.min() >= 1 and r.max() <= 8
    # an even scale has no tie: ratings 1..4 say "A is better"
    assert within_4_se(np.mean(r <= 4), sigmoid(delta / noise), n)


@pytest.mark.parametrize("delta", [0.0, 0.6])
def test_five_point_likert_tie_probability(delta):
    # the tie bin is |z| <= 0.5 logits, z = delta/noise + Logistic(0, 1); the logistic CDF is sigmoid
    n, noise = 40_000, 1.0
    r = likert_ratings(delta, 0.0, noise, np.random.default_rng(5), n_points=5, n_annotators=n)
    mu = delta / noise
    assert within_4_se(np.mean(r == 3), sigmoid(0.5 - mu) - sigmoid(-0.5 - mu), n)
    assert within_4_se(np.mean(r <= 2), 1 - sigmoid(0.5 - mu), n)


def test_likert_swap_symmetry_in_distribution():
    """Swapping A and B maps a rating s to K + 1 - s (book ch. 11, tables 3-4)."""
    n = 40_000
    r_ab = likert_ratings(0.8, 0.0, 0.5, np.random.default_rng(6), n_points=5, n_annotators=n)
    r_ba = likert_ratings(0.0, 0.8, 0.5, np.random.default_rng(7), n_points=5, n_annotators=n)
    for s in range(1, 6):
        p = np.mean(r_ab == s)
        q = np.mean(6 - r_ba == s)
        assert abs(p - q) <= 4 * math.sqrt(2 * max(p, 1e-3) / n)


def test_noiseless_likert_is_extreme_and_monotone():
    rng = np.random.default_rng(8)
    r = likert_ratings([1.0, -1.0], [0.0, 0.0], 1e-6, rng, n_points=8, n_annotators=3)
    np.testing.assert_array_equal(r, [[1, 1, 1], [8, 8, 8]])
    # a larger advantage for A never raises the average rating (A-better is low)
    means = [likert_ratings(d, 0.0, 1.0, np.random.default_rng(9), 5, 20_000).mean()
             for d in (-2, 0, 2)]
    assert means[0] > means[1] > means[2]


# --------------------------------------------------------------------------- arithmetic (RLVR)

@pytest.mark.parametrize("text, expected", [
    ("The answer is 42.", 42), ("", None), ("no numbers here", None), ("It is -5.", -5),
    ("3 - 4 = -1", -1), ("3-4", 4), ("12 apples and 7 pears", 7), ("x = 0", 0),
    ("#### 1000", 1000), ("answer:-17", -17),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@settings(max_examples=200, deadline=None)
@given(st.integers(-10**9, 10**9), st.text(alphabet="abc .,!?", max_size=20))
def test_extract_answer_reads_a_trailing_integer(n, prefix):
    assert extract_answer(f"{prefix} The answer is {n}.") == n


def test_verify():
    p = ArithmeticProblem("What is 6 * 7?", 42)
    assert verify(p, "6 * 7 = 42") == 1.0
    assert verify(p, "42.0") == 0.0  # the last integer is 0
    assert verify(p, "41") == 0.0
    assert verify(p, "") == 0.0
    assert verify(p, "\x00\xff garbage") == 0.0
    assert verify(ArithmeticProblem("What is 3 - 5?", -2), "The answer is -2.") == 1.0


def test_arithmetic_problems_are_correct_and_fit():
    problems = arithmetic_problems(seed=0, n=2000, max_operand=20)
    seen_ops = set()
    for p in problems:
        a, op, b = re.search(r"(\d+) ([-+*]) (\d+)", p.prompt).groups()
        seen_ops.add(op)
        expected = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        assert p.answer == expected and 0 <= int(a) <= 20 and 0 <= int(b) <= 20
        assert is_ascii(p.prompt) and len(p.prompt) <= 48
    assert seen_ops == {"+", "-", "*"}
    assert any(p.answer < 0 for p in problems)
    assert all(len(p.prompt) <= 48 for p in arithmetic_problems(n=200, max_operand=10**6))
    assert all(p.answer >= 0 for p in arithmetic_problems(n=200, ops=("+", "*")))



def _column_addition(a: int, b: int) -> list[tuple[list[int], int]]:
    """Column addition done independently: ``[(terms, total), ...]`` for the ones, then the
    tens column (with a carry term when the ones overflow)."""
    ones = [a % 10, b % 10]
    tens = [a // 10, b // 10] + ([1] if sum(ones) >= 10 else [])
    return [(ones, sum(ones)), (tens, sum(tens))]


def test_two_digit_sums_split_every_pair_once():
    train, heldout = two_digit_sums(seed=0)
    assert (len(train), len(heldout)) == (6480, 1620)  # 90 x 90 pairs, a fifth held out
    subjects = [q.subject for q in train + heldout]
    assert len(set(subjects)) == 8100
    assert {tuple(map(int, s.split(" + "))) for s in subjects} == \
        {(a, b) for a in range(10, 100) for b in range(10, 100)}
    for q in train[:50] + heldout[:50]:
        a, b = map(int, q.subject.split(" + "))
        assert q.prompt == f"What is {a} + {b}?" and q.answer == str(a + b)
        assert q.topic == "arithmetic" and len(q.prompt) <= 48
    assert [q.subject for q in two_digit_sums(seed=0)[1]] == [q.subject for q in heldout]
    assert [q.subject for q in two_digit_sums(seed=1)[1]] != [q.subject for q in heldout]


def test_scratchpad_is_column_addition_for_every_pair():
    step = re.compile(r"^(\d+(?: \+ \d+)+) = (\d+)$")
    for a in range(10, 100):
        for b in range(10, 100):
            text = scratchpad(a, b)
            work, answer = text.split(". The answer is ")
            assert answer == f"{a + b}."
            written = [step.match(s).groups() for s in work.split(", ")]
            assert [([int(t) for t in lhs.split(" + ")], int(rhs)) for lhs, rhs in written] == \
                _column_addition(a, b)
            assert len(text) + 1 <= 48  # the reply and its end token fit 48 new tokens
    assert scratchpad(47, 38) == "7 + 8 = 15, 4 + 3 + 1 = 8. The answer is 85."


def test_sum_demonstrations_mix_styles_in_the_documented_shares():
    train, heldout = two_digit_sums()
    n, table_share, scratch_share = 4000, 0.3, 0.5
    demos = sum_demonstrations(train, seed=0, n=n, table_share=table_share,
                               scratchpad_share=scratch_share)
    heldout_prompts = {q.prompt for q in heldout}
    kinds = []
    for user, assistant in demos:
        assert (user["role"], assistant["role"]) == ("user", "assistant")
        assert user["content"] not in heldout_prompts
        a, b = map(int, re.fullmatch(r"What is (\d+) \+ (\d+)\?", user["content"]).groups())
        if a < 10:  # a rehearsed one-digit step
            assert assistant["content"] == f"{a} + {b} = {a + b}. The answer is {a + b}."
            kinds.append("table")
        elif " = " in assistant["content"]:
            assert assistant["content"] == scratchpad(a, b)
            kinds.append("worked")
        else:
            assert assistant["content"] == f"The answer is {a + b}."
            kinds.append("direct")
    kinds = np.array(kinds)
    for kind, p in (("table", table_share), ("worked", (1 - table_share) * scratch_share),
                    ("direct", (1 - table_share) * (1 - scratch_share))):
        share = np.mean(kinds == kind)
        assert abs(share - p) < 4 * math.sqrt(p * (1 - p) / n), (kind, share, p)


@pytest.mark.parametrize("call, name", [
    (lambda: two_digit_sums(heldout_fraction=0.0), "heldout_fraction"),
    (lambda: scratchpad(9, 10), "a and b"),
    (lambda: scratchpad(10, 100), "a and b"),
    (lambda: sum_demonstrations([]), "questions"),
    (lambda: sum_demonstrations(two_digit_sums()[0], n=0), "n"),
    (lambda: sum_demonstrations(two_digit_sums()[0], scratchpad_share=1.5), "scratchpad_share"),
    (lambda: sum_demonstrations(two_digit_sums()[0], table_share=-0.1), "table_share"),
])
def test_two_digit_sum_bad_inputs(call, name):
    with pytest.raises(ValueError, match=name):
        call()


# --------------------------------------------------------------------------- argument validation

@pytest.mark.parametrize("call, name", [
    (lambda: simulate_annotators(0.0, 1.0, 3, 0.0, np.random.default_rng()), "noise"),
    (lambda: simulate_annotators(0.0, 1.0, 3, -1.0, np.random.default_rng()), "noise"),
    (lambda: simulate_annotators(0.0, 1.0, 3, float("nan"), np.random.default_rng()), "noise"),
    (lambda: simulate_annotators(0.0, 1.0, 0, 1.0, np.random.default_rng()), "n_annotators"),
    (lambda: simulate_annotators(0.0, 1.0, 3, 1.0, 42), "rng"),
    (lambda: preference_pairs(noise=0), "noise"),
    (lambda: preference_pairs(n_annotators=0), "n_annotators"),
    (lambda: preference_pairs(n=0), "n"),
    (lambda: preference_pairs(styles=("concise_correct", "rude")), "styles"),
    (lambda: preference_pairs(styles=("verbose",)), "styles"),
    (lambda: preference_pairs(styles=("verbose", "verbose", "wrong")), "styles"),
    (lambda: render_answer(FRANCE, "rude", np.random.default_rng()), "style"),
    (lambda: inter_annotator_agreement([[1], [0]]), "n_annotators"),
    (lambda: inter_annotator_agreement([1, 0, 1]), "votes"),
    (lambda: inter_annotator_agreement([[1, 2], [0, 1]]), "votes"),
    (lambda: bt_accuracy_ceiling(0.0, 1.0, 0.0), "noise"),
    (lambda: likert_ratings(0.0, 1.0, 1.0, np.random.default_rng(), n_points=1), "n_points"),
    (lambda: likert_ratings(0.0, 1.0, 1.0, np.random.default_rng(), 8, cutpoints=(2.0, 1.0, 3.0)),
     "cutpoints"),
    (lambda: likert_ratings(0.0, 1.0, 1.0, np.random.default_rng(), 5, cutpoints=(1.0,)),
     "cutpoints"),
    (lambda: likert_ratings(0.0, 1.0, -2.0, np.random.default_rng()), "noise"),
    (lambda: split_questions(heldout_fraction=1.0), "heldout_fraction"),
    (lambda: split_questions(heldout_fraction=-0.1), "heldout_fraction"),
    (lambda: sft_demonstrations(n=0), "n"),
    (lambda: sft_demonstrations(system_prob=1.5), "system_prob"),
    (lambda: sft_demonstrations(questions=[]), "questions"),
    (lambda: sft_demonstrations(styles={"concise_correct": 0.5}), "styles"),
    (lambda: sft_demonstrations(styles={"rude": 1.0}), "styles"),
    (lambda: preference_pairs(correctness_fraction=1.5), "correctness_fraction"),
    (lambda: preference_pairs(bias=0.3), "bias"),
    (lambda: pretraining_corpus(n_documents=0), "n_documents"),
    (lambda: arithmetic_problems(n=0), "n"),
    (lambda: arithmetic_problems(max_operand=0), "max_operand"),
    (lambda: arithmetic_problems(ops=("/",)), "ops"),
    (lambda: gold_reward(FRANCE, None), "response"),
    (lambda: extract_answer(42), "response"),
])
def test_bad_arguments_raise_value_error_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b.*got"):
        call()
