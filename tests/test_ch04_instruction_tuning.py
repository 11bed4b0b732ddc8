"""Chapter 4: chat templates, loss masks, the SFT loss, packing, the experiments' evaluation
(answer styles read back from text, means with standard errors), and SFT as a learning test.

The exercises' own checks (the book's template strings, NumPy-loop losses, packing read-back,
the packed SFT step against each example run alone) run in tests/test_grading.py; this file
tests the rest of the chapter, that the training loop takes the step of exercise 4.5, and that
the check of 4.5 rejects the common wrong steps with a hint that names the bug."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf_book import ch04_instruction_tuning as ch04
from rlhf_book import data
from rlhf_book.ch04_instruction_tuning import experiments
from rlhf_book.lm import gpt, tokenizer, train
from rlhf_book.ch04_instruction_tuning import loop as sft_loop
from rlhf_book.lm import ops
from rlhf_book.lm.eval import answer_samples
from rlhf_book.textbook.checks import Mismatch
from rlhf_book.textbook.checks import ch04_instruction_tuning as checks

U = lambda text: {"role": "user", "content": text}  # noqa: E731
A = lambda text: {"role": "assistant", "content": text}  # noqa: E731
S = lambda text: {"role": "system", "content": text}  # noqa: E731


# ----------------------------------------------------------------------------------------------
# §4.1 roles and templates


@pytest.mark.parametrize("messages", [
    [U("hi")], [S("be brief"), U("hi")], [U("hi"), A("hello")],
    [S("x"), U("a"), A("b"), U("c"), A("d")],
])
def test_check_roles_accepts_alternating_conversations(messages):
    ch04.check_roles(messages)


@pytest.mark.parametrize("messages, position", [
    ([U("a"), U("b")], 1),
    ([A("a")], 0),
    ([S("x"), A("a")], 1),
    ([U("a"), S("x")], 1),            # the book's Jinja template lets this one through
    ([S("x"), U("a"), S("y")], 2),    # and this one
    ([U("a"), A("b"), A("c")], 2),
])
def test_check_roles_rejects_the_rest_naming_the_message(messages, position):
    with pytest.raises(ValueError, match=rf"messages\[{position}\]\['role'\]"):
        ch04.check_roles(messages)


def test_check_roles_rejects_empty_and_non_string_content():
    with pytest.raises(ValueError, match="at least one message"):
        ch04.check_roles([])
    with pytest.raises(ValueError, match=r"messages\[0\]\['content'\] must be a str"):
        ch04.check_roles([{"role": "user", "content": 3}])
    with pytest.raises(ValueError, match="style must be one of"):
        ch04.apply_chat_template([U("a")], "llama")


def test_book_conversation_renders_as_the_book_prints_it():
    text = ch04.apply_chat_template(list(ch04.BOOK_CONVERSATION), "chatml", add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a friendly chatbot who always responds "
                           "in the style of a pirate<|im_end|>\n")
    assert text.endswith("<|im_start|>user\nAre you sure about that?<|im_end|>\n<|im_start|>assistant\n")
    assert text.count("<|im_start|>") == 5 and text.count("<|im_end|>") == 4


# ----------------------------------------------------------------------------------------------
# §4.3 masks


TWO_TURNS = [S("Answer briefly."), U("What is 2 + 3?"), A("5"), U("And 2 + 4?"), A("6")]


def _trained_text(ids, mask):
    return tokenizer.decode([i for i, m in zip(ids, mask) if m], skip_special=False)


def test_loss_mask_modes_train_the_right_turns():
    ids, mask = ch04.loss_mask_for(TWO_TURNS, "all_assistant")
    assert _trained_text(ids, mask) == "5<|end|>6<|end|>"
    ids_last, mask_last = ch04.loss_mask_for(TWO_TURNS, "last_turn")
    assert ids_last == ids and _trained_text(ids, mask_last) == "6<|end|>"
    with pytest.raises(ValueError, match="mode must be"):
        ch04.loss_mask_for(TWO_TURNS, "everything")


def test_unroll_gives_one_example_per_assistant_turn_without_future_turns():
    examples = ch04.unroll_conversation(TWO_TURNS)
    assert len(examples) == 2
    (ids0, m0), (ids1, m1) = examples
    assert _trained_text(ids0, m0) == "5<|end|>" and "6" not in tokenizer.decode(ids0)
    assert _trained_text(ids1, m1) == "6<|end|>" and ids1 == tokenizer.render_chat(TWO_TURNS)[0]


def test_sft_examples_without_prompt_masking_train_every_token_but_the_first():
    (ids, mask), = ch04.sft_examples([TWO_TURNS[1:3]], mask_prompt=False)
    assert mask[0] == 0 and all(mask[1:])


# ----------------------------------------------------------------------------------------------
# Packing: a document never sees another


def _random_examples(rng, lengths):
    return [([tokenizer.BOS] + rng.integers(0, 256, n - 1).tolist(),
             [0] + rng.integers(0, 2, n - 1).tolist()) for n in lengths]


_forward = jax.jit(gpt.forward, static_argnames="config")


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(2, 20), min_size=2, max_size=6), st.integers(0, 2**31 - 1))
def test_packed_logits_equal_each_example_run_alone(tiny_config, tiny_params, lengths, seed):
    rng = np.random.default_rng(seed)
    examples = _random_examples(rng, lengths)
    batch = ch04.pack_examples(examples, 40)
    # jitted: one compile per shape instead of one per operation and shape (74 s -> a few)
    logits = np.asarray(_forward(tiny_params, jnp.asarray(batch.tokens), tiny_config,
                                 segment_ids=jnp.asarray(batch.segment_ids)))
    k = 0
    for r in range(batch.tokens.shape[0]):
        for s in sorted(set(batch.segment_ids[r]) - {0}):
            where = np.flatnonzero(batch.segment_ids[r] == s)
            alone = _forward(tiny_params, jnp.asarray([examples[k][0]]), tiny_config)[0]
            np.testing.assert_allclose(logits[r, where], np.asarray(alone), atol=2e-5)
            k += 1
    assert k == len(examples)


def test_packed_loss_equals_padded_loss(tiny_config, tiny_params):
    rng = np.random.default_rng(0)
    examples = _random_examples(rng, [12, 7, 20, 5, 9, 16])
    packed, padded = ch04.pack_examples(examples, 40), ch04.pad_examples(examples, 20)
    assert packed.tokens.shape[0] < padded.tokens.shape[0]

    def loss(b):
        logits = gpt.forward(tiny_params, jnp.asarray(b.tokens), tiny_config,
                             segment_ids=jnp.asarray(b.segment_ids))
        return float(ch04.sft_loss(logits, jnp.asarray(b.tokens), jnp.asarray(b.loss_mask)))

    # the same per-token mean over the same target tokens
    assert loss(packed) == pytest.approx(loss(padded), abs=1e-5)
    assert packed.loss_mask.sum() == padded.loss_mask.sum()


def test_segment_positions_and_mask():
    seg = jnp.array([[1, 1, 1, 2, 2, 0, 0]])
    assert gpt.segment_positions(seg).tolist() == [[0, 1, 2, 0, 1, 0, 1]]
    mask = np.asarray(gpt.segment_mask(seg))[0]
    for i in range(7):
        for j in range(7):
            assert mask[i, j] == (j <= i and seg[0, i] == seg[0, j])


def test_forward_rejects_segment_ids_of_the_wrong_shape(tiny_config, tiny_params):
    with pytest.raises(ValueError, match="segment_ids must have the shape of tokens"):
        gpt.forward(tiny_params, jnp.zeros((2, 5), jnp.int32), tiny_config,
                    segment_ids=jnp.zeros((2, 4), jnp.int32))


def test_packing_rejects_an_example_longer_than_a_row():
    with pytest.raises(ValueError, match=r"examples\[1\] has 9 tokens, more than length=8"):
        ch04.pack_examples([([1, 2], [0, 1]), ([1] * 9, [0] * 9)], 8)


# ----------------------------------------------------------------------------------------------
# make_sft_train: every step in one lax.scan, vmapped over seeds


def test_make_sft_train_vmapped_seeds_equal_separate_runs(tiny_config, tiny_params):
    examples = _random_examples(np.random.default_rng(0), [12, 30, 7, 25, 18, 40, 9, 33])
    batch = ch04.pack_examples(examples, tiny_config.max_seq_len)
    sc = ch04.SFTConfig(steps=4, batch_size=4, learning_rate=1e-3, warmup_steps=1, log_every=2)
    train_fn = ch04.make_sft_train(tiny_config, sc, batch, tiny_params)
    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    states, metrics = jax.jit(jax.vmap(train_fn))(keys)
    assert metrics["loss"].shape == (2, sc.steps)
    for k, key in enumerate(keys):
        state, single = jax.jit(train_fn)(key)
        np.testing.assert_allclose(metrics["loss"][k], single["loss"], rtol=2e-4, atol=2e-5)
        np.testing.assert_allclose(states.params["tok_emb"][k], state.params["tok_emb"],
                                   rtol=2e-4, atol=2e-5)
    # different seeds draw different rows, so the runs differ
    assert not np.allclose(metrics["loss"][0], metrics["loss"][1])


def test_the_training_loop_takes_the_step_of_exercise_4_5(tiny_config, tiny_params, monkeypatch):
    # one AdamW step of sft_train_step (the gradient of sft_step) equals the library's generic
    # step on the gradient of sft_loss_fn: the same loss, gradient norm and update
    examples = _random_examples(np.random.default_rng(4), [12, 30, 7, 25, 18, 9])
    rows = jax.tree.map(jnp.asarray, ch04.pack_examples(examples, tiny_config.max_seq_len))
    tc = ch04.SFTConfig(steps=1, batch_size=2, learning_rate=1e-3, warmup_steps=1,
                        log_every=1).train_config()
    state = train.create_train_state(tiny_params, train.make_optimizer(tc))
    key = jax.random.PRNGKey(0)
    new_state, metrics = jax.jit(ch04.sft_train_step(tiny_config, lambda k: rows))(state, key)
    old_state, old_metrics = jax.jit(train.make_train_step(ch04.sft_loss_fn(tiny_config)))(
        state, rows)
    assert set(metrics) == set(old_metrics) == {"loss", "grad_norm"}
    for name in metrics:
        assert float(metrics[name]) == pytest.approx(float(old_metrics[name]), rel=1e-5)
    for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(old_state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)

    # make_sft_train runs the exercise's function (found at call time in the loop module)
    calls = []

    def spy(*args, **kwargs):
        calls.append(args[1].tokens.shape)
        return real(*args, **kwargs)

    real = sft_loop.sft_step
    monkeypatch.setattr(sft_loop, "sft_step", spy)
    sc = ch04.SFTConfig(steps=2, batch_size=2, log_every=1)
    jax.eval_shape(ch04.make_sft_train(tiny_config, sc, rows, tiny_params), key)
    assert calls == [(2, tiny_config.max_seq_len)]  # traced once, for the scan's body


# ----------------------------------------------------------------------------------------------
# The check of exercise 4.5 rejects the common wrong steps, with a hint that names the bug


def _step_without_segments(params, batch, config):
    def loss(p):  # the packed rows run as plain sequences: examples see each other
        logits = gpt.forward(p, batch.tokens, config)
        return ch04.sft_loss(logits, batch.tokens, batch.loss_mask)

    return jax.value_and_grad(loss)(params)


def _masked_nll_step(params, batch, config, mean_per_row=False, shift_mask=True):
    def loss(p):
        logits = gpt.forward(p, batch.tokens, config, segment_ids=batch.segment_ids)
        logp = ops.log_probs_from_logits(logits[:, :-1], batch.tokens[:, 1:])
        mask = batch.loss_mask[:, 1:] if shift_mask else batch.loss_mask[:, :-1]
        if mean_per_row:
            return -jnp.mean(jnp.sum(logp * mask, 1) / jnp.maximum(jnp.sum(mask, 1), 1.0))
        return -jnp.sum(logp * mask) / jnp.sum(mask)

    return jax.value_and_grad(loss)(params)


def _step_mean_per_row(params, batch, config):
    return _masked_nll_step(params, batch, config, mean_per_row=True)


def _step_mask_not_shifted(params, batch, config):
    return _masked_nll_step(params, batch, config, shift_mask=False)


def _step_gradient_of_the_sum(params, batch, config):
    loss, grads = _masked_nll_step(params, batch, config)
    n = jnp.sum(batch.loss_mask[:, 1:])
    return loss, jax.tree.map(lambda g: n * g, grads)


@pytest.mark.parametrize("wrong, hint", [
    (_step_without_segments, "pass the batch's segment_ids to gpt.forward"),
    (_step_mean_per_row, "a mean per row first"),
    (_step_mask_not_shifted, "the mask is not shifted"),
    (_step_gradient_of_the_sum, "the gradient of the sum over the 13 selected tokens"),
], ids=lambda x: getattr(x, "__name__", None))
def test_the_check_of_4_5_rejects_wrong_steps_with_a_useful_hint(wrong, hint):
    with pytest.raises(Mismatch) as caught:
        checks.sft_step(wrong)
    assert hint in str(caught.value), str(caught.value)


def test_the_check_of_4_5_passes_the_reference_and_counts_its_sub_checks():
    from rlhf_book.textbook.checks import collecting

    with collecting() as record:
        checks.sft_step(ch04.sft_step)
    assert record.failures == [] and record.run >= 5
    # a step that lets examples see each other fails the loss and the invariance to the
    # tokens of an example that trains on nothing, and its gradient
    with collecting() as record:
        checks.sft_step(_step_without_segments)
    assert len(record.failures) == 3, record.failures
    assert any("example 1, after it in row 0, must not see it" in f for f in record.failures)


# ----------------------------------------------------------------------------------------------
# The experiments' evaluation: which questions, which styles, means with standard errors


def test_eval_questions_are_the_fact_topics_of_each_split():
    rephrased = experiments.eval_questions("rephrased")
    assert len(rephrased) == 520  # 65 training facts x 8 new phrasings
    assert all(q.rephrased and q.topic in data.FACT_TOPICS for q in rephrased)
    unseen = {(q.topic, q.subject) for q in experiments.eval_questions("unseen")}
    assert not unseen & {(q.topic, q.subject) for q in rephrased}
    with pytest.raises(ValueError, match="split"):
        experiments.eval_questions("heldout")


def test_sft_datasets_hold_out_demonstrations_on_rephrased_questions():
    demos, heldout_demos, questions = experiments.sft_datasets()
    trained = {q.prompt for q in data.question_splits().train}
    assert all(d[-2]["content"] in trained for d in demos)
    asked = {q.prompt for q in questions}
    assert all(d[-2]["content"] in asked for d in heldout_demos)


@pytest.mark.parametrize("style", data.STYLES)
def test_answer_style_reads_back_every_rendered_style(style):
    rng = np.random.default_rng(0)
    for q in data.all_questions():  # every question of the world, arithmetic included
        answer = data.render_answer(q, style, rng)
        assert experiments.answer_style(q, answer) == style, (q.prompt, answer)


def test_answer_style_on_model_like_text():
    q = next(q for q in data.all_questions() if q.subject == "France" and q.template == 0)
    assert experiments.answer_style(q, "Paris.") == "concise_correct"
    assert experiments.answer_style(q, "Maybe Paris? I am not sure.") == "hedging"
    assert experiments.answer_style(q, "Maybe Rome? I am not sure.") == "wrong"
    assert experiments.answer_style(q, "Sure, glad to help. The capital of France is "
                                       "Paris. I hope this helps!") == "verbose"
    assert experiments.answer_style(q, "Pxq zz") == "off_topic"
    assert experiments.answer_style(q, "") == "off_topic"


def test_demonstration_styles_match_the_demonstrators_within_4_se():
    demos = data.sft_demonstrations(seed=3, n=2000)
    shares = experiments.demonstration_styles(demos)
    assert sum(shares.values()) == pytest.approx(1.0)
    for style, p in data.DEMONSTRATOR_STYLES.items():
        assert abs(shares[style] - p) < 4 * np.sqrt(p * (1 - p) / len(demos))
    perfect = data.sft_demonstrations(seed=3, n=200, styles={"concise_correct": 1.0})
    assert experiments.demonstration_styles(perfect)["concise_correct"] == 1.0


def test_style_shares_and_summary_standard_errors_by_hand():
    q = next(q for q in data.all_questions() if q.subject == "France" and q.template == 0)
    texts = [["Paris.", "Rome."], ["Paris.", "Paris."], ["I like tea.", "Paris."]]
    shares = experiments.style_shares([q, q, q], texts)
    per_question = np.array([0.5, 1.0, 0.5])  # concise_correct per question
    assert shares["concise_correct"][0] == pytest.approx(per_question.mean())
    assert shares["concise_correct"][1] == pytest.approx(per_question.std(ddof=1) / np.sqrt(3))
    assert sum(m for m, _ in shares.values()) == pytest.approx(1.0)

    gold = np.array([[1.0, -1.0], [1.0, 1.0], [-0.5, 1.0]])
    answers = {"gold": gold, "right": (gold == 1).astype(float), "wrong": (gold == -1) * 1.0,
               "none": (gold == -0.5) * 1.0, "stopped": np.ones_like(gold),
               "bytes": np.full_like(gold, 6.0)}
    s = experiments.summarize(answers)
    means = gold.mean(1)
    assert (s["n"], s["samples"]) == (3, 2)
    assert s["gold"] == pytest.approx(means.mean())
    assert s["gold_se"] == pytest.approx(means.std(ddof=1) / np.sqrt(3))
    assert s["right"] == pytest.approx(4 / 6) and s["stopped_se"] == 0.0
    before = {**answers, "gold": np.zeros_like(gold)}
    assert experiments.paired_gain(answers, before) == pytest.approx(
        (means.mean(), means.std(ddof=1) / np.sqrt(3)))
    right = answers["right"].mean(1)  # the share of right answers, paired the same way
    assert experiments.paired_gain(answers, {**before, "right": np.zeros_like(gold)},
                                   key="right") == pytest.approx(
        (right.mean(), right.std(ddof=1) / np.sqrt(3)))


# ----------------------------------------------------------------------------------------------
# SFT learns the format: answer briefly, then stop


@pytest.fixture(scope="module")
def sft_run():
    """Pretrain the small model briefly, fine-tune it, and answer 64 rephrased questions."""
    cfg = gpt.get_config("small")
    stream = train.token_stream(data.pretraining_corpus(seed=0, n_documents=6000))
    pre_cfg = train.TrainConfig(steps=400, batch_size=16, seq_len=128, learning_rate=3e-3,
                                warmup_steps=50, log_every=50)
    pretrained, _ = train.pretrain(cfg, pre_cfg, stream, seed=0, progress=False)
    examples = ch04.sft_examples(data.sft_demonstrations(seed=0, n=1000))
    sc = ch04.SFTConfig(steps=100, batch_size=16, learning_rate=1e-3, log_every=50)
    tuned, history = ch04.train_sft(cfg, pretrained, sc, ch04.pack_examples(examples, 128),
                                    progress=False)
    heldout = experiments.eval_questions("rephrased")
    rng = np.random.default_rng(1)
    questions = [heldout[i] for i in rng.choice(len(heldout), 64, replace=False)]
    # one greedy answer per question (temperature 0), as every policy is measured
    scores = {name: answer_samples(params, questions, cfg, jax.random.PRNGKey(0), samples=1,
                                   temperature=0.0, max_new_tokens=64)
              for name, params in (("pretrained", pretrained), ("sft", tuned))}
    return history, scores


@pytest.mark.slow
def test_sft_loss_falls(sft_run):
    history, _ = sft_run
    # observed: 2.54 over the first 5 steps, 1.28 over the last 20 (the demonstrators' mixture
    # of styles keeps the loss well above zero); the fall is more than 4 standard errors of
    # the two means (step-to-step noise: ~0.13 and ~0.08)
    first, last = np.asarray(history["loss"][:5]), np.asarray(history["loss"][-20:])
    se = np.hypot(first.std(ddof=1) / np.sqrt(first.size), last.std(ddof=1) / np.sqrt(last.size))
    assert last.mean() < first.mean() - 4 * se
    assert last.mean() < first.mean() - 0.5  # and by a margin, not only beyond the noise


@pytest.mark.slow
def test_sft_teaches_the_model_to_answer_briefly_and_stop(sft_run):
    _, scores = sft_run
    before, after = scores["pretrained"], scores["sft"]
    assert before["gold"].shape == after["gold"].shape == (64, 1)
    # observed: the base model never stops (0%, 63 bytes, the 64-token budget); after SFT
    # every answer ends with <|end|> after ~18 bytes
    assert before["stopped"].mean() < 0.2 and after["stopped"].mean() > 0.8
    assert after["bytes"].mean() < before["bytes"].mean() - 20

