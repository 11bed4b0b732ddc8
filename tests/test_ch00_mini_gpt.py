"""Chapter 0's experiments (rlhf_book.ch00_mini_gpt): what the notebook runs around the mini GPT.

Expected values come from hand computation (entropies of small streams), the numpy "Build"
lesson's stated parameter count, causality (a position never sees a later token), and Monte-Carlo
frequencies compared within 4 standard errors with temperature-scaled probabilities computed
here in NumPy.
"""

import math

import numpy as np
import pytest

from rlhf_book import ch00_mini_gpt as ch00
from rlhf_book import data
from rlhf_book.lm import gpt, train


@pytest.mark.parametrize("stream, expected", [
    ([7, 7, 7, 7], 0.0),
    ([0, 0, 1, 1], math.log(2)),
    ([1, 2, 3, 4, 5, 6], math.log(6)),
    ([0, 0, 0, 1], -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))),
])
def test_unigram_entropy_by_hand(stream, expected):
    assert ch00.unigram_entropy(np.asarray(stream)) == pytest.approx(expected, abs=1e-12)


def test_causal_edit_changes_only_the_edited_position_and_later():
    config = gpt.GPTConfig(d_model=32, n_heads=2, n_layers=2, max_seq_len=64, d_ff=64)
    change = ch00.causal_edit(config=config)
    at = ch00.CAUSAL_EDIT_AT
    assert change.shape == (len(ch00.CAUSAL_TEXT) + 1,)
    assert np.all(change[:at] == 0.0)          # causal: earlier positions cannot see the edit
    assert np.all(change[at:] > 0.0)


def test_parameter_groups_add_up_to_the_lesson_count():
    config = gpt.GPTConfig(vocab_size=256)  # the lesson's byte vocabulary, no special tokens
    groups = ch00.parameter_groups(config)
    assert set(groups) == set(ch00.PARAMETER_GROUPS)
    assert sum(groups.values()) == 840_448  # as the numpy "Build" lesson states
    assert groups["tok_emb"] == 256 * 128 and groups["pos_emb"] == 128 * 128


def test_temperature_sweep_samples_the_scaled_policy():
    policy = data.LESSON_TOKEN_POLICY
    p = np.array(list(policy.values()))
    sweep = ch00.temperature_sweep(draws=20_000)
    assert set(sweep) == set(ch00.TEMPERATURES)
    for tau, result in sweep.items():
        expected = p ** (1 / tau) / np.sum(p ** (1 / tau))
        np.testing.assert_allclose(result["probabilities"], expected, rtol=1e-12)
        se = np.sqrt(expected * (1 - expected) / 20_000)
        assert np.all(np.abs(result["frequencies"] - expected) < 4 * se + 1e-12), tau
    np.testing.assert_allclose(sweep[1.0]["probabilities"], p, rtol=1e-12)


def test_pretraining_streams_hold_out_whole_documents():
    train_stream, eval_stream = ch00.pretraining_streams()
    docs = data.pretraining_corpus(seed=ch00.PRETRAIN_SEED, n_documents=ch00.PRETRAIN_DOCUMENTS)
    n_eval = int(ch00.PRETRAIN_EVAL_FRACTION * len(docs))
    np.testing.assert_array_equal(eval_stream, train.token_stream(docs[:n_eval]))
    np.testing.assert_array_equal(np.concatenate([eval_stream, train_stream]),
                                  train.token_stream(docs))
    assert 0.03 < len(eval_stream) / (len(eval_stream) + len(train_stream)) < 0.07
