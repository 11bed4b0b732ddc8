"""The synthetic assistant world: deterministic data with a known "true human preference".

Everything is pure Python + NumPy, ASCII, offline, and a function of its ``seed``. A map:

* :mod:`~rlhf_book.data.world` -- the facts (28 capitals, 19 animal sounds, 15 thing colours,
  145 single-digit sums and products), three question templates per fact
  (:func:`all_questions`), and the train / held-out split *by fact* (:func:`split_questions`).
* :mod:`~rlhf_book.data.styles` -- five answer styles (:data:`STYLES`: concise_correct,
  verbose, hedging, wrong, off_topic) and the **gold reward** (:func:`gold_reward`): +1 for
  the correct answer, -1 for a wrong one, -0.5 for none, minus hedging and length penalties;
  in [-2.75, 1]. Mean gold by style: concise_correct > verbose > hedging > off_topic > wrong.
* :mod:`~rlhf_book.data.corpus` -- pretraining documents (:func:`pretraining_corpus`).
* :mod:`~rlhf_book.data.sft` -- chat demonstrations (:func:`sft_demonstrations`), train facts only.
* :mod:`~rlhf_book.data.preferences` -- pairs labelled by Bradley-Terry annotators
  (:func:`preference_pairs`, :func:`simulate_annotators`), Likert ratings, agreement and the
  accuracy ceiling any reward model faces.
* :mod:`~rlhf_book.data.arithmetic` -- verifiable arithmetic prompts for RLVR (:func:`verify`).
* :mod:`~rlhf_book.data.toy` -- the lectures' own toy data (preference pairs, a token policy), exactly.

Data flows one way: this package imports nothing from :mod:`rlhf_book.lm` or the chapters.
Texts and chat messages (``{"role", "content"}`` dicts) come out; tokenisation happens in
:mod:`rlhf_book.lm.tokenizer`. Size limits fit the mini GPT's 128-token context: prompts
<= 48 bytes, answers <= 72 bytes, documents <= 200 bytes.
"""

from rlhf_book.data.arithmetic import ArithmeticProblem, arithmetic_problems, extract_answer, verify
from rlhf_book.data.corpus import MAX_DOCUMENT_BYTES, pretraining_corpus
from rlhf_book.data.preferences import (PreferencePair, bt_accuracy_ceiling, inter_annotator_agreement,
                                        likert_cutpoints, likert_ratings, majority_probability,
                                        preference_pairs,
                                        simulate_annotators)
from rlhf_book.data.sft import SYSTEM_PROMPTS, sft_demonstrations
from rlhf_book.data.styles import (GOLD_MAX, GOLD_MIN, HEDGE_PHRASES, MAX_ANSWER_BYTES, STYLES,
                                   count_hedges, gold_reward, gold_reward_batch, render_answer,
                                   stated_answer)
from rlhf_book.data.toy import (LESSON_EVAL_PROMPTS, LESSON_PREFERENCE_PAIRS, LESSON_QUANTUM_PAIR,
                               LESSON_TOKEN_POLICY, LESSON_UNSEEN_PAIRS)
from rlhf_book.data.world import (MAX_PROMPT_BYTES, TOPICS, Fact, Question, all_facts, all_questions,
                                  answer_vocabulary, sample_questions, split_facts, split_questions)

__all__ = [
    "ArithmeticProblem", "arithmetic_problems", "extract_answer", "verify",
    "MAX_DOCUMENT_BYTES", "pretraining_corpus",
    "PreferencePair", "bt_accuracy_ceiling", "inter_annotator_agreement", "likert_cutpoints",
    "likert_ratings", "majority_probability", "preference_pairs", "simulate_annotators",
    "SYSTEM_PROMPTS", "sft_demonstrations",
    "GOLD_MAX", "GOLD_MIN", "HEDGE_PHRASES", "MAX_ANSWER_BYTES", "STYLES", "count_hedges",
    "gold_reward", "gold_reward_batch", "render_answer", "stated_answer",
    "LESSON_EVAL_PROMPTS", "LESSON_PREFERENCE_PAIRS", "LESSON_QUANTUM_PAIR", "LESSON_TOKEN_POLICY", "LESSON_UNSEEN_PAIRS",
    "MAX_PROMPT_BYTES", "TOPICS", "Fact", "Question", "all_facts", "all_questions",
    "answer_vocabulary", "sample_questions", "split_facts", "split_questions",
]
