"""Chapter 8's DPO loop: bad configs raise, the batch loss equals the DPO family on log-probs from
an independent forward + NumPy gather, step 0 is log 2, jit == eager, vmap over seeds (and NLL
weights) == one run at a time, on-policy pairs are best vs worst with ties weighted 0; and, on a
small SFT model of the synthetic world, offline DPO learns the annotators' preferences and raises
the gold reward, plain DPO displaces the chosen completions' probability (the NLL term curbs
it), and on-policy DPO labelled by the gold reward raises the gold reward."""

from __future__ import annotations

import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_book import ch04_instruction_tuning as ch04
from rlhf_book import ch06_policy_gradients as ch06
from rlhf_book import ch08_direct_alignment as ch08
from rlhf_book import data
from rlhf_book.lm import gpt, tokenizer
from rlhf_book.lm.eval import evaluate_policy
from rlhf_book.textbook import catalog, stubs
from rlhf_book.textbook.checks import Mismatch
from rlhf_book.textbook.checks import ch08_direct_alignment as checks

TINY = gpt.get_config("tiny")  # 64 tokens of context: short toy pairs only

TOY_PAIRS = [
    SimpleNamespace(prompt="Hi.", chosen="Hello!", rejected="Go away."),
    SimpleNamespace(prompt="What is 2 + 2?", chosen="4.", rejected="2 + 2 = 5, I think."),
    SimpleNamespace(prompt="Sky?", chosen="Blue.", rejected="Green, maybe."),
    SimpleNamespace(prompt="Say a.", chosen="a", rejected="b b b b b b"),
]


@pytest.fixture(scope="module")
def policy():
    return gpt.init_params(jax.random.PRNGKey(0), TINY)


@pytest.fixture(scope="module")
def reference():
    # a different random model, so that every log-ratio h is non-zero
    return gpt.init_params(jax.random.PRNGKey(1), TINY)


@pytest.fixture(scope="module")
def toy_batch():
    return ch08.encode_preference_pairs(TOY_PAIRS)


@pytest.fixture(scope="module")
def oracle(policy, reference, toy_batch):
    """The policy's token log-probs ``c, r [N, T]`` of the toy pairs and the reference's
    sequence log-probs ``rc, rr [N]``, by the NumPy gather loop below."""
    c, r = np_pair_logps(policy, toy_batch)
    rc, rr = (x.sum(1) for x in np_pair_logps(reference, toy_batch))
    ref = ch08.RefLogProbs(jnp.asarray(rc, jnp.float32), jnp.asarray(rr, jnp.float32))
    return SimpleNamespace(c=c, r=r, rc=rc, rr=rr, ref=ref)


# ----------------------------------------------------------------------------------------------
# Independent oracles: token layout, a NumPy gather loop over a plain forward pass, the formulas


def expected_rows(prompt, completion):
    """Tokens and completion mask written out from the chat template's definition."""
    head = [tokenizer.BOS, tokenizer.USER, *tokenizer.encode(prompt), tokenizer.END,
            tokenizer.ASSISTANT]
    body = [*tokenizer.encode(completion), tokenizer.END]
    return head + body, [0] * len(head) + [1] * len(body)


def np_log_softmax_row(z):
    z = np.asarray(z, np.float64)
    m = z.max()
    return z - (m + np.log(np.sum(np.exp(z - m))))


def np_token_logps(params, tokens, mask, config=TINY):
    """``[N, T]`` log-probs of the masked tokens (0 elsewhere): the plain forward pass, then a
    Python loop that reads ``logits[n, t - 1]`` for token ``t``."""
    tokens, mask = np.asarray(tokens), np.asarray(mask)
    logits = np.asarray(gpt.forward(params, jnp.asarray(tokens), config), np.float64)
    out = np.zeros(tokens.shape)
    for n in range(tokens.shape[0]):
        for t in range(1, tokens.shape[1]):
            if mask[n, t]:
                out[n, t] = np_log_softmax_row(logits[n, t - 1])[tokens[n, t]]
    return out


def np_pair_logps(params, batch):
    c = np_token_logps(params, batch.chosen, batch.chosen_mask)
    r = np_token_logps(params, batch.rejected, batch.rejected_mask)
    return c, r


def np_log_sigmoid(z):
    return -np.logaddexp(0.0, -z)


def np_pair_losses(loss, pc, pr, rc, rr, ac, ar, beta, eps=0.0, gamma=0.5):
    """Per-pair losses of each name of ``ch08.LOSSES`` in float64: the grading checks' oracles
    (book §8.2 and the papers, TRL's conventions), plus robust DPO and the hinge."""
    h = (pc - pr) - (rc - rr)
    if loss in ("dpo", "cdpo"):
        return checks.dpo_loss_oracle(pc, pr, rc, rr, beta, eps)
    if loss == "robust":
        return (-(1 - eps) * np_log_sigmoid(beta * h) + eps * np_log_sigmoid(-beta * h)) / (1 - 2 * eps)
    if loss == "ipo":
        return checks.ipo_loss_oracle(pc, pr, rc, rr, beta)
    if loss == "hinge":
        return np.maximum(0.0, 1 - beta * h)
    if loss == "simpo":
        return checks.simpo_loss_oracle(ac, ar, beta, gamma)
    return beta * checks.orpo_loss_oracle(ac, ar)  # orpo: lambda times the odds-ratio term


# ----------------------------------------------------------------------------------------------
# Configuration and encoding


@pytest.mark.parametrize("kw, match", [
    (dict(loss="kto"), "loss"),
    (dict(beta=0.0), "beta"),
    (dict(beta=-0.1), "beta"),
    (dict(label_smoothing=0.1), "label_smoothing"),  # only cdpo and robust read it
    (dict(loss="cdpo", label_smoothing=0.5), "label_smoothing"),
    (dict(loss="robust", label_smoothing=-0.1), "label_smoothing"),
    (dict(nll_coef=-1.0), "nll_coef"),
    (dict(steps=0), "steps"),
    (dict(batch_size=2.5), "batch_size"),
    (dict(completions_per_prompt=1), "completions_per_prompt"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(learning_rate=0.0), "learning_rate"),
    (dict(max_grad_norm=0.0), "max_grad_norm"),
    (dict(temperature=0.0), "temperature"),
    (dict(on_policy="yes"), "on_policy"),
    (dict(log_every=0), "log_every"),
])
def test_bad_configs_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        ch08.DPOConfig(**kw)


def test_good_configs_build():
    ch08.DPOConfig(loss="cdpo", label_smoothing=0.1)
    ch08.DPOConfig(loss="robust", label_smoothing=0.2)
    ch08.DPOConfig(loss="orpo", nll_coef=1.0)
    assert set(ch08.REFERENCE_FREE) <= set(ch08.LOSSES)
    # the loop's table of losses, {name: fn}, under the names DPOConfig.loss takes
    assert list(ch08.LOSSES) == ["dpo", "cdpo", "robust", "ipo", "hinge", "simpo", "orpo"]
    assert all(callable(fn) for fn in ch08.LOSSES.values())


def test_encode_preference_pairs_masks_exactly_the_completion(toy_batch):
    T = max(len(expected_rows(p.prompt, y)[0]) for p in TOY_PAIRS for y in (p.chosen, p.rejected))
    assert toy_batch.chosen.shape == toy_batch.rejected.shape == (len(TOY_PAIRS), T)
    for n, p in enumerate(TOY_PAIRS):
        for tokens, mask, text in ((toy_batch.chosen, toy_batch.chosen_mask, p.chosen),
                                   (toy_batch.rejected, toy_batch.rejected_mask, p.rejected)):
            ids, m = expected_rows(p.prompt, text)
            k = len(ids)
            np.testing.assert_array_equal(np.asarray(tokens[n, :k]), ids)
            np.testing.assert_array_equal(np.asarray(mask[n, :k]), m)
            assert np.all(np.asarray(tokens[n, k:]) == tokenizer.PAD)
            assert np.all(np.asarray(mask[n, k:]) == 0)
    np.testing.assert_array_equal(np.asarray(toy_batch.weight), 1.0)


def test_encode_preference_pairs_rejects_bad_input():
    with pytest.raises(ValueError, match="pairs"):
        ch08.encode_preference_pairs([])
    with pytest.raises(ValueError, match="pairs"):
        ch08.encode_preference_pairs([SimpleNamespace(prompt="a", chosen="b")])
    with pytest.raises(ValueError, match="length"):
        ch08.encode_preference_pairs(TOY_PAIRS, length=5)


# ----------------------------------------------------------------------------------------------
# The batch loss against the oracles


def test_pair_log_probs_match_a_numpy_gather_loop(policy, toy_batch):
    c, r = np_pair_logps(policy, toy_batch)
    got = ch08.pair_log_probs(policy, toy_batch, TINY, chunk_size=3)  # a padded last chunk
    np.testing.assert_allclose(got.chosen, c.sum(1), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got.rejected, r.sum(1), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("nll_coef", [0.0, 0.7])
def test_batch_loss_is_dpo_loss_on_independent_log_probs(policy, toy_batch, oracle, nll_coef):
    """With ``nll_coef = 0`` the loss is exactly ``ch08.dpo_loss`` (plain DPO, eq. 79) on the
    oracle's sequence log-probs; with ``nll_coef > 0`` it adds the NLL per chosen token (TRL's
    rpo_alpha term); every TRL metric matches its definition."""
    beta = 0.3
    pc, pr, rc, rr = oracle.c.sum(1), oracle.r.sum(1), oracle.rc, oracle.rr
    config = ch08.DPOConfig(beta=beta, nll_coef=nll_coef)
    loss, m = ch08.dpo_batch_loss(policy, oracle.ref, toy_batch, config, TINY)
    plain = float(jnp.mean(ch08.dpo_loss(pc, pr, rc, rr, beta)))
    np_plain = float(np.mean(checks.dpo_loss_oracle(pc, pr, rc, rr, beta)))
    assert plain == pytest.approx(np_plain, rel=1e-6)
    nll = -oracle.c.sum() / np.asarray(toy_batch.chosen_mask).sum()
    assert float(loss) == pytest.approx(plain + nll_coef * nll, rel=1e-5, abs=1e-6)
    assert float(m["loss/preference"]) == pytest.approx(plain, rel=1e-5)
    assert float(m["nll"]) == pytest.approx(nll, rel=1e-5)
    rew_c, rew_r = beta * (pc - rc), beta * (pr - rr)
    expected = {"rewards/chosen": rew_c.mean(), "rewards/rejected": rew_r.mean(),
                "rewards/margins": (rew_c - rew_r).mean(),
                "rewards/accuracies": (rew_c > rew_r).mean(),
                "logps/chosen": pc.mean(), "logps/rejected": pr.mean()}
    for name, value in expected.items():
        assert float(m[name]) == pytest.approx(value, rel=1e-4, abs=1e-5), name


def oracle_inputs(oracle, toy_batch):
    ac = oracle.c.sum(1) / np.asarray(toy_batch.chosen_mask).sum(1)
    ar = oracle.r.sum(1) / np.asarray(toy_batch.rejected_mask).sum(1)
    return oracle.c.sum(1), oracle.r.sum(1), oracle.rc, oracle.rr, ac, ar


@pytest.mark.parametrize("loss", ch08.LOSSES)
def test_every_loss_matches_its_formula(toy_batch, oracle, loss):
    """Each family member's per-pair loss, as the loop calls it, against the formulas in
    NumPy (sums for the reference-based losses, per-token averages for SimPO and ORPO)."""
    beta, eps = 0.2, (0.1 if loss in ("cdpo", "robust") else 0.0)
    pc, pr, rc, rr, ac, ar = oracle_inputs(oracle, toy_batch)
    config = ch08.DPOConfig(loss=loss, beta=beta, label_smoothing=eps, simpo_gamma=0.5)
    free = loss in ch08.REFERENCE_FREE
    got = ch08.preference_losses(*((ac, ar) if free else (pc, pr)), rc, rr, config)
    want = np_pair_losses(loss, pc, pr, rc, rr, ac, ar, beta, eps, 0.5)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("loss", ["simpo", "orpo", "ipo"])
def test_batch_loss_feeds_each_loss_its_log_probs(policy, toy_batch, oracle, loss):
    """``dpo_batch_loss`` gives SimPO and ORPO the per-token averages and IPO the sums, and
    reports the reference-free losses' rewards as ``beta`` times the average (TRL's CPO)."""
    beta = 0.2
    pc, pr, rc, rr, ac, ar = oracle_inputs(oracle, toy_batch)
    config = ch08.DPOConfig(loss=loss, beta=beta)
    _, m = ch08.dpo_batch_loss(policy, oracle.ref, toy_batch, config, TINY)
    want = np_pair_losses(loss, pc, pr, rc, rr, ac, ar, beta).mean()
    assert float(m["loss/preference"]) == pytest.approx(want, rel=1e-4, abs=1e-6)
    if loss in ch08.REFERENCE_FREE:
        assert float(m["rewards/chosen"]) == pytest.approx(beta * ac.mean(), rel=1e-4)


def test_zero_weight_pairs_do_not_count(policy, toy_batch, oracle):
    """A pair of weight 0 (an on-policy tie) leaves the loss, the NLL and the metrics to the
    others; a batch of only such pairs gives loss 0 and zero gradients, never NaN."""
    beta = 0.5
    w = np.array([1.0, 0.0, 1.0, 0.0], np.float32)
    batch = toy_batch._replace(weight=jnp.asarray(w))
    config = ch08.DPOConfig(beta=beta, nll_coef=1.0)
    fn = jax.jit(jax.value_and_grad(ch08.dpo_batch_loss, has_aux=True), static_argnums=(3, 4))
    (loss, m), _ = fn(policy, oracle.ref, batch, config, TINY)
    keep = w > 0
    h = (oracle.c.sum(1) - oracle.r.sum(1)) - (oracle.rc - oracle.rr)
    nll = -oracle.c[keep].sum() / np.asarray(toy_batch.chosen_mask)[keep].sum()
    want = np.mean(checks.dpo_loss_oracle(h[keep], 0 * h[keep], 0 * h[keep], 0 * h[keep], beta)) + nll
    assert float(loss) == pytest.approx(want, rel=1e-5)
    assert float(m["logps/chosen"]) == pytest.approx(oracle.c.sum(1)[keep].mean(), rel=1e-5)

    empty = toy_batch._replace(weight=jnp.zeros(len(TOY_PAIRS)))
    (loss, m), grads = fn(policy, oracle.ref, empty, config, TINY)
    assert float(loss) == 0.0
    assert all(np.isfinite(float(v)) for v in m.values())
    assert max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads)) == 0.0


def test_step_zero_is_log_2_with_tied_rewards(policy, toy_batch):
    """At pi = pi_ref every h is 0: the loss is log 2, every implicit
    reward is 0, so the strict accuracy (TRL's chosen > rejected) is 0 and the margin 0; the
    held-out accuracy, which counts ties as 1/2, is 0.5."""
    config = ch08.DPOConfig(beta=0.1)
    # the reference's log-probs by the very computation the loss runs, so the ties are exact
    chosen, rejected = ch08.completion_log_probs(policy, toy_batch, TINY)
    ref = ch08.RefLogProbs(chosen["sum"], rejected["sum"])
    loss, m = ch08.dpo_batch_loss(policy, ref, toy_batch, config, TINY)
    assert float(loss) == pytest.approx(math.log(2.0), abs=1e-6)
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        assert abs(float(m[name])) < 1e-6, name
    assert float(m["rewards/accuracies"]) == 0.0
    acc = ch08.implicit_reward_accuracy(policy, policy, TOY_PAIRS, TINY, beta=0.1)
    assert acc["accuracy"] == 0.5 and acc["margin"] == 0.0
    assert np.isnan(acc["gold_accuracy"]) and acc["n_gold"] == 0  # toy pairs carry no gold


@pytest.mark.parametrize("loss_name, label_smoothing, nll_coef",
                         [("dpo", 0.0, 0.0), ("cdpo", 0.1, 1.0)])
def test_the_dpo_step_exercise_is_the_loops_update(policy, toy_batch, oracle, loss_name,
                                                   label_smoothing, nll_coef):
    """For DPO and cDPO the loop's step is ``dpo_step`` (8.8): its loss and gradient equal
    those of ``dpo_batch_loss``, which every other loss takes, and so do the metrics (the
    NLL's, from sequence sums instead of tokens, up to float round-off); a pair of weight 0
    counts for nothing in either."""
    config = ch08.DPOConfig(loss=loss_name, beta=0.5, label_smoothing=label_smoothing,
                            nll_coef=nll_coef)
    batch = toy_batch._replace(weight=jnp.asarray([1.0, 0.0, 1.0, 1.0]))
    (loss, metrics), grads = jax.value_and_grad(ch08.dpo_batch_loss, has_aux=True)(
        policy, oracle.ref, batch, config, TINY)
    step_loss, step_grads, (pc, pr) = ch08.dpo_step(policy, batch, oracle.ref, TINY, config.beta,
                                                    config.label_smoothing, config.nll_coef)
    np.testing.assert_allclose(float(step_loss), float(loss), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(step_grads), jax.tree.leaves(grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(np.asarray(pc), oracle.c.sum(1), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(pr), oracle.r.sum(1), rtol=1e-5)
    step_grads, step_metrics = ch08.loop._dpo_step_and_metrics(policy, oracle.ref, batch,
                                                               config, TINY)
    assert step_metrics.keys() == metrics.keys()
    for name in metrics:
        np.testing.assert_allclose(float(step_metrics[name]), float(metrics[name]), rtol=1e-5,
                                   atol=1e-7, err_msg=name)


def test_batch_loss_jit_equals_eager(policy, toy_batch, oracle):
    config = ch08.DPOConfig(beta=0.2, nll_coef=0.5)
    loss, m = ch08.dpo_batch_loss(policy, oracle.ref, toy_batch, config, TINY)
    loss_j, m_j = jax.jit(ch08.dpo_batch_loss, static_argnums=(3, 4))(policy, oracle.ref,
                                                                      toy_batch, config, TINY)
    assert float(loss_j) == pytest.approx(float(loss), rel=1e-5)
    for name in m:
        assert float(m_j[name]) == pytest.approx(float(m[name]), rel=1e-4, abs=1e-6), name


# ----------------------------------------------------------------------------------------------
# The training loop: jit, vmap, on-policy pairs


def tiny_config(**kw):
    base = dict(steps=3, batch_size=2, learning_rate=1e-3, beta=0.5, log_every=1)
    return ch08.DPOConfig(**{**base, **kw})


def test_vmap_over_seeds_and_nll_coefs_equals_one_run_at_a_time(policy, toy_batch):
    """One compilation trains two seeds x two NLL weights; each equals its own run."""
    config = tiny_config(steps=2)
    train = ch08.make_dpo_train(config, TINY, policy, toy_batch)
    keys = jax.random.split(jax.random.PRNGKey(4), 2)
    coefs = jnp.array([0.0, 0.5])
    state, batched = jax.jit(jax.vmap(train, in_axes=(0, None, None, 0)))(keys, None, None, coefs)
    assert batched["loss"].shape == (2, config.steps)
    single_train = jax.jit(train)  # one compilation for both (the coefficient is traced)
    for k in range(2):
        single_state, single = single_train(keys[k], None, None, coefs[k])
        for name in ("loss", "nll", "rewards/margins", "logps/chosen", "grad_norm"):
            np.testing.assert_allclose(batched[name][k], single[name], rtol=2e-4, atol=2e-5,
                                       err_msg=name)
        np.testing.assert_allclose(state.params["tok_emb"][k], single_state.params["tok_emb"],
                                   rtol=2e-4, atol=2e-6)
    assert not np.allclose(batched["loss"][0], batched["loss"][1])  # really two settings


def test_train_dpo_runs_in_chunks(policy, toy_batch):
    config = tiny_config(steps=2, log_every=1)
    params, history = ch08.train_dpo(config, TINY, policy, toy_batch, progress=False)
    assert len(history["loss"]) == 2 and "eval_step" not in history
    assert history["loss"][0] == pytest.approx(math.log(2.0), abs=1e-6)
    # A last, shorter chunk is compiled once more: 3 steps in chunks of 2.
    _, history = ch08.train_dpo(tiny_config(steps=3, log_every=2), TINY, policy, toy_batch,
                                progress=False, evaluate=lambda state: {"steps": int(state.step)})
    assert len(history["loss"]) == 3 and history["step"].tolist() == [1, 2, 3]
    assert history["eval_step"].tolist() == [2, 3] and history["eval_steps"].tolist() == [2, 3]


def test_make_dpo_train_checks_its_data(policy, toy_batch):
    prompts = ch06.encode_prompts(["Hi."])
    with pytest.raises(ValueError, match="PreferenceBatch"):
        ch08.make_dpo_train(tiny_config(), TINY, policy, prompts=prompts)
    with pytest.raises(ValueError, match="prompts"):
        ch08.make_dpo_train(tiny_config(on_policy=True), TINY, policy, toy_batch)
    reward = ch06.Reward(lambda p, t, m, i: jnp.zeros(t.shape[0]))
    with pytest.raises(ValueError, match="max_seq_len"):
        ch08.make_dpo_train(tiny_config(on_policy=True, max_new_tokens=64), TINY, policy,
                            prompts=prompts, reward=reward)


LETTER = ord("a")


def letter_count(params, tokens, mask, prompt_ids):
    """A pure-JAX reward: how many completion tokens are the byte 'a' (ties are common)."""
    del params, prompt_ids
    return jnp.sum((tokens == LETTER) * mask, axis=1).astype(jnp.float32)


def test_on_policy_pairs_are_best_versus_worst_and_ties_get_weight_zero(policy):
    prompts = ch06.encode_prompts(["Say a.", "Hi.", "Sky?"])
    config = tiny_config(on_policy=True, batch_size=3, completions_per_prompt=4,
                         max_new_tokens=12)
    reward = ch06.Reward(letter_count)
    state = ch08.init_dpo_state(config, policy, reward)
    # a temperature of 1 on a random model: letters 'a' are rare, so some groups tie
    pairs = jax.jit(lambda s, k: ch08.on_policy_pairs(s, k, config, TINY, prompts, reward))
    batch, ref, info = pairs(state, jax.random.PRNGKey(5))
    # recompute the score of every chosen and rejected completion with the reward itself
    s_c = np.asarray(letter_count(None, batch.chosen, batch.chosen_mask, None))
    s_r = np.asarray(letter_count(None, batch.rejected, batch.rejected_mask, None))
    assert np.all(s_c >= s_r)
    np.testing.assert_array_equal(np.asarray(batch.weight), (s_c > s_r).astype(np.float32))
    assert float(info["score/chosen"]) == pytest.approx(s_c.mean())
    assert float(info["score/rejected"]) == pytest.approx(s_r.mean())
    # the reference log-probs are the frozen model's, here the policy itself
    c, r = np_pair_logps(policy, batch)
    np.testing.assert_allclose(ref.chosen, c.sum(1), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(ref.rejected, r.sum(1), rtol=1e-5, atol=1e-4)



def test_on_policy_train_runs_and_vmaps(policy):
    prompts = ch06.encode_prompts(["Say a.", "Hi."])
    config = tiny_config(on_policy=True, steps=2, batch_size=2, completions_per_prompt=3,
                         max_new_tokens=8)
    train = ch08.make_dpo_train(config, TINY, policy, prompts=prompts,
                                reward=ch06.Reward(letter_count))
    keys = jax.random.split(jax.random.PRNGKey(7), 2)
    state, m = jax.jit(jax.vmap(train))(keys)
    for name, value in m.items():
        assert value.shape == (2, config.steps), name
        assert np.all(np.isfinite(value)), name
    assert int(state.step[0]) == config.steps
    assert not np.allclose(m["loss"][0], m["loss"][1])  # two seeds, two runs


def test_evaluate_policy_against_itself_has_zero_kl(policy):
    questions = [data.Question(topic="color", prompt="Sky?", answer="blue", subject="the sky")]
    out = evaluate_policy(policy, questions, TINY, jax.random.PRNGKey(8), ref_params=policy,
                          samples=3, max_new_tokens=8)
    assert out["kl"] == 0.0 and out["n"] == 3
    assert data.GOLD_MIN <= out["gold"] <= data.GOLD_MAX
    greedy = evaluate_policy(policy, questions, TINY, jax.random.PRNGKey(9), ref_params=policy,
                             samples=2, max_new_tokens=8, temperature=0.0)
    assert greedy["gold_se"] == 0.0  # one answer, twice


# ----------------------------------------------------------------------------------------------
# Learning on the synthetic world: a small SFT model, the annotators' pairs, the gold reward

STYLES = ("concise_correct", "hedging", "wrong", "off_topic")  # short answers: T <= 78 tokens
BETA, LR, STEPS = 1.0, 3e-4, 60


@pytest.fixture(scope="module")
def world():
    """An SFT policy for 12 colour questions (4 facts x 3 templates) that answers in all four
    styles: the small GPT trained from scratch on both halves of 600 annotated pairs (about
    20 s). Its samples mix correct, hedged, wrong and off-topic answers, so there is a
    preference to learn; the gold reward of its samples is measured once here."""
    model = gpt.get_config("small")
    questions = [q for q in data.split_questions()[0] if q.topic == "color"][:12]
    sft_pairs = data.preference_pairs(seed=0, n=600, questions=questions, styles=STYLES)
    conversations = [[{"role": "user", "content": p.prompt},
                      {"role": "assistant", "content": y}]
                     for p in sft_pairs for y in (p.chosen, p.rejected)]
    examples = ch04.sft_examples(conversations)
    batch = ch04.pad_examples(examples, max(len(ids) for ids, _ in examples))
    sc = ch04.SFTConfig(steps=500, batch_size=16, learning_rate=1e-2, warmup_steps=20,
                        log_every=500)
    sft, _ = ch04.train_sft(model, gpt.init_params(jax.random.PRNGKey(0), model), sc, batch,
                            progress=False)
    before = evaluate_policy(sft, questions, model, jax.random.PRNGKey(5), ref_params=sft,
                             samples=16)
    return SimpleNamespace(model=model, sft=sft, questions=questions, before=before)


@pytest.fixture(scope="module")
def offline(world):
    """Plain DPO and DPO + NLL (``nll_coef = 1``), two seeds each, in one vmapped run on 400
    annotated pairs; evaluated on 300 held-out pairs (new annotations of the same questions)
    and by the gold reward of 16 samples per question."""
    train_pairs = data.preference_pairs(seed=1, n=400, questions=world.questions, styles=STYLES)
    heldout = data.preference_pairs(seed=2, n=300, questions=world.questions, styles=STYLES)
    batch = ch08.encode_preference_pairs(train_pairs)
    config = ch08.DPOConfig(beta=BETA, learning_rate=LR, steps=STEPS, batch_size=16)
    train = ch08.make_dpo_train(config, world.model, world.sft, batch)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    runs = {"dpo": 0.0, "dpo+nll": 1.0}
    coefs = jnp.repeat(jnp.array(list(runs.values())), 2)  # [plain, plain, nll, nll]
    state, metrics = jax.jit(jax.vmap(train, in_axes=(0, None, None, 0)))(
        jnp.concatenate([keys, keys]), None, None, coefs)
    ref_train = ch08.pair_log_probs(world.sft, batch, world.model)
    ref_held = ch08.pair_log_probs(world.sft, ch08.encode_preference_pairs(heldout), world.model)
    out = {"metrics": metrics, "step0": ch08.implicit_reward_accuracy(
        world.sft, world.sft, heldout, world.model, BETA, ref_logps=ref_held)}
    for i, (name, seed) in enumerate([(n, s) for n in runs for s in range(2)]):
        params = jax.tree.map(lambda x: x[i], state.params)
        logps = ch08.pair_log_probs(params, batch, world.model)
        out[name, seed] = {
            "heldout": ch08.implicit_reward_accuracy(params, world.sft, heldout, world.model,
                                                     BETA, ref_logps=ref_held),
            "answers": evaluate_policy(params, world.questions, world.model,
                                       jax.random.PRNGKey(5), ref_params=world.sft, samples=16),
            "d_chosen": np.asarray(logps.chosen) - ref_train.chosen,
            "d_rejected": np.asarray(logps.rejected) - ref_train.rejected,
        }
    return out


@pytest.mark.slow
def test_offline_dpo_learns_the_annotators_preferences(offline):
    """The implicit reward ``beta log pi/pi_ref`` ranks held-out pairs: 0.5 at step 0 (ties),
    then far above chance, against the annotators' labels and against the gold reward."""
    assert offline["step0"]["accuracy"] == 0.5 and offline["step0"]["gold_accuracy"] == 0.5
    for seed in range(2):
        acc = offline["dpo", seed]["heldout"]
        # observed: 0.867 and 0.843 (SE 0.02); gold 0.887 and 0.903. The annotators' own
        # ceiling here is about 0.9 (noise 0.5, 3 annotators).
        assert acc["accuracy"] > 0.5 + 8 * acc["accuracy_se"], acc
        assert acc["accuracy"] > 0.75 and acc["gold_accuracy"] > 0.75, acc
    # the training metric: strict accuracy 0 at step 0, high at the end; the margin grows
    m = offline["metrics"]
    # step 0: pi = pi_ref, so the loss is log 2 and every implicit reward 0, up to the float
    # round-off between the cached reference pass and the training pass (which also decides the
    # sign of the strict accuracy's ties there)
    np.testing.assert_allclose(np.asarray(m["loss/preference"])[:, 0], math.log(2.0), atol=1e-5)
    np.testing.assert_allclose(np.asarray(m["rewards/margins"])[:, 0], 0.0, atol=1e-5)
    assert np.all(np.asarray(m["rewards/accuracies"])[:, -10:].mean(1) > 0.8)
    assert np.all(np.asarray(m["rewards/margins"])[:, -10:].mean(1) > 2.0)


@pytest.mark.slow
def test_offline_dpo_raises_the_gold_reward(world, offline):
    """Plain offline DPO raises the mean gold reward of sampled answers over the SFT policy's,
    pooled over two seeds, by several standard errors."""
    before = world.before
    after = [offline["dpo", s]["answers"] for s in range(2)]
    gain = np.mean([a["gold"] for a in after]) - before["gold"]
    se = math.sqrt(before["gold_se"] ** 2 + sum(a["gold_se"] ** 2 for a in after) / 4)
    # observed: 0.007 (SE 0.057) -> 0.341 and 0.276 (SE 0.055): gain 0.30 = 4.6 SE
    assert gain > 3 * se, (before, after)
    for name in ("dpo", "dpo+nll"):
        for s in range(2):
            assert offline[name, s]["answers"]["gold"] > before["gold"], (name, s)


@pytest.mark.slow
def test_plain_dpo_displaces_the_chosen_completions_and_nll_curbs_it(offline):
    """Preference displacement (book §8.2, Figure 27): under plain DPO the log-probs of the
    training pairs' chosen completions fall on average, the rejected ones' much further, so the
    margin grows; with the NLL term (RPO, nll_coef = 1) the chosen ones fall less. Every
    comparison holds for both seeds, by several standard errors over the 400 pairs."""
    for seed in range(2):
        plain, nll = offline["dpo", seed], offline["dpo+nll", seed]
        d_c, d_r = plain["d_chosen"], plain["d_rejected"]
        n = d_c.size
        se_c = d_c.std(ddof=1) / math.sqrt(n)
        # observed: chosen -0.44 and -0.69 nats, rejected -4.9 and -5.3
        assert d_c.mean() < -3 * se_c, (seed, d_c.mean(), se_c)
        assert (d_c - d_r).mean() > 2.0, seed  # the margin grows
        gap = nll["d_chosen"] - d_c  # paired over the same pairs
        # observed: the NLL run's chosen fall -0.16 and -0.17, gaps +0.28 and +0.52
        assert gap.mean() > 3 * gap.std(ddof=1) / math.sqrt(n), (seed, gap.mean())
    # the same trend in the training metrics: logps/chosen ends lower than it starts
    lc = np.asarray(offline["metrics"]["logps/chosen"])
    assert np.all(lc[:2, -10:].mean(1) < lc[:2, :10].mean(1))


@pytest.mark.slow
def test_on_policy_dpo_labelled_by_the_gold_reward_raises_it(world):
    """Online DPO: each step samples 4 answers to 8 questions from the current policy, the
    gold reward picks best vs worst, one DPO step. The gold reward of fresh samples rises."""
    prompts = ch06.encode_prompts([q.prompt for q in world.questions])
    reward = ch06.text_reward(data.gold_reward, world.questions)
    config = ch08.DPOConfig(beta=BETA, learning_rate=LR, steps=40, batch_size=8,
                            completions_per_prompt=4, max_new_tokens=48, on_policy=True)
    state, m = jax.jit(ch08.make_dpo_train(config, world.model, world.sft, prompts=prompts,
                                           reward=reward))(jax.random.PRNGKey(0))
    after = evaluate_policy(state.params, world.questions, world.model, jax.random.PRNGKey(5),
                            ref_params=world.sft, samples=16)
    before = world.before
    se = math.hypot(before["gold_se"], after["gold_se"])
    # observed: 0.007 (SE 0.057) -> 0.501 (SE 0.055), 6.2 SE; KL to the SFT model 1.6 nats
    assert after["gold"] - before["gold"] > 3 * se, (before, after)
    score = np.asarray(m["score"])
    assert score[-10:].mean() > score[:10].mean()
    assert np.asarray(m["pairs"]).mean() > 0.7  # most groups hold two different scores


# ----------------------------------------------------------------------------------------------
# Exercise 8.8: the grading check passes the library's dpo_step and catches plausible mistakes


def _dpo_step_variant(prompt_included=False, token_mean=False, pair_sum=False):
    """A DPO step (8.8) written out, with one of three common mistakes switched on."""
    from rlhf_book.lm.ops import log_probs_from_logits

    def step(params, batch, ref_logps, model_config, beta=0.1, label_smoothing=0.0,
             nll_coef=0.0):
        n = batch.chosen.shape[0]
        tokens = jnp.concatenate([batch.chosen, batch.rejected])
        mask = jnp.concatenate([batch.chosen_mask, batch.rejected_mask])
        if prompt_included:  # every real token after the first, the prompt's too
            mask = (tokens != tokenizer.PAD).astype(jnp.float32).at[:, 0].set(0.0)

        def loss_fn(params):
            logits = gpt.forward(params, tokens, model_config)
            logp = jnp.pad(log_probs_from_logits(logits[:, :-1], tokens[:, 1:]), ((0, 0), (1, 0)))
            seq = jnp.sum(logp * mask, axis=1)
            if token_mean:
                seq = seq / jnp.sum(mask, axis=1)
            losses = ch08.dpo_loss(seq[:n], seq[n:], ref_logps.chosen, ref_logps.rejected, beta,
                                   label_smoothing)
            w = batch.weight
            pref = jnp.sum(losses * w) if pair_sum else jnp.sum(losses * w) / jnp.sum(w)
            nll = -jnp.sum(logp[:n] * batch.chosen_mask * w[:, None]) / jnp.sum(
                batch.chosen_mask * w[:, None])
            return pref + nll_coef * nll, (seq[:n], seq[n:])

        (loss, logps), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, grads, logps

    return step


def test_the_dpo_step_check_passes_the_library():
    checks.dpo_step(ch08.dpo_step)


@pytest.mark.parametrize("wrong, hint", [
    (_dpo_step_variant(prompt_included=True), "sums the completion's tokens only"),
    (_dpo_step_variant(token_mean=True), "sums the completion's tokens only"),
    (_dpo_step_variant(pair_sum=True), "then the MEAN over pairs"),
], ids=["prompt-included", "token-mean", "sum-over-pairs"])
def test_the_dpo_step_check_catches_wrong_versions(wrong, hint):
    with pytest.raises(Mismatch) as caught:
        checks.dpo_step(wrong)
    assert hint in str(caught.value), str(caught.value)


def test_the_dpo_step_is_exercise_8_8_with_a_contract_stub():
    exercise = catalog.get_exercise("8.8")
    assert exercise.reference() is ch08.dpo_step and exercise.difficulty == 3
    source = stubs.stub_function(exercise)
    assert "raise NotImplementedError" in source and "value_and_grad" not in source
    namespace = {}
    exec(compile(stubs.stub_source(catalog.get_chapter("ch08")), "stub", "exec"), namespace)
    assert namespace["dpo_step"].__doc__ == stubs.split_docstring(ch08.dpo_step.__doc__)[0]
    with pytest.raises(NotImplementedError, match="Exercise 8.8 "):
        namespace["dpo_step"](None, None, None, TINY)
