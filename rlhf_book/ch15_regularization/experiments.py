"""Chapter 15's experiments: what the notebook runs, with its settings as named constants.

* The estimators' bias and spread against the exact KL (Schulman 2020's Gaussian example, and a
  categorical "vocabulary"), and the gradient each gives when used as a loss, by enumeration;
* the reward-KL frontier of chapter 6's loop under a sweep of the KL coefficient, pushed on a
  proxy (chapter 5's reward model, trained on biased annotators' pairs) with the gold reward
  measured on rephrased questions as the KL grows (chapter 14's runs, with the KL measured
  exactly here), and the per-token KL of one of its policies along sampled completions;
* forgetting (§15.2): SFT against on-policy RL on a second task, measured on the first.

The runs on the mini GPT take the starting policy as an argument (``sft_params``, chapter 4's
SFT model of the small GPT): a chapter does not know where its models are cached; the notebook
and the figures pass ``rlhf_book.textbook.substrate.sft_small()``. Change a constant below and
rerun the notebook to see its effect.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_book import ch04_instruction_tuning as ch04
from rlhf_book import data
from rlhf_book.ch05_reward_models import experiments as ch05_experiments
from rlhf_book.ch06_policy_gradients import experiments as ch06_experiments
from rlhf_book.ch06_policy_gradients import loop as ch06_loop
from rlhf_book.ch14_overoptimization import experiments as ch14_experiments
from rlhf_book.ch14_overoptimization.experiments import (FRONTIER_BETAS, FRONTIER_CHUNK,
                                                         FRONTIER_CONFIG, FRONTIER_QUESTIONS,
                                                         FRONTIER_SEEDS, FRONTIER_STEPS,
                                                         frontier_points)
from rlhf_book.ch15_regularization import losses
from rlhf_book.lm import gpt, rollout, sampling
from rlhf_book.lm import train as lm_train
from rlhf_book.lm.eval import score_answers

# ----------------------------------------------------------------------------------------------
# Settings

# Schulman's example: q = N(0, 1) is sampled, p = N(mu, 1) is the reference; KL(q || p) = mu^2/2.
GAUSS_MUS = (0.1, 0.5, 1.0)
GAUSS_CURVE_MUS = tuple(np.round(np.linspace(0.1, 2.0, 20), 2).tolist())
GAUSS_SAMPLES = 1_000_000
GAUSS_CURVE_SAMPLES = 200_000
# The same on categoricals: vocabulary 50, the reference's logits = the policy's + scale * noise.
CAT_VOCAB = 50
CAT_SCALES = tuple(np.round(np.linspace(0.1, 2.0, 12), 3).tolist())
CAT_SAMPLES = 200_000
# The estimators as losses, by enumeration over a 6-token vocabulary.
GRAD_VOCAB = 6

# The reward-KL frontier and its gold peak: chapter 14's RL runs against a proxy
# (rlhf_book.ch14_overoptimization.experiments.frontier_runs, whose settings FRONTIER_* are
# re-exported here), measured with the exact KL over the vocabulary. The proxy:
# FRONTIER_PROXY = "reward_model" is chapter 5's reward model (the pipeline's recipe from the
# same SFT model, trained on the biased annotators' pairs; it ranks style pairs as they do 0.81
# of the time and right-vs-wrong pairs 0.55, and it prefers confident and padded answers).
# FRONTIER_PROXY = "annotators" optimises what the annotators value instead
# (data.annotator_utility); measured from chapter 4's 1,000-step SFT model, that proxy's optimum
# is gold's plus "definitely" within the 48 free bytes, and 16 steps move neither much (gold
# -0.47 -> -0.41 to -0.44 at every beta; 5e-4 or 1e-3 make the runs degenerate at every beta).
# 24 steps in chunks of 8 measured no clearer peak (gold -0.34 +- 0.06 at beta = 0.05).
PROXY_BIAS = data.AnnotatorBias()
FRONTIER_PROXY = "reward_model"
# Per-token KL along completions: the beta = 0 policy of the sweep (its first seed) against the
# SFT model, TOKEN_PROMPTS training questions x TOKEN_SAMPLES completions.
TOKEN_PROMPTS, TOKEN_SAMPLES = 32, 4

# Forgetting. Task 1 (old): the world's capital, animal and colour questions, scored by the gold
# reward. Task 2 (new): a format on its arithmetic questions -- open the answer with NEW_PREFIX
# ("The answer is 7."), one of the four templates chapter 4's SFT data uses for arithmetic, so
# the start model already does it about a quarter of the time and both methods can learn it at
# a small budget. Task 2's score is the share of answers that open with the prefix. From chapter
# 4's SFT model, the same budget of FORGET_STEPS steps of 16 sequences at learning rate
# FORGET_LR each way: SFT on demonstrations "The answer is {x}." of arithmetic questions, or
# on-policy RL (GRPO, 4 questions x 4 completions, beta = 0: no explicit KL term) on the format
# score; FORGET_SEEDS seeds vmapped. Evaluation: one sampled answer (T = 1) per question and
# seed on EVAL_QUESTIONS questions of each task (task 1's rephrased questions, task 2's training
# questions), and the exact sequence KL to the start model along those answers.
OLD_TOPICS = ("capital", "animal", "color")
NEW_TOPICS = ("arithmetic",)
NEW_PREFIX = "The answer is"
FORGET_STEPS = 24
FORGET_SEEDS = 4
FORGET_LR = 3e-4
FORGET_RL_CONFIG = ch06_loop.RLConfig(algorithm="grpo", steps=FORGET_STEPS, prompts_per_step=4,
                                      group_size=4, max_new_tokens=32, learning_rate=FORGET_LR,
                                      beta=0.0, log_every=FORGET_STEPS)
SFT_BATCH = FORGET_RL_CONFIG.prompts_per_step * FORGET_RL_CONFIG.group_size
EVAL_QUESTIONS = 64
EVAL_TOKENS = 20

__all__ = [
    "GAUSS_MUS", "GAUSS_CURVE_MUS", "GAUSS_SAMPLES", "GAUSS_CURVE_SAMPLES", "CAT_VOCAB",
    "CAT_SCALES", "CAT_SAMPLES", "GRAD_VOCAB", "FRONTIER_STEPS", "FRONTIER_CHUNK",
    "FRONTIER_CONFIG", "FRONTIER_BETAS", "FRONTIER_SEEDS", "FRONTIER_QUESTIONS", "PROXY_BIAS",
    "FRONTIER_PROXY", "proxy_score", "frontier_proxy", "TOKEN_PROMPTS", "TOKEN_SAMPLES",
    "OLD_TOPICS", "NEW_TOPICS", "NEW_PREFIX",
    "FORGET_STEPS", "FORGET_SEEDS", "FORGET_LR", "FORGET_RL_CONFIG", "SFT_BATCH",
    "EVAL_QUESTIONS", "EVAL_TOKENS", "gaussian_estimates", "categorical_estimates",
    "estimator_gradients", "frontier_runs", "frontier_points", "per_token_kl",
    "forgetting_tasks", "new_task_score", "make_sft_train", "evaluate_policies",
    "forgetting_runs",
]


# ----------------------------------------------------------------------------------------------
# Bias and spread of k1, k2, k3


def gaussian_estimates(mus=GAUSS_MUS, n: int = GAUSS_SAMPLES, seed: int = 0) -> dict:
    """For each ``mu``: the true ``KL(q || p) = mu^2 / 2`` and, for each estimator, the Monte
    Carlo mean, its standard error, the bias and the per-sample standard deviation (the
    library's ``kl_k1/k2/k3`` on ``logp = log q(x)``, ``ref_logp = log p(x)``, ``x ~ q``; the
    Gaussian normalisers cancel in the log-ratio and are left out)."""
    rng = np.random.default_rng(seed)
    out = {}
    for mu in mus:
        x = rng.standard_normal(n).astype(np.float32)
        logq, logp = -0.5 * x**2, -0.5 * (x - mu) ** 2
        true = mu**2 / 2
        row = {"true": true}
        for name in losses.KL_ESTIMATORS:
            k = np.asarray(losses.kl_estimate(logq, logp, name), np.float64)
            row[name] = {"mean": k.mean(), "se": k.std() / np.sqrt(n),
                         "bias": k.mean() - true, "std": k.std()}
        out[mu] = row
    return out


def categorical_estimates(scales=CAT_SCALES, vocab: int = CAT_VOCAB, n: int = CAT_SAMPLES,
                          seed: int = 0) -> dict:
    """The same on categoricals: policy logits ``z ~ N(0, I)``, reference ``z + s * N(0, I)``;
    exact ``KL(pi || pi_ref)`` by summing over the vocabulary, the estimators on ``n`` samples."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(vocab)
    noise = rng.standard_normal(vocab)
    out = {"scale": list(scales), "exact": []}
    for name in losses.KL_ESTIMATORS:
        out[name] = {"mean": [], "se": [], "std": []}
    for s in scales:
        logp = z - np.logaddexp.reduce(z)
        zr = z + s * noise
        logr = zr - np.logaddexp.reduce(zr)
        out["exact"].append(float(np.sum(np.exp(logp) * (logp - logr))))
        y = rng.choice(vocab, size=n, p=np.exp(logp))
        for name in losses.KL_ESTIMATORS:
            k = np.asarray(losses.kl_estimate(logp[y].astype(np.float32),
                                              logr[y].astype(np.float32), name), np.float64)
            out[name]["mean"].append(k.mean())
            out[name]["se"].append(k.std() / np.sqrt(n))
            out[name]["std"].append(k.std())
    return out


def estimator_gradients(vocab: int = GRAD_VOCAB, seed: int = 0) -> dict:
    """By enumeration over ``vocab`` tokens: ``E_{y ~ pi}[grad k_i(y)]`` for each estimator
    (the sample ``y`` held fixed, the gradient through ``log pi_theta(y)`` only) and the
    gradients of the reverse KL ``KL(pi || pi_ref)`` and the forward KL ``KL(pi_ref || pi)``
    with respect to the policy's logits; all ``[vocab]``."""
    rng = np.random.default_rng(seed)
    theta = jnp.asarray(rng.standard_normal(vocab))
    ref_logp = jax.nn.log_softmax(jnp.asarray(rng.standard_normal(vocab)))
    out = {"theta": np.asarray(theta), "ref_logp": np.asarray(ref_logp)}
    for name in losses.KL_ESTIMATORS:
        out[name] = np.asarray(losses.estimator_loss_gradient(theta, ref_logp, name))
    out["reverse"] = np.asarray(losses.kl_gradient(theta, ref_logp, "reverse"))
    out["forward"] = np.asarray(losses.kl_gradient(theta, ref_logp, "forward"))
    return out


# ----------------------------------------------------------------------------------------------
# RL on the mini GPT: the beta sweep (frontier) and the per-token KL of one policy


def proxy_score(question, response: str) -> float:
    """The frontier's proxy reward: what the biased annotators value,
    ``data.annotator_utility(question, response, PROXY_BIAS)``."""
    return data.annotator_utility(question, response, PROXY_BIAS)


def frontier_proxy(sft_params, model_config=None) -> rollout.Reward:
    """The frontier's proxy when ``FRONTIER_PROXY == "reward_model"``: chapter 5's reward model
    (:func:`rlhf_book.ch05_reward_models.experiments.rm_run` on its training pairs, the
    pipeline's recipe) from ``sft_params``, as a :class:`~rlhf_book.lm.rollout.Reward`; with
    ``"annotators"``, :func:`proxy_score` on the text."""
    model_config = model_config or gpt.get_config("small")
    if FRONTIER_PROXY == "annotators":
        return rollout.text_reward(proxy_score, ch06_experiments.rl_task()[1])
    run = ch05_experiments.rm_run(sft_params,
                                  {"train": ch05_experiments.rm_datasets()["train"]},
                                  model_config)
    return ch06_loop.reward_model_reward(run.params, model_config,
                                         ch05_experiments.RM_CONFIG.pooling)


def frontier_runs(sft_params, proxy: rollout.Reward | None = None) -> dict:
    """Chapter 14's RL runs against a proxy
    (:func:`rlhf_book.ch14_overoptimization.experiments.frontier_runs`: RLOO from
    ``sft_params`` for each of ``FRONTIER_BETAS`` x ``FRONTIER_SEEDS``, measured every
    ``FRONTIER_CHUNK`` steps on the rephrased questions) with the proxy of
    :func:`frontier_proxy` unless one is given, scored by :func:`proxy_score` when it is the
    annotators' text reward, and the KL measured exactly over the vocabulary
    (:func:`_policy_kls`). Returns what chapter 14's function returns."""
    model_config = ch06_experiments.rl_task()[0]
    reward = frontier_proxy(sft_params, model_config) if proxy is None else proxy
    return ch14_experiments.frontier_runs(sft_params, reward, text_score=proxy_score,
                                          policy_kls=_policy_kls)


@functools.partial(jax.jit, static_argnames=("model_config",))
def _token_kls(params, ref_params, tokens, model_config):
    """Exact per-position ``KL(pi || pi_ref)`` over the vocabulary and the sampled tokens'
    log-probabilities under both models, aligned with the sampled tokens (position t holds the
    distribution that predicts token t)."""
    logits = gpt.forward(params, tokens, model_config)[:, :-1]
    ref_logits = gpt.forward(ref_params, tokens, model_config)[:, :-1]
    exact = losses.exact_kl(logits, ref_logits)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1)[..., 0]
    ref_logp = jnp.take_along_axis(jax.nn.log_softmax(ref_logits), tokens[:, 1:, None], -1)[..., 0]
    pad = lambda x: jnp.pad(x, ((0, 0), (1, 0)))  # noqa: E731
    return pad(exact), pad(logp), pad(ref_logp)


def per_token_kl(params, ref_params, seed: int = 0) -> dict:
    """Along completions sampled from ``params`` (in the notebook, the beta = 0 policy of the
    frontier sweep) for ``TOKEN_PROMPTS`` training questions x ``TOKEN_SAMPLES``: per completion
    position, the exact KL to ``ref_params`` over the vocabulary and the k1 and k3 of the
    sampled token (arrays ``[N, max_new_tokens]``, zero past the end) with the completion
    ``mask``."""
    model_config, _, prompts = ch06_experiments.rl_task()
    ids = np.repeat(np.arange(TOKEN_PROMPTS), TOKEN_SAMPLES)
    gen = sampling.sample_cached(params, prompts.tokens[ids], prompts.lengths[ids],
                                 jax.random.PRNGKey(seed), 1.0, model_config,
                                 max_new_tokens=FRONTIER_CONFIG.max_new_tokens)
    exact, logp, ref_logp = _token_kls(params, ref_params, gen.tokens, model_config)
    mask = np.asarray(gen.mask, bool)
    # Completion positions: the first sampled token of each row is completion position 0.
    start = mask.argmax(axis=1)
    T = FRONTIER_CONFIG.max_new_tokens
    cols = start[:, None] + np.arange(T)[None]
    take = lambda x: np.take_along_axis(np.asarray(x, np.float64), cols, axis=1)  # noqa: E731
    m = take(mask).astype(bool)
    return {"exact": take(exact) * m, "k1": take(losses.kl_k1(logp, ref_logp)) * m,
            "k3": take(losses.kl_k3(logp, ref_logp)) * m, "mask": m}


# ----------------------------------------------------------------------------------------------
# Forgetting: SFT against on-policy RL on a second task


def forgetting_tasks():
    """``(old, new)``: the training questions of ``OLD_TOPICS`` (task 1) and of ``NEW_TOPICS``
    (task 2)."""
    questions = data.split_questions()[0]
    return ([q for q in questions if q.topic in OLD_TOPICS],
            [q for q in questions if q.topic in NEW_TOPICS])


def new_task_score(question, response: str) -> float:
    """Task 2's score (and RL reward): 1 if ``response`` opens with ``NEW_PREFIX``, else 0."""
    del question
    return float(response.strip().startswith(NEW_PREFIX))


def _sft_rows(questions, seed: int = 0):
    """Demonstrations of task 2: "The answer is {x}." to arithmetic questions."""
    rng = np.random.default_rng(seed)
    demos = [[{"role": "user", "content": q.prompt},
              {"role": "assistant", "content": f"{NEW_PREFIX} {q.answer}."}]
             for q in (questions[i] for i in rng.integers(len(questions), size=1000))]
    examples = ch04.sft_examples(demos, mask_prompt=True)
    return ch04.pad_examples(examples, max(len(tokens) for tokens, _ in examples))


def make_sft_train(model_config, lm_params, rows, steps: int = FORGET_STEPS,
                   batch_size: int = SFT_BATCH, learning_rate: float = FORGET_LR):
    """``train(key) -> (params, losses)``: ``steps`` SFT steps (chapter 4's loss, prompt masked,
    Adam at a constant ``learning_rate`` after clipping the global gradient norm at 1, as in
    chapter 6's RL runs) on random rows, as one ``lax.scan``; pure, so ``jax.vmap`` runs seeds
    at once. Chapter 4's own ``make_sft_train`` uses AdamW with a warm-up and a cosine decay:
    the comparison with RL wants the same optimizer on both sides."""
    rows = jax.tree.map(jnp.asarray, rows)

    def loss_fn(params, b):
        logits = gpt.forward(params, b.tokens, model_config)
        return ch04.sft_loss(logits, b.tokens, b.loss_mask), {}

    run = lm_train.make_train(loss_fn, lm_train.random_rows(rows, batch_size),
                              rollout.adam(learning_rate, 1.0), steps)

    def train(key):
        state, metrics = run(key, lm_params)
        return state.params, metrics["loss"]

    return train


@functools.partial(jax.jit, static_argnames=("model_config",))
def _policy_kls(lm_params, ref_params, tokens, mask, model_config):
    """Exact sequence KL to ``ref_params`` along each policy's own samples: ``[policies, N]``."""
    ref = jax.vmap(lambda t: gpt.forward(ref_params, t, model_config))(tokens)
    logits = jax.vmap(lambda p, t: gpt.forward(p, t, model_config))(lm_params, tokens)
    kl = jax.vmap(lambda l, r, t, m: losses.generation_kl(l, r, t, m).exact)  # noqa: E741
    return kl(logits, ref, tokens, mask)


def evaluate_policies(lm_params, questions, ref_params, score=data.gold_reward,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``score`` of one sampled answer (T = 1) to each of the first ``EVAL_QUESTIONS`` of
    ``questions`` (a fixed shuffle) per policy, and the exact sequence KL of each answer to
    ``ref_params``: two ``[policies, EVAL_QUESTIONS]`` arrays. ``lm_params`` has a leading
    policy axis."""
    model_config = gpt.get_config("small")
    rng = np.random.default_rng(seed)
    chosen = [questions[i] for i in rng.permutation(len(questions))[:EVAL_QUESTIONS]]
    prompts = rollout.encode_prompts([q.prompt for q in chosen])
    S = jax.tree.leaves(lm_params)[0].shape[0]
    gen = rollout.sample_policies(lm_params, prompts,
                                  jax.random.split(jax.random.PRNGKey(seed + 1), S), 1.0,
                                  model_config, max_new_tokens=EVAL_TOKENS)
    kls = _policy_kls(lm_params, ref_params, gen.tokens, gen.mask, model_config)
    tokens = np.asarray(gen.tokens).reshape(S * len(chosen), -1)
    texts = sampling.decode_masked(tokens, np.asarray(gen.mask).reshape(S * len(chosen), -1))
    scores = score_answers(chosen * S, texts, score)["score"].reshape(S, len(chosen))
    return scores, np.asarray(kls)


def forgetting_runs(sft_params) -> dict:
    """SFT and RL on task 2 from ``sft_params``, ``FORGET_SEEDS`` seeds each, and the scores on
    both tasks before and after: ``{"old": {"start", "sft", "rl"}, "new": ...}`` each
    ``[seeds]`` (the start evaluated with as many sampling seeds), the mean exact KL to the
    start along the answers the same way (``"old_kl"``, ``"new_kl"``), plus the SFT losses and
    the RL metrics."""
    model_config, _, _ = ch06_experiments.rl_task()
    start = sft_params
    old, new = forgetting_tasks()
    keys = jax.random.split(jax.random.PRNGKey(0), FORGET_SEEDS)
    sft_params, sft_losses = jax.jit(jax.vmap(make_sft_train(model_config, start, _sft_rows(new),
                                                             learning_rate=FORGET_LR)))(keys)
    prompts = rollout.encode_prompts([q.prompt for q in new])
    reward = rollout.text_reward(new_task_score, new)
    train = ch06_loop.make_train(FORGET_RL_CONFIG, model_config, start, prompts, reward)
    state, rl_metrics = jax.jit(jax.vmap(train))(keys)
    starts = jax.tree.map(lambda x: jnp.broadcast_to(x, (FORGET_SEEDS, *x.shape)), start)
    out = {"sft_loss": np.asarray(sft_losses),
           "rl_score": np.asarray(rl_metrics["score"]), "rl_kl": np.asarray(rl_metrics["kl"])}
    # Task 1 is measured on its rephrased questions (the facts in phrasings no training data
    # contains, chapter 6's main evaluation); task 2 on the questions it was trained on.
    old_rephrased = [q for q in data.question_splits().rephrased if q.topic in OLD_TOPICS]
    for name, questions, score in (("old", old_rephrased, data.gold_reward),
                                   ("new", new, new_task_score)):
        out[name], out[f"{name}_kl"] = {}, {}
        for run, p in (("start", starts), ("sft", sft_params), ("rl", state.params["lm"])):
            scores, kls = evaluate_policies(p, questions, start, score)
            out[name][run], out[f"{name}_kl"][run] = scores.mean(1), kls.mean(1)
    return out
