"""The synthetic assistant world: deterministic data with a known "true human preference".

Everything is pure Python + NumPy, ASCII, offline, and a function of its ``seed``. A map:

* :mod:`~rlhf_book.data.world` -- the facts (28 capitals, 19 animal sounds, 15 thing colours,
  20 opposites, 81 single-digit sums), twelve question templates per topic
  (:func:`all_questions`) and three question sets (:func:`question_splits`): ``train``
  (training facts, four trained phrasings), ``rephrased`` (the same facts in eight phrasings no
  training data contains: the main evaluation) and ``unseen`` (held-out facts, stated only in
  the pretraining corpus).
* :mod:`~rlhf_book.data.styles` -- five answer styles (:data:`STYLES`: concise_correct,
  verbose, hedging, wrong, off_topic) and the **gold reward** (:func:`gold_reward`): +1 for
  the correct answer, -1 for a wrong one, -0.5 for none, minus hedging and length penalties;
  in [-2.75, 1]. Mean gold by style: concise_correct > verbose > hedging > off_topic > wrong.
* :mod:`~rlhf_book.data.corpus` -- pretraining documents (:func:`pretraining_corpus`).
* :mod:`~rlhf_book.data.sft` -- chat demonstrations (:func:`sft_demonstrations`) by
  demonstrators of mixed quality (:data:`DEMONSTRATOR_STYLES`: half concise and correct, the
  rest verbose, hedging, wrong or off topic), training questions only.
* :mod:`~rlhf_book.data.preferences` -- pairs labelled by Bradley-Terry annotators with
  documented verbosity, confidence and position biases (:class:`AnnotatorBias`;
  :func:`preference_pairs`, :func:`simulate_annotators`), style pairs and right-vs-wrong
  correctness pairs, Likert ratings, agreement and the accuracy ceiling any reward model faces.
* :mod:`~rlhf_book.data.arithmetic` -- verifiable arithmetic prompts for RLVR (:func:`verify`)
  and two-digit sums with and without a worked scratchpad (:func:`two_digit_sums`,
  :func:`scratchpad`, :func:`sum_demonstrations`): the task where longer reasoning pays.
* :mod:`~rlhf_book.data.toy` -- the lectures' own toy data (preference pairs, a token policy), exactly.

Data flows one way: this package imports nothing from :mod:`rlhf_book.lm` or the chapters.
Texts and chat messages (``{"role", "content"}`` dicts) come out; tokenisation happens in
:mod:`rlhf_book.lm.tokenizer`. Size limits fit the mini GPT's 128-token context: prompts
<= 48 bytes, answers <= 72 bytes, documents <= 200 bytes.
"""

from rlhf_book.data.arithmetic import (ArithmeticProblem, arithmetic_problems, extract_answer,
                                       scratchpad, sum_demonstrations, two_digit_sums, verify)
from rlhf_book.data.corpus import MAX_DOCUMENT_BYTES, pretraining_corpus
from rlhf_book.data.preferences import (PAIR_KINDS, UNBIASED, AnnotatorBias, PreferencePair,
                                        annotator_utility, bt_accuracy_ceiling,
                                        inter_annotator_agreement, label_accuracy_ceiling,
                                        likert_cutpoints, likert_ratings, majority_probability,
                                        preference_pairs, simulate_annotators)
from rlhf_book.data.sft import DEMONSTRATOR_STYLES, SYSTEM_PROMPTS, sft_demonstrations
from rlhf_book.data.styles import (CONFIDENT_PHRASES, GOLD_MAX, GOLD_MIN, HEDGE_PHRASES,
                                   MAX_ANSWER_BYTES, STYLES, count_confident, count_hedges,
                                   gold_reward, gold_reward_batch, render_answer, stated_answer,
                                   wrong_answer)
from rlhf_book.data.toy import (LESSON_EVAL_PROMPTS, LESSON_PREFERENCE_PAIRS, LESSON_QUANTUM_PAIR,
                               LESSON_TOKEN_POLICY, LESSON_UNSEEN_PAIRS)
from rlhf_book.data.world import (FACT_TOPICS, MAX_PROMPT_BYTES, TOPICS, TRAIN_TEMPLATES, Fact,
                                  Question, QuestionSplits, all_facts, all_questions,
                                  answer_vocabulary, fact_questions, question_splits,
                                  sample_questions, split_facts, split_questions)

__all__ = [
    "ArithmeticProblem", "arithmetic_problems", "extract_answer", "scratchpad",
    "sum_demonstrations", "two_digit_sums", "verify",
    "MAX_DOCUMENT_BYTES", "pretraining_corpus",
    "PAIR_KINDS", "UNBIASED", "AnnotatorBias", "PreferencePair", "annotator_utility",
    "bt_accuracy_ceiling", "inter_annotator_agreement", "label_accuracy_ceiling",
    "likert_cutpoints", "likert_ratings", "majority_probability", "preference_pairs",
    "simulate_annotators",
    "DEMONSTRATOR_STYLES", "SYSTEM_PROMPTS", "sft_demonstrations",
    "CONFIDENT_PHRASES", "GOLD_MAX", "GOLD_MIN", "HEDGE_PHRASES", "MAX_ANSWER_BYTES", "STYLES",
    "count_confident", "count_hedges", "gold_reward", "gold_reward_batch", "render_answer",
    "stated_answer", "wrong_answer",
    "LESSON_EVAL_PROMPTS", "LESSON_PREFERENCE_PAIRS", "LESSON_QUANTUM_PAIR", "LESSON_TOKEN_POLICY", "LESSON_UNSEEN_PAIRS",
    "FACT_TOPICS", "MAX_PROMPT_BYTES", "TOPICS", "TRAIN_TEMPLATES", "Fact", "Question",
    "QuestionSplits", "all_facts", "all_questions", "answer_vocabulary", "fact_questions",
    "question_splits", "sample_questions", "split_facts", "split_questions",
]
