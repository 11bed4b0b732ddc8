"""Chapter 4's experiments: what ``notebooks/ch04_instruction_tuning.ipynb`` runs.

Settings are the named constants below; change one and rerun the notebook. The experiments
take the pretrained model as an argument (chapter 0's run of the small GPT, which
:func:`rlhf_book.textbook.substrate.pretrained_small` provides):

* :func:`sft_datasets` and :func:`sft_batches`: demonstrations on training facts, packed into
  rows; demonstrations on held-out facts for the held-out loss;
* :func:`run_sft` / :func:`sft_runs`: the chapter's SFT runs, with and without prompt masking;
  the prompt-masked model is the policy chapters 6, 8 and 9 start from;
* :func:`packing_stats`: padding against packing on the 2,000 demonstrations;
* :func:`evaluate_models`: greedy answers to the held-out questions, scored by the gold reward.
"""

from __future__ import annotations

import numpy as np

from rlhf_book import data
from rlhf_book.ch04_instruction_tuning.losses import pack_examples, pad_examples, sft_examples
from rlhf_book.ch04_instruction_tuning.loop import (SFTConfig, evaluate_answers,
                                                    generate_answers, train_sft)
from rlhf_book.lm import gpt

# The model the chapter fine-tunes: chapter 0's pretrained small GPT.
SFT_MODEL = "small"

# The chapter's SFT runs (notebook section 5): 200 steps of 16 packed rows of 128 tokens at
# 3e-4, 2,000 demonstrations on training facts, a held-out set of 256 demonstrations on held-out
# facts for the loss curves. (The library's default SFTConfig(), 150 steps at 1e-4, is chosen for
# the pipeline's mini model; the small model at that setting still stops by itself on only 59%
# of the held-out questions.)
SFT_CONFIG = SFTConfig(steps=200, batch_size=16, seq_len=128, learning_rate=3e-4,
                       warmup_steps=20, n_demonstrations=2000, log_every=25)
N_HELDOUT_DEMONSTRATIONS = 256
SFT_SEED = 0
RUN_LABELS = {True: "prompt masked (assistant tokens)", False: "no mask (every token)"}

# A two-turn conversation: the loss mask differs between the two modes on the first answer.
TWO_TURN = (
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "What sound does a cow make?"},
    {"role": "assistant", "content": "Moo."},
    {"role": "user", "content": "And a dog?"},
    {"role": "assistant", "content": "A dog says woof."},
)


def sft_datasets(seed: int = SFT_SEED):
    """``(demonstrations, heldout_demonstrations, heldout_questions)``: SFT conversations on
    training facts, conversations on held-out facts (for the held-out loss) and the held-out
    questions the evaluation asks."""
    _, heldout = data.split_questions()
    demos = data.sft_demonstrations(seed=seed, n=SFT_CONFIG.n_demonstrations)
    heldout_demos = data.sft_demonstrations(seed=seed + 1, n=N_HELDOUT_DEMONSTRATIONS,
                                            questions=heldout)
    return demos, heldout_demos, heldout


def sft_batches(demos, mask_prompt: bool = True, length: int = SFT_CONFIG.seq_len):
    """Packed rows of ``demos``; the loss mask covers the assistant's tokens, or every token
    but the first with ``mask_prompt=False``."""
    return pack_examples(sft_examples(demos, mask_prompt=mask_prompt), length)


def run_sft(base_params, mask_prompt: bool = True, *, heldout_loss: bool = True,
            seed: int = SFT_SEED, progress: bool = False):
    """One of the chapter's SFT runs from ``base_params`` (the pretrained small model):
    ``(params, history)`` of :func:`train_sft` with :data:`SFT_CONFIG`; with ``heldout_loss``,
    the history holds the loss on the assistant tokens of the held-out demonstrations."""
    demos, heldout_demos, _ = sft_datasets(seed)
    eval_batch = sft_batches(heldout_demos, mask_prompt=True) if heldout_loss else None
    return train_sft(gpt.get_config(SFT_MODEL), base_params, SFT_CONFIG,
                     sft_batches(demos, mask_prompt), eval_batch=eval_batch, seed=seed,
                     progress=progress)


def sft_runs(base_params, seed: int = SFT_SEED) -> dict[bool, tuple]:
    """``{mask_prompt: (params, history)}`` for both SFT runs from ``base_params``."""
    return {mask_prompt: run_sft(base_params, mask_prompt, seed=seed)
            for mask_prompt in (True, False)}


def packing_stats(demos, length: int = SFT_CONFIG.seq_len):
    """``(examples, padded, packed)``: the demonstrations' examples and both batch layouts."""
    examples = sft_examples(demos)
    return examples, pad_examples(examples, length), pack_examples(examples, length)


def evaluate_models(models: dict, questions=None) -> dict:
    """``{label: evaluate_answers(...)}`` for ``{label: params}`` of the small model, answering
    ``questions`` (default: the held-out questions) greedily through the chat template."""
    config = gpt.get_config(SFT_MODEL)
    questions = questions if questions is not None else sft_datasets()[2]
    results = {}
    for label, params in models.items():
        answers, stopped = generate_answers(params, config, questions)
        results[label] = evaluate_answers(questions, answers, stopped)
    return results


def row_fill(batch) -> float:
    """The fraction of a batch's positions that hold a token of some example."""
    return float((np.asarray(batch.segment_ids) > 0).mean())
