"""The chapter-7 RLVR loop: the arithmetic verifiers, a mixture of verifiers chosen by weights,
the RLVR step (exercise 7.8) graded by its check and wrong versions rejected, the loop equal to
chapter 6's GRPO step when configured alike, vmapped training, and bad configurations raising.

Expected values come from the verifiers' rules applied by hand to example texts, from chapter
6's loop (tested on its own against the book's equations), and from the grading check's float64
loops (``rlhf_book.textbook.checks.ch07_reasoning``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_book import ch06_policy_gradients as ch06
from rlhf_book import data
from rlhf_book.ch07_reasoning import loop
from rlhf_book.lm import gpt, rollout, tokenizer
from rlhf_book.textbook.checks import Mismatch

CONFIG = gpt.get_config("tiny")
SUM = data.Question("arithmetic", "What is 3 + 4?", "7", "3 + 4")


@pytest.fixture(scope="module")
def params():
    return gpt.init_params(jax.random.PRNGKey(0), CONFIG)


@pytest.fixture(scope="module")
def questions():
    return [SUM, data.Question("arithmetic", "What is 1 + 1?", "2", "1 + 1")]


def small_config(**kw):
    base = dict(algorithm="grpo", steps=2, prompts_per_step=2, group_size=4, max_new_tokens=8,
                learning_rate=1e-3, log_every=1)
    return ch06.RLConfig(**{**base, **kw})


# ----------------------------------------------------------------------------------------------
# Verifiers


@pytest.mark.parametrize("text, last, any_, strict", [
    ("The answer is 7.", 1, 1, 1),
    ("  The answer is 7.\n", 1, 1, 1),
    ("3 + 4 = 7.", 1, 1, 0),               # right, but not in the strict format
    ("7, 8, 9, 10", 0, 1, 0),              # the hack: list numbers; the last one is wrong
    ("The answer is 7. Or 8.", 0, 1, 0),
    ("I am not sure.", 0, 0, 0),           # abstaining scores the same 0 as a wrong answer
    ("The answer is 8.", 0, 0, 0),
    ("The answer is 17.", 0, 0, 0),        # 17 is not 7: whole numbers, not substrings
    ("", 0, 0, 0),
])
def test_the_three_verifiers(text, last, any_, strict):
    assert loop.last_integer_verifier(SUM, text) == last
    assert loop.any_integer_verifier(SUM, text) == any_
    assert loop.strict_format_verifier(SUM, text) == strict


def test_the_last_integer_verifier_is_the_worlds_rule():
    for text in ("The answer is 7.", "7, 8", "no", "3 + 4 = 7", "-7"):
        problem = data.ArithmeticProblem("What is 3 + 4?", 7)
        assert loop.last_integer_verifier(SUM, text) == data.verify(problem, text)


def test_verifier_mixture_weights_pick_and_mix_the_verifiers(questions):
    names = ("last_integer", "any_integer", "strict_format")
    reward = loop.verifier_mixture(questions, names)
    texts = ["The answer is 7.", "7, 8", "3 + 4 = 7.", "no"]
    prompts = rollout.encode_prompts([SUM.prompt] * len(texts))
    rows = [list(np.asarray(prompts.tokens[0][:int(prompts.lengths[0])])) + tokenizer.encode(t)
            for t in texts]
    width = max(map(len, rows))
    tokens = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width), np.float32)
    for i, row in enumerate(rows):
        tokens[i, :len(row)] = row
        mask[i, int(prompts.lengths[0]):len(row)] = 1.0
    ids = jnp.zeros(len(texts), jnp.int32)
    expected = np.array([[loop.VERIFIERS[n](SUM, t) for n in names] for t in texts])
    np.testing.assert_array_equal(reward.fn(reward.params, tokens, mask, ids), expected[:, 0])
    for w in (np.eye(3)[1], np.eye(3)[2], np.array([0.5, 0.25, 2.0])):
        got = jax.jit(reward.fn)(jnp.asarray(w, jnp.float32), tokens, mask, ids)
        np.testing.assert_allclose(got, expected @ w, rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# The step (exercise 7.8)


def test_rlvr_step_passes_its_check():
    from rlhf_book.textbook.checks import ch07_reasoning as checks
    checks.rlvr_step(loop.rlvr_step)


def _variant(normaliser_counts_dropped=False, unguarded_maxrl=False, kl_on_all_tokens=False):
    """A wrong rlvr_step, each a plausible slip."""
    from rlhf_book.ch06_policy_gradients.losses import (aggregate_loss, dynamic_sampling_mask,
                                                        ppo_objective)
    from rlhf_book.lm.kl import kl_k3
    from rlhf_book.lm.ops import log_probs_from_logits

    def fn(params, tokens, mask, rewards, old_logp, ref_logp, model_config, advantage="grpo",
           online_filter=True, beta=0.0, clip_low=0.2, clip_high=0.28, aggregation="per_token",
           temperature=1.0):
        rewards = jnp.asarray(rewards)
        B, G = rewards.shape
        keep = dynamic_sampling_mask(rewards) if online_filter else jnp.ones(B, bool)
        mean = rewards.mean(axis=1, keepdims=True)
        if advantage == "maxrl":
            adv = (rewards - mean) / mean if unguarded_maxrl else loop._group_advantages(
                rewards, advantage)
        else:
            adv = loop._group_advantages(rewards, advantage)
        adv = jnp.broadcast_to(adv.reshape(-1, 1), mask.shape)
        kept = mask * jnp.repeat(keep, G)[:, None]
        policy_mask = mask if normaliser_counts_dropped else kept
        kl_mask = mask if kl_on_all_tokens else kept

        def loss_fn(params):
            logits = gpt.forward(params, tokens, model_config)
            logp = log_probs_from_logits(logits[:, :-1] / temperature, tokens[:, 1:])
            logp = jnp.where(mask > 0, jnp.pad(logp, ((0, 0), (1, 0))), 0.0)
            ratio = jnp.exp(jnp.clip(logp - old_logp, -20, 20))
            a = jnp.where(kept > 0, adv, 0.0)
            policy = aggregate_loss(-ppo_objective(ratio, a, clip_low, clip_high), policy_mask,
                                    aggregation)
            return policy + beta * aggregate_loss(kl_k3(logp, ref_logp), kl_mask, aggregation)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        return loss, grads, keep

    return fn


@pytest.mark.parametrize("variant, hint", [
    (_variant(normaliser_counts_dropped=True), "nor in the normaliser"),
    (_variant(unguarded_maxrl=True), "not finite"),
    (_variant(kl_on_all_tokens=True), "the KL term too is over kept tokens only"),
])
def test_rlvr_step_check_rejects_wrong_versions(variant, hint):
    from rlhf_book.textbook.checks import ch07_reasoning as checks
    with pytest.raises((Mismatch, AssertionError)) as info:
        checks.rlvr_step(variant)
    assert hint in str(info.value)


# ----------------------------------------------------------------------------------------------
# The loop


def test_rlvr_loop_is_chapter_6s_grpo_step_when_configured_alike(params, questions):
    """GRPO's advantage, no online filter, per-sequence loss, clip 0.2: on one rollout the RLVR
    step's gradient is chapter 6's ``grpo_step``'s, and one step of either loop from the same
    state and key reports the same reward, loss and gradient norm. (The parameters after Adam's
    first step are not compared: Adam divides by |g|, so float round-off in coordinates whose
    gradient is ~0 becomes a +-lr step.)"""
    config = small_config(steps=1)
    prompts = rollout.encode_prompts([q.prompt for q in questions])
    reward = loop.verifier_reward(questions, "any_integer")
    state = ch06.init_rl_state(config, CONFIG, params, reward)
    key = jax.random.PRNGKey(3)
    batch = ch06.rollout(state, key, config, CONFIG, prompts, reward)
    rewards = batch.scores.reshape(config.prompts_per_step, config.group_size)
    args = (params, batch.tokens, batch.mask, rewards, batch.old_logp, batch.ref_logp, CONFIG)
    loss, grads, keep = loop.rlvr_step(*args, advantage="grpo", online_filter=False,
                                       beta=config.beta, clip_low=0.2, clip_high=0.2,
                                       aggregation="per_sequence")
    ref_loss, ref_grads, _ = ch06.grpo_step(*args, beta=config.beta)
    assert bool(np.all(keep))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6, atol=1e-7)
    for x, y in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)
    ours = loop.make_rlvr_step(config, CONFIG, prompts, reward, "grpo", online_filter=False)
    theirs = ch06.make_rl_step(config, CONFIG, prompts, reward)
    _, ma = jax.jit(ours)(state, key)
    _, mb = jax.jit(theirs)(state, key)
    for name in ("score", "length", "stopped", "loss", "grad_norm"):
        np.testing.assert_allclose(ma[name], mb[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_vmapped_training_over_seeds_and_verifier_weights(params, questions):
    config = small_config(steps=3)
    prompts = rollout.encode_prompts([q.prompt for q in questions])
    reward = loop.verifier_mixture(questions, ("last_integer", "any_integer"))
    train = loop.make_rlvr_train(config, CONFIG, params, prompts, reward, "maxrl")
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    betas = jnp.array([0.0, 0.0, 0.02, 0.02])
    weights = jnp.array([[1.0, 0.0], [0.0, 1.0]] * 2)
    state, metrics = jax.jit(jax.vmap(train))(keys, betas, weights)
    for name, value in metrics.items():
        assert value.shape == (4, 3), name
        assert np.all(np.isfinite(value)), name
    assert np.all((metrics["kept"] >= 0) & (metrics["kept"] <= 1))
    assert np.all(metrics["solved"] >= metrics["kept"])  # a kept group has a right answer
    # the first step samples from the starting policy with each seed's key: rewards can differ
    # by verifier, the KL at step 0 is 0 (policy = reference)
    np.testing.assert_allclose(metrics["kl"][:, 0], 0.0, atol=1e-5)


def test_solved_counts_groups_with_a_right_answer(params, questions):
    """With a reward that is always 1, every group is solved and none is kept (all tie)."""
    config = small_config(steps=1)
    prompts = rollout.encode_prompts([q.prompt for q in questions])
    always = rollout.Reward(lambda p, tokens, mask, ids: jnp.ones(ids.shape, jnp.float32))
    state = ch06.init_rl_state(config, CONFIG, params, always)
    new, metrics = jax.jit(loop.make_rlvr_step(config, CONFIG, prompts, always))(
        state, jax.random.PRNGKey(0))
    assert float(metrics["solved"]) == 1.0 and float(metrics["kept"]) == 0.0
    assert float(metrics["loss"]) == 0.0
    for x, y in zip(jax.tree.leaves(new.params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(x, y)  # no signal, no gradient: Adam's first step is 0


@pytest.mark.parametrize("kw, match", [
    (dict(epochs=2), "epochs=1"),
    (dict(minibatches=2), "minibatches=1"),
    (dict(tis_cap=2.0), "tis_cap=None"),
    (dict(algorithm="ppo"), "must not be 'ppo'"),
])
def test_bad_configs_raise(kw, match, questions):
    prompts = rollout.encode_prompts([q.prompt for q in questions])
    with pytest.raises(ValueError, match=match):
        loop.make_rlvr_step(small_config(**kw), CONFIG, prompts,
                            loop.verifier_reward(questions))


def test_bad_arguments_raise(questions):
    prompts = rollout.encode_prompts([q.prompt for q in questions])
    with pytest.raises(ValueError, match="advantage"):
        loop.make_rlvr_step(small_config(), CONFIG, prompts, loop.verifier_reward(questions),
                            advantage="ppo")
    with pytest.raises(ValueError, match="verifier"):
        loop.verifier_reward(questions, "exact")
    with pytest.raises(ValueError, match="verifiers"):
        loop.verifier_mixture(questions, "last_integer")
    with pytest.raises(ValueError, match="verifiers"):
        loop.verifier_mixture(questions, ("last_integer", "regex"))
    with pytest.raises(ValueError, match="rewards"):
        loop.rlvr_step(None, jnp.ones((8, 4), jnp.int32), jnp.ones((8, 4)), jnp.ones((3, 2)),
                       jnp.zeros((8, 4)), jnp.zeros((8, 4)), CONFIG)


# ----------------------------------------------------------------------------------------------
# The experiments' curves, against plain loops


def test_vote_curve_is_the_majority_vote_of_disjoint_cuts():
    from rlhf_book import ch07_reasoning as ch07
    from rlhf_book.ch07_reasoning import experiments
    rng = np.random.default_rng(0)
    answers = rng.integers(-1, 6, (2, 8, 5))  # -1: no answer, which does not vote
    gold = rng.integers(0, 6, 5)
    got = experiments.vote_curve(answers, gold, (1, 2, 4, 8))
    for s in range(2):
        for j, N in enumerate((1, 2, 4, 8)):
            hits = [ch07.majority_vote([None if a < 0 else int(a)
                                        for a in answers[s, c * N:(c + 1) * N, q]]) == gold[q]
                    for c in range(8 // N) for q in range(5)]
            assert got[s, j] == pytest.approx(np.mean(hits))


def test_pass_at_k_curve_is_the_mean_of_math_comb():
    import math
    from rlhf_book.ch07_reasoning import experiments
    rng = np.random.default_rng(1)
    correct = rng.random((3, 6, 7)) < 0.3
    got = experiments.pass_at_k_curve(correct, (1, 3, 6))
    for s in range(3):
        c = correct[s].sum(0)
        for j, k in enumerate((1, 3, 6)):
            want = np.mean([1 - math.comb(6 - int(ci), k) / math.comb(6, k) for ci in c])
            assert got[s, j] == pytest.approx(want, abs=1e-6)


def test_best_of_n_curves_pick_as_plain_loops_do():
    from rlhf_book import ch07_reasoning as ch07
    from rlhf_book.ch07_reasoning import experiments
    rng = np.random.default_rng(2)
    n, Q, Ns = 8, 5, (1, 2, 4, 8)
    questions = [data.Question("arithmetic", f"What is {q} + 1?", str(q + 1), f"{q} + 1")
                 for q in range(Q)]
    answers = rng.integers(-1, 7, (n, Q))  # -1: no number in the reply
    texts = [["I am not sure." if a < 0 else f"The answer is {a}." for a in row]
             for row in answers]
    stats = experiments.answer_stats(questions, texts)
    scores = rng.normal(size=(n, Q))
    got = experiments.best_of_n_curves(questions, stats, scores, Ns)
    for j, N in enumerate(Ns):
        for q in range(Q):
            gold, cuts = q + 1, [range(c * N, (c + 1) * N) for c in range(n // N)]
            verifier = [any(answers[i, q] == gold for i in cut) for cut in cuts]
            judged = [answers[max(cut, key=lambda i: scores[i, q]), q] == gold for cut in cuts]
            vote = [ch07.majority_vote([None if answers[i, q] < 0 else int(answers[i, q])
                                        for i in cut]) == gold for cut in cuts]
            assert got["verifier"][j, q] == pytest.approx(np.mean(verifier))
            assert got["reward model"][j, q] == pytest.approx(np.mean(judged))
            assert got["majority vote"][j, q] == pytest.approx(np.mean(vote))
        assert got["chars"][j] == pytest.approx(N * np.mean([len(t) for row in texts for t in row]))
    assert np.all(np.diff(got["verifier"].mean(1)) >= 0)  # pass@N never falls with N


def test_shows_work_and_accuracy_by_work_by_hand():
    from rlhf_book.ch07_reasoning import experiments
    texts = np.array([["7 + 8 = 15, 4 + 3 + 1 = 8. The answer is 85.", "The answer is 85."],
                      ["The answer is 84.", "5 + 5 = 10, 1 + 1 + 1 = 3. The answer is 30."]],
                     dtype=object)
    work = experiments.shows_work(texts)
    np.testing.assert_array_equal(work, [[1.0, 0.0], [0.0, 1.0]])
    # [samples, sums]: sum 0 is right when worked, wrong when direct; sum 1 the other way
    stats = {"correct": np.array([[1.0, 1.0], [0.0, 0.0]])}
    got = experiments.accuracy_by_work(stats, work)
    # per sum, then over the 2 sums: accuracies (1, 0) and (0, 1), se = std / sqrt(2) = 0.5
    assert got["direct"] == pytest.approx((0.5, 0.5, 0.5))
    assert got["worked"] == pytest.approx((0.5, 0.5, 0.5))
    # paired per sum: worked - direct = +1 and -1
    assert experiments.work_gain(stats, work) == pytest.approx((0.0, 1.0, 2))
    # a sum with one kind only drops out of the pairing
    stats = {"correct": np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 1.0]])}
    work3 = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    assert experiments.work_gain(stats, work3) == pytest.approx((0.0, 1.0, 2))
    assert experiments.accuracy_by_work(stats, work3)["worked"][:2] == \
        pytest.approx((np.mean([1.0, 0.0, 1.0]), np.std([1.0, 0.0, 1.0], ddof=1) / np.sqrt(3)))


def test_audit_scratchpads_checks_each_step_as_column_addition_does():
    from rlhf_book.ch07_reasoning import experiments
    q = [data.Question("arithmetic", "What is 47 + 38?", "85", "47 + 38"),
         data.Question("arithmetic", "What is 21 + 34?", "55", "21 + 34")]
    texts = [[data.scratchpad(47, 38), data.scratchpad(21, 34)],
             ["7 + 8 = 14, 4 + 3 + 1 = 8. The answer is 84.",   # a false fact, answer follows
              "2 + 3 = 5, 1 + 4 + 1 = 6. The answer is 55."],   # wrong columns, a carry from nowhere, answer does not follow
             ["The answer is 85.", "1 + 4 = 5. The answer is 5."]]  # direct or one step: not audited
    got = experiments.audit_scratchpads(q, texts)
    assert got == {"facts": 0.75, "columns": 0.75, "carry": 0.75, "follows": 0.75, "replies": 4}
    per_sum = experiments.audit_scratchpads(q, texts, by_sum=True)
    # sum 0: the scratchpad (all pass) and a false fact; sum 1: the scratchpad and a bad reply
    np.testing.assert_allclose(per_sum["facts"], [0.5, 1.0])
    np.testing.assert_allclose(per_sum["columns"], [1.0, 0.5])
    np.testing.assert_allclose(per_sum["follows"], [1.0, 0.5])
    assert per_sum["replies"] == 4


def test_best_of_n_curves_and_sum_sets_name_their_bad_arguments():
    from rlhf_book.ch07_reasoning import experiments
    q = [data.Question("arithmetic", "What is 1 + 1?", "2", "1 + 1")]
    stats = experiments.answer_stats(q, [["The answer is 2."], ["3"]])
    with pytest.raises(ValueError, match="Ns"):
        experiments.best_of_n_curves(q, stats, np.zeros((2, 1)), (1, 4))
    with pytest.raises(ValueError, match="scores"):
        experiments.best_of_n_curves(q, stats, np.zeros((3, 1)), (1,))
    with pytest.raises(ValueError, match="n_eval"):
        experiments.sum_sets(n_eval=0)
