"""An evaluation harness for the whole project: any checkpoint of the mini GPT, the world's
held-out suites, one table with standard errors (book §16.1-16.3; what `rlhf-book eval` prints
and what the pipeline's final tables are made of).

The suites are the world's held-out question sets (``rlhf_book.data``'s splits):

* ``rephrased`` -- questions about the four fact topics' *training* facts in phrasings no
  training data contains: what the model learned, asked in new words (the pipeline's main
  evaluation);
* ``unseen`` -- questions about facts held out of every training set (stated only in the
  pretraining corpus);
* ``arithmetic`` -- rephrased sums, scored by the last integer (chapter 7's verifier).

Every answer is sampled at temperature 1 (what RL optimises and best-of-N draws from) and
measured by :func:`rlhf_book.lm.eval.answer_samples`; each metric is a mean over questions of
the per-question mean over ``samples`` answers, with its standard error **over questions** (the
unit that was sampled: answers to one question are alike, so an SE over answers would be too
small). pass@k is chapter 7's unbiased estimator from the ``samples`` answers.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from rlhf_book import data
from rlhf_book.ch07_reasoning.rlvr import pass_at_k
from rlhf_book.lm import gpt
from rlhf_book.lm.eval import answer_samples, mean_se
from rlhf_book.lm.rollout import encode_prompts

__all__ = ["SUITES", "suite_questions", "summarise", "evaluate", "format_table", "infer_config"]

SUITES = ("rephrased", "unseen", "arithmetic")
METRICS = ("gold", "right", "wrong", "none", "bytes", "rm", "kl")


def suite_questions(suite: str, n: int | None = None, seed: int = 0) -> list[data.Question]:
    """The questions of one suite (see the module docstring), or ``n`` of them drawn without
    replacement (in their order) with ``seed``; the world's split is its default one."""
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {SUITES}, got {suite!r}")
    splits = data.question_splits()
    questions = {"rephrased": lambda: data.fact_questions(splits.rephrased),
                 "unseen": lambda: data.fact_questions(splits.unseen),
                 "arithmetic": lambda: [q for q in splits.rephrased
                                        if q.topic == "arithmetic"]}[suite]()
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"n must be a positive int or None, got {n!r}")
    if n is None or n >= len(questions):
        return questions
    pick = np.random.default_rng(seed).choice(len(questions), size=n, replace=False)
    return [questions[i] for i in sorted(pick)]


# [guide:harness]
def summarise(answers: dict, reference: dict | None = None,
              ks: Sequence[int] = ()) -> dict[str, float]:
    """Means over questions of the per-question means of ``answers`` (arrays ``[Q, samples]``
    of :func:`~rlhf_book.lm.eval.answer_samples`; ``rm`` for a reward model's score), each
    with its standard error over questions as ``<name>_se``. With ``reference`` (another
    model's answers to the same questions, e.g. the SFT model's), the paired ``gain`` in gold
    reward and its SE; ``answers["question_index"]`` says which of the reference's questions
    these are when they are a subset. For each ``k`` of ``ks`` (``k <= samples``),
    ``pass@k`` from the ``right`` counts."""
    out = {}
    for name in METRICS:
        if name in answers:
            out[name], out[f"{name}_se"] = (float(v) for v in mean_se(answers[name].mean(1)))
    if reference is not None:
        ref = reference["gold"].mean(1)[answers.get("question_index", slice(None))]
        out["gain"], out["gain_se"] = (float(v) for v in mean_se(answers["gold"].mean(1) - ref))
    n = answers["right"].shape[1]
    for k in ks:
        per_question = pass_at_k(n, answers["right"].sum(1), k)
        out[f"pass@{k}"], out[f"pass@{k}_se"] = (float(v) for v in mean_se(per_question))
    return out
# [/guide]


@dataclasses.dataclass(frozen=True)
class SuiteResult:
    """One row of the harness's table: a model on a suite."""

    model: str
    suite: str
    questions: int
    samples: int
    metrics: dict


def evaluate(models: dict, model_config: gpt.GPTConfig, *, reference=None,
             suites: Sequence[str] = SUITES, questions: int | None = 64, samples: int = 4,
             seed: int = 0, max_new_tokens: int = 64) -> list[SuiteResult]:
    """Score each of ``models`` (name -> parameters) on each suite: ``questions`` per suite
    (``None``: all), ``samples`` answers each at temperature 1, one row per model and suite with
    gold reward, accuracy (``right``), wrong and unanswered shares, answer length (``bytes``),
    pass@1 and pass@``samples``, and, with ``reference`` parameters, the sampled KL to the
    reference (nats per answer) and the paired gold gain over the reference's own answers.
    Every model samples with the same keys (common random numbers): two models that are alike
    give alike answers, which makes their paired difference less noisy."""
    if not models:
        raise ValueError("models must name at least one set of parameters")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    rows = []
    for suite in suites:
        qs = suite_questions(suite, questions, seed)
        width = encode_prompts([q.prompt for q in qs]).tokens.shape[1]
        new_tokens = min(max_new_tokens, model_config.max_seq_len - width)
        key = jax.random.PRNGKey(seed)

        def answers(params):
            return answer_samples(params, qs, model_config, key, samples=samples,
                                  max_new_tokens=new_tokens, ref_params=reference)
        ref = answers(reference) if reference is not None else None
        ks = sorted({1, samples})
        for name, params in models.items():
            metrics = summarise(answers(params), ref if params is not reference else None, ks)
            rows.append(SuiteResult(name, suite, len(qs), samples, metrics))
    return rows


def format_table(rows: Sequence[SuiteResult]) -> str:
    """The harness's rows as a text table: gold reward, accuracy, pass@k, the share without
    an answer, bytes and KL, each ``mean +- SE`` over questions."""
    def pm(m: dict, name: str, digits: int = 3, sign: str = "") -> str:
        if name not in m:
            return ""
        return f"{m[name]:{sign}.{digits}f} +- {m[name + '_se']:.{digits}f}"

    samples = sorted({r.samples for r in rows})
    header = ["model", "suite", "Q x n", "gold reward", "vs reference", "accuracy", "pass@n",
              "no answer", "bytes", "KL (nats)"]
    lines = [header]
    for r in rows:
        m = r.metrics
        lines.append([r.model, r.suite, f"{r.questions} x {r.samples}", pm(m, "gold", sign="+"),
                      pm(m, "gain", sign="+"), pm(m, "right"), pm(m, f"pass@{r.samples}"),
                      pm(m, "none"), pm(m, "bytes", 0), pm(m, "kl", 2)])
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    text = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    note = (f"n = {', '.join(map(str, samples))} answers per question at temperature 1; "
            "+- one standard error over questions")
    return "\n".join(text + [note])


def infer_config(params) -> gpt.GPTConfig:
    """The named model configuration (``tiny``, ``small``, ``mini``) whose parameters have the
    shapes of ``params``; ``ValueError`` when none does."""
    structure = jax.tree.structure(params)
    shapes = [np.shape(leaf) for leaf in jax.tree.leaves(params)]
    for config in gpt.CONFIGS.values():
        expected = jax.eval_shape(lambda key, c=config: gpt.init_params(key, c), jax.random.PRNGKey(0))
        if (jax.tree.structure(expected) == structure
                and [tuple(e.shape) for e in jax.tree.leaves(expected)] == shapes):
            return config
    raise ValueError("params must be the parameters of one of the GPT configurations "
                     f"{sorted(gpt.CONFIGS)}; their shapes match none")
