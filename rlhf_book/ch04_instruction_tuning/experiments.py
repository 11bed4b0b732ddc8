"""Chapter 4's experiments: what ``notebooks/ch04_instruction_tuning.ipynb`` runs.

Settings are the named constants below; change one and rerun the notebook. The experiments
take the pretrained model as an argument (chapter 0's run of the small GPT, which
:func:`rlhf_book.textbook.substrate.pretrained_small` provides):

* :func:`sft_datasets` and :func:`sft_batches`: demonstrations on training facts (the world's
  demonstrators, of mixed quality), packed into rows; demonstrations on the rephrased questions
  for the held-out loss;
* :func:`run_sft`: the chapter's prompt-masked SFT run (:data:`SFT_CONFIG`, the policy
  chapters 5, 6, 8, 9 and 15 start from), and :func:`mask_runs`, the two short runs with and
  without prompt masking that compare their losses (:data:`MASK_CONFIG`);
* :func:`packing_stats`: padding against packing on the 2,000 demonstrations;
* :func:`eval_questions`, :func:`sample_models` and :func:`summarize`: answers to the rephrased
  questions (the main evaluation) and to the unseen facts (a second row), sampled at
  temperature 1 and greedily, scored by the gold reward with standard errors;
* :func:`answer_style`, :func:`style_shares` and :func:`demonstration_styles`: which of the
  demonstrators' styles (:data:`rlhf_book.data.DEMONSTRATOR_STYLES`) an answer is written in,
  for the model's samples and for the demonstrations themselves.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from rlhf_book import data
from rlhf_book.ch04_instruction_tuning.losses import pack_examples, pad_examples, sft_examples
from rlhf_book.ch04_instruction_tuning.loop import SFTConfig, train_sft
from rlhf_book.data.styles import CONCISE_BYTES
from rlhf_book.lm import gpt
from rlhf_book.lm.eval import answer_kind, answer_samples, mean_se

# The model the chapter fine-tunes: chapter 0's pretrained small GPT.
SFT_MODEL = "small"

# The chapter's SFT run (notebook section 5), THE prompt-masked SFT model chapters 5, 6, 8, 9
# and 15 start from (stored by rlhf_book.textbook.substrate.sft_small): 1,000 steps of 16
# packed rows of 128 tokens at 1e-3 (3x below the small model's pretraining rate), about 16
# passes over 2,000 demonstrations on training facts; a held-out set of 256 demonstrations on
# the rephrased questions for the loss curves. (The library's default SFTConfig(), 150 steps
# at 1e-4, is chosen for the pipeline's mini model.) Measured on the 520 rephrased questions,
# 4 samples each at temperature 1, gold gain over the pretrained model paired by question:
# this run +0.379 +- 0.020 (20% right; greedy 49% right); 600 steps at 2e-3 +0.314 +- 0.019;
# 500 at 2e-3 +0.266 +- 0.017; 400 at 3e-3 +0.218 +- 0.015; 200 at 3e-4 (the mask comparison
# below) +0.040 +- 0.011, the format without the facts. A model this small needs many passes
# to tie a new phrasing of a question to the fact it saw stated.
SFT_CONFIG = SFTConfig(steps=1000, batch_size=16, seq_len=128, learning_rate=1e-3,
                       warmup_steps=20, n_demonstrations=2000, log_every=50)
N_HELDOUT_DEMONSTRATIONS = 256
SFT_SEED = 0
SFT_LABEL = "SFT (prompt masked, 1,000 steps at 1e-3)"

# The prompt-mask comparison (notebook section 5): two short runs, with and without the mask,
# 200 steps at 3e-4 (about 3 passes), the loss on the held-out demonstrations' assistant tokens
# measured every 25 steps. The mask's effect on that loss shows within these steps; the runs
# are too short to answer the rephrased questions (see SFT_CONFIG), so only their losses are
# compared.
MASK_CONFIG = SFTConfig(steps=200, batch_size=16, seq_len=128, learning_rate=3e-4,
                        warmup_steps=20, n_demonstrations=2000, log_every=25)
RUN_LABELS = {True: "prompt masked (assistant tokens), 200 steps",
              False: "no mask (every token), 200 steps"}

# The evaluation (notebook sections 6 and 7): the four fact topics' questions of one split of
# data.question_splits (the main one, "rephrased": the training facts in the 8 phrasings no
# training data contains, 520 questions; "unseen": the held-out facts, 204), answered
# EVAL_SAMPLES times at EVAL_TEMPERATURE (and once greedily, temperature 0), at most
# EVAL_MAX_NEW_TOKENS tokens: 64, as in the main job's evaluation, room for most of the
# demonstrators' padded answers (up to 72 bytes; with 48, a padded answer is cut before it
# states anything).
EVAL_SPLITS = {"rephrased": "training facts, new phrasings", "unseen": "unseen facts"}
EVAL_SAMPLES = 4
EVAL_TEMPERATURE = 1.0
EVAL_MAX_NEW_TOKENS = 64
EVAL_SEED = 0

# A two-turn conversation: the loss mask differs between the two modes on the first answer.
TWO_TURN = (
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What sound does a cow make?"},
    {"role": "assistant", "content": "Moo."},
    {"role": "user", "content": "And a dog?"},
    {"role": "assistant", "content": "A dog says woof."},
)


def eval_questions(split: str = "rephrased") -> list[data.Question]:
    """The fact-topic questions of ``split`` (a field of :func:`rlhf_book.data.question_splits`:
    ``"rephrased"``, the main evaluation, ``"unseen"`` or ``"train"``)."""
    if split not in data.QuestionSplits._fields:
        raise ValueError(f"split must be one of {data.QuestionSplits._fields}, got {split!r}")
    return data.fact_questions(getattr(data.question_splits(), split))


def sft_datasets(seed: int = SFT_SEED):
    """``(demonstrations, heldout_demonstrations, heldout_questions)``: SFT conversations on
    training facts in the trained phrasings (the default pool of
    :func:`rlhf_book.data.sft_demonstrations`), conversations by the same demonstrators on the
    rephrased questions (for the held-out loss), and those rephrased questions."""
    demos = data.sft_demonstrations(seed=seed, n=SFT_CONFIG.n_demonstrations)
    heldout = eval_questions("rephrased")
    heldout_demos = data.sft_demonstrations(seed=seed + 1, n=N_HELDOUT_DEMONSTRATIONS,
                                            questions=heldout)
    return demos, heldout_demos, heldout


def sft_batches(demos, mask_prompt: bool = True, length: int = SFT_CONFIG.seq_len):
    """Packed rows of ``demos``; the loss mask covers the assistant's tokens, or every token
    but the first with ``mask_prompt=False``."""
    return pack_examples(sft_examples(demos, mask_prompt=mask_prompt), length)


def run_sft(base_params, mask_prompt: bool = True, *, heldout_loss: bool = True,
            seed: int = SFT_SEED, progress: bool = False, config: SFTConfig = SFT_CONFIG):
    """One of the chapter's SFT runs from ``base_params`` (the pretrained small model):
    ``(params, history)`` of :func:`train_sft` with ``config`` (:data:`SFT_CONFIG`, the shared
    prompt-masked run, by default); with ``heldout_loss``, the history holds the loss on the
    assistant tokens of the held-out demonstrations (measured between chunks: the trained
    parameters are the same with or without it)."""
    demos, heldout_demos, _ = sft_datasets(seed)
    eval_batch = sft_batches(heldout_demos, mask_prompt=True) if heldout_loss else None
    return train_sft(gpt.get_config(SFT_MODEL), base_params, config,
                     sft_batches(demos, mask_prompt), eval_batch=eval_batch, seed=seed,
                     progress=progress)


def mask_runs(base_params, seed: int = SFT_SEED) -> dict[bool, tuple]:
    """``{mask_prompt: (params, history)}``: the two short :data:`MASK_CONFIG` runs from
    ``base_params``, with and without prompt masking."""
    return {mask_prompt: run_sft(base_params, mask_prompt, seed=seed, config=MASK_CONFIG)
            for mask_prompt in (True, False)}


def packing_stats(demos, length: int = SFT_CONFIG.seq_len):
    """``(examples, padded, packed)``: the demonstrations' examples and both batch layouts."""
    examples = sft_examples(demos)
    return examples, pad_examples(examples, length), pack_examples(examples, length)


def sample_models(models: dict, questions: Sequence[data.Question], *,
                  samples: int = EVAL_SAMPLES, temperature: float = EVAL_TEMPERATURE,
                  seed: int = EVAL_SEED) -> dict:
    """``{label: answer_samples(...)}`` for ``{label: params}`` of the small model: each
    question answered ``samples`` times at ``temperature`` (0: greedy, one answer) through the
    chat template, every model with the same key; arrays ``[len(questions), samples]``."""
    config = gpt.get_config(SFT_MODEL)
    samples = 1 if temperature == 0 else samples
    return {label: answer_samples(params, questions, config, jax.random.PRNGKey(seed),
                                  samples=samples, temperature=temperature,
                                  max_new_tokens=EVAL_MAX_NEW_TOKENS)
            for label, params in models.items()}


def summarize(answers: dict) -> dict:
    """Means of :func:`rlhf_book.lm.eval.answer_samples` arrays with standard errors over the
    questions (each question's answers averaged first): ``gold``, the shares of ``right``,
    ``wrong`` and ``none`` (no answer stated), ``stopped`` (each with ``_se``), mean
    ``bytes`` and ``n`` questions."""
    out = {"n": answers["gold"].shape[0], "samples": answers["gold"].shape[1],
           "bytes": float(answers["bytes"].mean())}
    for key in ("gold", "right", "wrong", "none", "stopped"):
        mean, se = mean_se(answers[key].mean(axis=1))
        out[key], out[f"{key}_se"] = float(mean), float(se)
    return out


def paired_gain(after: dict, before: dict, key: str = "gold") -> tuple[float, float]:
    """``(mean, se)`` of the per-question difference in the mean of ``key`` (the gold reward by
    default; ``"right"`` for the share of right answers), ``after - before`` (two
    :func:`sample_models` results on the same questions)."""
    mean, se = mean_se(after[key].mean(axis=1) - before[key].mean(axis=1))
    return float(mean), float(se)


def answer_style(question: data.Question, text: str) -> str:
    """Which of :data:`rlhf_book.data.STYLES` ``text`` is written in, read from the text the
    way the gold reward reads it: ``"wrong"`` if it states a wrong answer, ``"off_topic"`` if it
    states none; a right answer is ``"hedging"`` with a hedge phrase, ``"verbose"`` past 48
    bytes, else ``"concise_correct"``. Every answer the demonstrators render
    (:func:`rlhf_book.data.render_answer`) is read as the style it was rendered in."""
    kind = answer_kind(question, text)
    if kind != "right":
        return "wrong" if kind == "wrong" else "off_topic"
    if data.count_hedges(text):
        return "hedging"
    return "verbose" if len(text.encode()) > CONCISE_BYTES else "concise_correct"


def style_shares(questions: Sequence[data.Question], texts) -> dict[str, tuple[float, float]]:
    """``{style: (share, se)}`` over :data:`rlhf_book.data.STYLES` for ``texts[i, j]``, the
    ``j``-th answer to ``questions[i]``; the standard error is over the questions."""
    texts = np.asarray(texts, dtype=object).reshape(len(questions), -1)
    styles = np.array([[answer_style(q, t) for t in row] for q, row in zip(questions, texts)])
    out = {}
    for style in data.STYLES:
        mean, se = mean_se((styles == style).mean(axis=1))
        out[style] = (float(mean), float(se))
    return out


def demonstration_styles(demos) -> dict[str, float]:
    """``{style: share}`` of the demonstrations' answers, each read by :func:`answer_style`."""
    by_prompt = {q.prompt: q for q in data.all_questions()}
    styles = [answer_style(by_prompt[c[-2]["content"]], c[-1]["content"]) for c in demos]
    return {style: styles.count(style) / len(styles) for style in data.STYLES}


def row_fill(batch) -> float:
    """The fraction of a batch's positions that hold a token of some example."""
    return float((np.asarray(batch.segment_ids) > 0).mean())
