"""The byte tokenizer and the chat template."""

import numpy as np
import pytest

from rlhf_book.lm import tokenizer as tok


def test_bytes_round_trip_including_unicode():
    text = "Paris is the capital.\nCafé, 東京 ✓"
    ids = tok.encode(text)
    assert all(0 <= i < 256 for i in ids)
    assert len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids) == text


def test_special_tokens_are_atomic_and_above_the_bytes():
    assert len(tok.SPECIAL_TOKENS) == 7 and tok.VOCAB_SIZE == 263
    assert all(i >= 256 for i in tok.SPECIAL_TOKENS)
    # A user typing the marker text gets bytes, never the special id.
    assert tok.END not in tok.encode("<|end|>")
    assert tok.decode([tok.BOS, 104, 105, tok.END], skip_special=False) == "<|bos|>hi<|end|>"
    assert tok.decode([tok.BOS, 104, 105, tok.END]) == "hi"


def test_decode_survives_invalid_utf8_and_rejects_unknown_ids():
    assert tok.decode([0xFF, 0x41]) == "\ufffdA"
    with pytest.raises(ValueError, match="ids must lie in"):
        tok.decode([tok.VOCAB_SIZE])


def test_chat_template_ids_and_assistant_mask():
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "2+3?"},
                {"role": "assistant", "content": "5"}]
    ids, mask = tok.render_chat(messages)
    expected = ([tok.BOS, tok.SYSTEM] + list(b"Be brief.") + [tok.END, tok.USER] + list(b"2+3?")
                + [tok.END, tok.ASSISTANT, ord("5"), tok.END])
    assert ids == expected
    # Only the assistant's content and its closing <|end|> are trained on.
    assert [i for i, m in zip(ids, mask) if m] == [ord("5"), tok.END]
    assert tok.decode(ids, skip_special=False) == (
        "<|bos|><|system|>Be brief.<|end|><|user|>2+3?<|end|><|assistant|>5<|end|>")


def test_multi_turn_mask_covers_every_assistant_turn():
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "bc"},
                {"role": "user", "content": "d"}, {"role": "assistant", "content": "e"}]
    ids, mask = tok.render_chat(messages)
    assert tok.decode([i for i, m in zip(ids, mask) if m], skip_special=False) == "bc<|end|>e<|end|>"


def test_generation_prompt_ends_with_assistant_header():
    ids = tok.render_prompt("Hi?", system="Be nice.")
    assert ids[-1] == tok.ASSISTANT and ids[0] == tok.BOS
    ids2, mask = tok.render_chat([{"role": "user", "content": "Hi?"}], add_generation_prompt=True)
    assert ids2 == tok.render_prompt("Hi?") and sum(mask) == 0


@pytest.mark.parametrize("bad, match", [
    ([{"role": "robot", "content": "x"}], "role"),
    ([{"role": "user", "content": 3}], "content"),
])
def test_chat_template_rejects_bad_messages(bad, match):
    with pytest.raises(ValueError, match=match):
        tok.render_chat(bad)


def test_pad_batch():
    tokens, lengths = tok.pad_batch([[1, 2, 3], [4]], 5)
    np.testing.assert_array_equal(tokens, [[1, 2, 3, tok.PAD, tok.PAD], [4] + [tok.PAD] * 4])
    np.testing.assert_array_equal(lengths, [3, 1])
    assert tokens.dtype == np.int32
    with pytest.raises(ValueError, match=r"sequences\[1\] has 6 tokens"):
        tok.pad_batch([[1], [1] * 6], 5)
