"""Chapter 6's experiments: what the notebook runs, with its settings as named constants.

Two kinds:

* **Worked examples** of the book's formulas, computed with the library's functions: the
  gradient weight each loss aggregation gives a token (§6.2.2, eqs. 67, 68, 69), PPO's clipped
  objective and its gradient with CISPO's weight beside it (Figure 20), group advantages against
  the number of correct completions (GRPO, Dr. GRPO, RLOO; Figure 22), GAE's lambda on Figure
  21's value example, and the spread of GSPO's sequence ratio (eq. 63).
* **RL with real gradients** on chapter 4's SFT model of the small GPT: five algorithms on the
  gold reward, measured on rephrased and held-out-fact questions (:func:`algorithm_runs`,
  :func:`answer_breakdown`) and RLOO on a flawed length reward under a sweep of KL
  coefficients (:func:`kl_sweep_runs`; exercises 3 and 5 of the numpy lesson "RLHF: Reward
  Model + PPO"). The starting policy is an argument (``sft_params``): a chapter does not
  know where its models are cached; the notebook and the figures pass
  ``rlhf_book.textbook.substrate.sft_small()``.

Change a constant below (say ``N_SEEDS`` or ``ALGORITHM_CONFIG``) and rerun the notebook to
see its effect.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_book import data
from rlhf_book.ch06_policy_gradients import loop, losses
from rlhf_book.lm import gpt, rollout, sampling
from rlhf_book.lm.eval import ANSWER_KINDS, first_last, score_answers

# ----------------------------------------------------------------------------------------------
# Settings

# §6.2.2.1: the book's two sequences of per-token losses, and the fixed length of eq. 69.
AGG_LOSSES = ([1.0, 1.0, 1.0, 1.0, 10.0], [1.0] * 9 + [10.0])
AGG_MAX_LENGTH = 10

# Figure 20: the clipped objective for A = +1 and A = -1 at eps = 0.2; CISPO's weight with the
# cap at 1 + eps (the book's eq. 66 upper bound), and the two ratios of the worked PPO example
# in the CME 295 lecture notes (Lecture 5, "LLM Tuning", §7.3 PPO-Clip).
PPO_EPS = 0.2
RATIOS = np.linspace(0.0025, 2.4975, 500)  # half-steps: never exactly on 1 +- eps
TABLE_RATIOS = (0.5, 0.9, 1.0, 1.1, 1.5, 2.0)  # never exactly 1 +- eps
LECTURE_RATIOS = {"pi_new / pi_old = 0.4 / 0.2": 2.0, "0.5 (the lecture's A < 0 case)": 0.5}

# Figure 22's group: G = 8 binary rewards, k of them correct.
GROUP_SIZE = 8

# Figure 21: rewards 0 ... 0, 0.73 at the end, the critic's predictions.
FIG21_REWARDS = (0.0, 0.0, 0.0, 0.0, 0.0, 0.73)
FIG21_VALUES = (0.45, 0.55, 0.62, 0.68, 0.71, 0.73)
GAE_LAMBDAS = (0.0, 0.5, 0.95, 1.0)

# §6.2.4 and §6.1.7: TIS cap C = 2 (Open Instruct); token log-ratios ~ N(0, 0.1^2) for GSPO.
TIS_CAP = 2.0
TIS_LOG_RATIOS = (-12.0, -0.5, 0.0, 0.5, 1.0, 12.0)
GSPO_SIGMA = 0.1
GSPO_LENGTHS = (1, 3, 10, 30, 100, 300, 1000)
GSPO_SEQUENCES = 1000

# RL on chapter 4's SFT model (the small GPT). RL_CONFIG is the base of section 10's KL sweep
# (KL_SWEEP_CONFIG): 12 steps of 4 training questions x 4 completions, at most 32
# new tokens (the SFT model's answers are 26 tokens long on average at this cap; 60% end
# within it), learning rate 3e-4, the KL coefficient 0.02 (InstructGPT's).
RL_CONFIG = loop.RLConfig(algorithm="grpo", steps=12, prompts_per_step=4, group_size=4,
                          max_new_tokens=32, learning_rate=3e-4, beta=0.02, log_every=12)
# Section 9's comparison of the algorithms: 20 steps of 8 questions x 8 completions at
# learning rate 1e-4 (32 tokens and beta as RL_CONFIG), N_SEEDS seeds vmapped. Measured on
# chapter 4's SFT model, gains in gold reward on the rephrased questions against the SFT
# model: RL_CONFIG itself (16 samples per step at 3e-4, all five algorithms, 8 seeds) drifts
# 4-6 nats from the SFT model in 12 steps and LOWERS the gold reward (right answers 21% ->
# 9-15%, non-answers 57% -> 68-76%): Adam moves every weight by about the learning rate per
# step, and the gradient of 16 samples is mostly noise. With GRPO (paired by question, 4 seeds
# x 4 samples per question): 16 samples at 1e-4, +0.02 to +0.04 (+- 0.02, noise); 64 samples
# at 1e-4, +0.05 +- 0.01 at 0.4 nats after 12 steps and +0.09 +- 0.02 at 0.7 nats after 20
# (PPO, whose critic starts from zero: +0.03 +- 0.015 after 12, +0.06 +- 0.02 after 20); at
# 2e-4, +0.03 (1.6 nats); at 3e-4, -0.04 (7 nats). The sizes are what the notebook's time
# budget allows (each algorithm is compiled once, about 10 s; its 20 steps of 3 seeds about
# 7 s more); the ranking of algorithms at this scale is not a benchmark.
ALGORITHM_CONFIG = dataclasses.replace(RL_CONFIG, steps=20, prompts_per_step=8, group_size=8,
                                       learning_rate=1e-4, log_every=20)
RL_ALGORITHMS = ("grpo", "dr_grpo", "rloo", "ppo", "cispo")
N_SEEDS = 3
# What the policies say at the end, on questions no RL prompt contains: N_EVAL_REPHRASED
# rephrased questions about training facts (the main evaluation: the facts the model was
# taught, in phrasings no training data has) and N_EVAL_UNSEEN questions about held-out facts
# (a second row: facts stated only in pretraining), the four fact topics, chosen once with
# EVAL_SEED; EVAL_SAMPLES completions per question and seed at temperature 1. The SFT model is
# sampled with the same keys (N_SEEDS x EVAL_SAMPLES per question), so a policy and the SFT
# model are compared question by question on coupled samples.
N_EVAL_REPHRASED = 128
N_EVAL_UNSEEN = 32
EVAL_SEED = 0
EVAL_SAMPLES = 5

# Exercises 3 and 5 of the numpy lesson "RLHF: Reward Model + PPO" on its flawed
# reward `len(response) / 100`: RLOO (the KL folded into the reward, as the lesson's
# `reward - kl_coeff * kl`), 32 new tokens so that length has room to grow, and the KL
# coefficients of both exercises (0 and 0.1; 0.001, 0.02, 0.5).
KL_SWEEP_CONFIG = dataclasses.replace(RL_CONFIG, algorithm="rloo", max_new_tokens=32)
KL_SWEEP_BETAS = (0.0, 0.001, 0.02, 0.1, 0.5)
KL_SWEEP_SEEDS = 4

__all__ = [
    "AGG_LOSSES", "AGG_MAX_LENGTH", "PPO_EPS", "RATIOS", "TABLE_RATIOS", "LECTURE_RATIOS",
    "GROUP_SIZE", "FIG21_REWARDS", "FIG21_VALUES", "GAE_LAMBDAS", "TIS_CAP", "TIS_LOG_RATIOS",
    "GSPO_SIGMA", "GSPO_LENGTHS", "GSPO_SEQUENCES", "RL_CONFIG", "ALGORITHM_CONFIG",
    "RL_ALGORITHMS", "N_SEEDS", "N_EVAL_REPHRASED", "N_EVAL_UNSEEN", "EVAL_SEED", "EVAL_SAMPLES",
    "KL_SWEEP_CONFIG", "KL_SWEEP_BETAS", "KL_SWEEP_SEEDS",
    "ANSWER_KINDS", "length_score", "padded", "aggregation_weights", "ppo_curves", "tis_curve",
    "group_advantage_table", "gae_sweep", "gspo_spread", "rl_task", "run_seeds",
    "eval_questions", "answer_breakdown", "paired_change", "algorithm_run", "algorithm_runs",
    "beta_sweep", "kl_sweep_runs",
    "first_last",
]


# ----------------------------------------------------------------------------------------------
# Worked examples of the formulas


def length_score(question, response: str) -> float:
    """The flawed reward model of exercise 3 of the numpy lesson "RLHF: Reward Model + PPO":
    ``len(response) / 100``, in characters, whatever the question."""
    del question
    return len(response) / 100


def padded(rows) -> tuple[np.ndarray, np.ndarray]:
    """``(values [N, T], mask [N, T])``: rows of different lengths, right-padded with zeros."""
    width = max(len(r) for r in rows)
    values = np.zeros((len(rows), width), np.float32)
    mask = np.zeros((len(rows), width), np.float32)
    for i, r in enumerate(rows):
        values[i, :len(r)] = r
        mask[i, :len(r)] = 1.0
    return values, mask


def aggregation_weights(rows=AGG_LOSSES, max_length: int = AGG_MAX_LENGTH) -> dict:
    """``{mode: (loss, dL/d l [N, T])}``: each aggregation of eqs. 67, 68, 69 of the per-token
    losses ``rows`` and its gradient with respect to every token's loss (``jax.grad``), 0 on
    padding."""
    token_losses, mask = padded(rows)
    out = {}
    for mode in losses.AGGREGATIONS:
        f = lambda l, m=mode: losses.aggregate_loss(l, mask, m, max_length)  # noqa: E731
        value, grad = jax.jit(jax.value_and_grad(f))(jnp.asarray(token_losses))
        out[mode] = (float(value), np.asarray(grad) * mask)
    return out


def ppo_curves(advantage: float, ratios=RATIOS, eps: float = PPO_EPS) -> dict[str, np.ndarray]:
    """``J(rho)`` (eq. 52), ``dJ/d rho`` and the gradient weight on ``grad log pi``,
    ``d(-loss)/d log pi = rho dJ/d rho``, of PPO; and CISPO's weight ``min(rho, 1 + eps) A``
    (``-d loss / d log pi`` of :func:`~rlhf_book.ch06_policy_gradients.cispo_loss`), one token
    at a time, all by ``jax.grad`` of the library's functions."""
    rho = jnp.asarray(ratios, jnp.float32)
    J, dJ, cispo = _ppo_curves(rho, jnp.float32(advantage), float(eps))
    return {"rho": np.asarray(rho), "J": np.asarray(J), "dJ": np.asarray(dJ),
            "ppo_weight": np.asarray(rho * dJ), "cispo_weight": np.asarray(cispo)}


@functools.partial(jax.jit, static_argnums=2)
def _ppo_curves(rho, a, eps):
    objective = lambda r: losses.ppo_objective(r, a, eps, eps)  # noqa: E731

    def cispo_weight(r):
        old = -jnp.log(r) * jnp.ones((1, 1))  # rho = exp(logp - old) = r at logp = 0

        def loss(logp):
            return losses.cispo_loss(logp, old, jnp.full((1,), a), jnp.ones((1, 1)),
                                     ratio_cap=1.0 + eps)

        return -jax.grad(loss)(jnp.zeros((1, 1)))[0, 0]

    return (jax.vmap(objective)(rho), jax.vmap(jax.grad(objective))(rho),
            jax.vmap(cispo_weight)(jnp.maximum(rho, 1e-6)))


def group_advantage_table(group_size: int = GROUP_SIZE) -> dict[str, np.ndarray]:
    """Advantages of a correct and of an incorrect completion in a group of ``group_size``
    binary rewards with ``k = 1 .. G-1`` correct, under GRPO (eq. 57), Dr. GRPO (eq. 58) and
    RLOO (eqs. 47, 48), and the group's Bessel-corrected standard deviation."""
    ks = np.arange(1, group_size)
    rewards = np.array([[1.0] * k + [0.0] * (group_size - k) for k in ks], np.float32)
    out = {"k": ks, "std": rewards.std(axis=1, ddof=1)}
    for name, adv in (("grpo", losses.grpo_advantages(rewards)),
                      ("dr_grpo", losses.grpo_advantages(rewards, scale=False)),
                      ("rloo", losses.rloo_advantages(rewards))):
        adv = np.asarray(adv)
        out[f"{name}_correct"] = adv[:, 0]
        out[f"{name}_incorrect"] = adv[:, -1]
    return out


def gae_sweep(lambdas=GAE_LAMBDAS, rewards=FIG21_REWARDS, values=FIG21_VALUES) -> dict:
    """``{lam: advantages [T]}`` of :func:`~rlhf_book.ch06_policy_gradients.compute_gae` on one
    completion (gamma = 1), and the returns (targets) at ``lam = 1``."""
    r = jnp.asarray([rewards], jnp.float32)
    v = jnp.asarray([values], jnp.float32)
    mask = jnp.ones_like(r)
    out = {lam: np.asarray(losses.compute_gae(r, v, mask, 1.0, lam)[0][0]) for lam in lambdas}
    out["returns"] = np.asarray(losses.compute_gae(r, v, mask, 1.0, 1.0)[1][0])
    return out


def tis_curve(log_ratios, cap: float = TIS_CAP) -> np.ndarray:
    """Truncated importance-sampling weights ``min(exp(x), cap)`` (eq. 70,
    :func:`~rlhf_book.ch06_policy_gradients.tis_weights`) of the log-ratios ``x``."""
    x = jnp.asarray(log_ratios, jnp.float32)
    return np.asarray(losses.tis_weights(x, jnp.zeros_like(x), cap))


def gspo_spread(lengths=GSPO_LENGTHS, sigma: float = GSPO_SIGMA, n: int = GSPO_SEQUENCES,
                eps: float = PPO_EPS, seed: int = 0) -> dict[str, list]:
    """Token log-ratios ``~ N(0, sigma^2)``, independent, for ``n`` sequences of each length:
    the standard deviation of the log of GSPO's sequence ratio (eq. 63,
    :func:`~rlhf_book.ch06_policy_gradients.gspo_sequence_ratio`), of the unnormalised sequence
    ratio ``prod_t rho_t`` (what eq. 55 writes), and of a token ratio; and the fraction of
    tokens, of unnormalised sequences and of GSPO ratios outside ``[1 - eps, 1 + eps]``. All
    lengths go through one padded batch."""
    rng = np.random.default_rng(seed)
    T = max(lengths)
    log_ratio = rng.normal(0.0, sigma, size=(len(lengths), n, T)).astype(np.float32)
    mask = (np.arange(T)[None, None, :] < np.asarray(lengths)[:, None, None]).astype(np.float32)
    mask = np.broadcast_to(mask, log_ratio.shape).reshape(-1, T)
    flat = log_ratio.reshape(-1, T)
    rho = np.asarray(losses.gspo_sequence_ratio(jnp.asarray(flat), jnp.zeros_like(flat),
                                                jnp.asarray(mask))).reshape(len(lengths), n)
    out = {"length": list(lengths), "gspo_log_std": [], "product_log_std": [],
           "token_log_std": [], "tokens_outside": [], "products_outside": [],
           "gspo_outside": []}
    outside = lambda x: float(np.mean((x < 1 - eps) | (x > 1 + eps)))  # noqa: E731
    for i, L in enumerate(lengths):
        tokens = log_ratio[i, :, :L]
        product = tokens.sum(axis=1)
        out["gspo_log_std"].append(float(np.log(rho[i]).std()))
        out["product_log_std"].append(float(product.std()))
        out["token_log_std"].append(float(tokens.std()))
        out["tokens_outside"].append(outside(np.exp(tokens)))
        out["products_outside"].append(outside(np.exp(product)))
        out["gspo_outside"].append(outside(rho[i]))
    return out


# ----------------------------------------------------------------------------------------------
# RL on the small model


def rl_task():
    """``(model_config, questions, prompts)``: the small GPT (``gpt.get_config("small")``), the
    training questions (``data.split_questions()[0]``) and their chat-template prompts."""
    questions = data.split_questions()[0]
    return (gpt.get_config("small"), questions,
            rollout.encode_prompts([q.prompt for q in questions]))


def run_seeds(config: loop.RLConfig, reward: rollout.Reward, lm_params, n_seeds: int,
              seed: int = 0):
    """``config``'s RL run from ``lm_params`` once per seed, all seeds at once:
    ``jax.jit(jax.vmap(make_train(...)))(keys)``. Returns the metrics as NumPy arrays
    ``[n_seeds, steps]`` (and the final states)."""
    model_config, _, prompts = rl_task()
    train = jax.jit(jax.vmap(loop.make_train(config, model_config, lm_params, prompts, reward)))
    state, metrics = train(jax.random.split(jax.random.PRNGKey(seed), n_seeds))
    return {k: np.asarray(v) for k, v in metrics.items()}, state


def eval_questions(seed: int = EVAL_SEED) -> dict[str, list]:
    """``{"rephrased": [...], "unseen": [...]}``: ``N_EVAL_REPHRASED`` rephrased questions about
    training facts and ``N_EVAL_UNSEEN`` questions about held-out facts
    (``data.question_splits()``, fact topics only), drawn without replacement with ``seed``."""
    splits = data.question_splits()
    rng = np.random.default_rng(seed)
    out = {}
    for name, n in (("rephrased", N_EVAL_REPHRASED), ("unseen", N_EVAL_UNSEEN)):
        pool = data.fact_questions(getattr(splits, name))
        out[name] = [pool[i] for i in rng.choice(len(pool), n, replace=False)]
    return out


def answer_breakdown(lm_params, seed: int = 0, n_seeds: int = N_SEEDS,
                     samples: int = EVAL_SAMPLES,
                     max_new_tokens: int = RL_CONFIG.max_new_tokens) -> dict[str, dict]:
    """What a policy answers to :func:`eval_questions`: ``samples`` completions (temperature 1)
    to each question per seed, classified by :func:`rlhf_book.lm.eval.answer_kind` as
    ``right``, ``wrong`` or ``none`` (no answer to the question stated) and scored by the gold
    reward. ``lm_params`` has a leading seed axis (the final states of a vmapped run) or none
    (one model, e.g. the SFT policy, sampled with ``n_seeds`` keys); seed ``s`` samples with
    the same key either way, so two policies evaluated with the same ``seed``, number of seeds
    and ``samples`` draw coupled samples. Returns, per question set (``"rephrased"``,
    ``"unseen"``): the shares of the three kinds, the mean ``gold`` and ``gold_se`` (over
    seeds: the standard error of the mean of the per-seed means), ``gold_seeds`` ``[S]``,
    ``per_question``: ``{"gold", "right", "wrong", "none"}`` each ``[Q]`` (means over seeds
    and samples, for :func:`paired_change`), the number of ``samples`` and their ``texts``
    ``[S * samples, Q]`` (seed-major)."""
    model_config = gpt.get_config("small")
    sets = eval_questions()
    questions = [q for qs in sets.values() for q in qs]
    prompts = rollout.encode_prompts([q.prompt for q in questions] * samples)
    if lm_params["tok_emb"].ndim == 2:  # [V, D]: one model, no seed axis
        lm_params = jax.tree.map(lambda x: jnp.broadcast_to(x, (n_seeds, *x.shape)), lm_params)
    S, Q = jax.tree.leaves(lm_params)[0].shape[0], len(questions)
    gen = rollout.sample_policies(lm_params, prompts,
                                  jax.random.split(jax.random.PRNGKey(seed + 1), S), 1.0,
                                  model_config, max_new_tokens=max_new_tokens)
    texts = sampling.decode_masked(np.asarray(gen.tokens).reshape(S * samples * Q, -1),
                                   np.asarray(gen.mask).reshape(S * samples * Q, -1))
    scored = score_answers(questions * (S * samples), texts)
    kinds = scored["kind"].reshape(S, samples, Q)
    gold = scored["score"].reshape(S, samples, Q)
    texts = np.asarray(texts, dtype=object).reshape(S * samples, Q)
    out, start = {}, 0
    for name, qs in sets.items():
        cols = slice(start, start + len(qs))
        start += len(qs)
        per_seed = gold[..., cols].mean(axis=(1, 2))
        per_question = {"gold": gold[..., cols].mean(axis=(0, 1)),
                        **{k: (kinds[..., cols] == k).mean(axis=(0, 1)) for k in ANSWER_KINDS}}
        out[name] = {**{k: float(np.mean(kinds[..., cols] == k)) for k in ANSWER_KINDS},
                     "gold": float(per_seed.mean()),
                     "gold_se": float(per_seed.std(ddof=1) / np.sqrt(S)),
                     "gold_seeds": per_seed, "per_question": per_question,
                     "samples": S * samples * len(qs), "texts": texts[:, cols]}
    return out


def paired_change(after: dict, before: dict, key: str = "gold") -> tuple[float, float]:
    """``(mean, se)`` of ``after - before`` in ``key`` (``"gold"`` or an answer kind's share),
    paired by question: the difference of the per-question means of two
    :func:`answer_breakdown` entries (one question set), its mean over questions and the
    standard error over questions."""
    d = np.asarray(after["per_question"][key]) - np.asarray(before["per_question"][key])
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))


def algorithm_run(algorithm: str, sft_params) -> dict:
    """``algorithm`` with ``ALGORITHM_CONFIG`` on the gold reward of the training questions,
    ``N_SEEDS`` seeds from ``sft_params``: the per-step metrics ``[seeds, steps]`` and
    ``"answers"``, the :func:`answer_breakdown` of the final policies (rephrased and unseen
    questions, which no RL prompt contains; ``EVAL_SAMPLES`` per question and seed)."""
    _, questions, _ = rl_task()
    gold = rollout.text_reward(data.gold_reward, questions)
    metrics, state = run_seeds(dataclasses.replace(ALGORITHM_CONFIG, algorithm=algorithm), gold,
                               sft_params, N_SEEDS)
    return {**metrics, "answers": answer_breakdown(state.params["lm"])}


def algorithm_runs(sft_params) -> dict[str, dict]:
    """``{algorithm: metrics}``: :func:`algorithm_run` for each of ``RL_ALGORITHMS``, and the
    entry ``"sft"``: the :func:`answer_breakdown` of the starting point, sampled with the same
    keys (``N_SEEDS`` x ``EVAL_SAMPLES`` per question)."""
    runs = {a: algorithm_run(a, sft_params) for a in RL_ALGORITHMS}
    runs["sft"] = {"answers": answer_breakdown(sft_params)}
    return runs


def beta_sweep(config: loop.RLConfig, reward, sft_params, betas, n_seeds: int):
    """``config``'s RL run from ``sft_params`` for every KL coefficient in ``betas`` and
    ``n_seeds`` seeds each: every (beta, seed) pair in one ``vmap`` with beta traced, so the
    whole sweep is one compilation. Returns ``(final_state, {beta: {name: [seeds, steps]}})``;
    the state's leaves have a leading axis of ``len(betas) * n_seeds``, beta-major."""
    model_config, _, prompts = rl_task()
    train = loop.make_train(config, model_config, sft_params, prompts, reward)
    keys = jnp.tile(jax.random.split(jax.random.PRNGKey(0), n_seeds), (len(betas), 1))
    swept = jnp.repeat(jnp.asarray(betas, jnp.float32), n_seeds)
    state, metrics = jax.jit(jax.vmap(train))(keys, swept)
    metrics = {k: np.asarray(v).reshape(len(betas), n_seeds, -1) for k, v in metrics.items()}
    return state, {b: {k: v[i] for k, v in metrics.items()} for i, b in enumerate(betas)}


def kl_sweep_runs(sft_params) -> dict[float, dict]:
    """``{beta: metrics}``: ``KL_SWEEP_CONFIG`` on the length reward (:func:`length_score`) for
    each of ``KL_SWEEP_BETAS``, ``KL_SWEEP_SEEDS`` seeds from ``sft_params``."""
    _, questions, _ = rl_task()
    reward = rollout.text_reward(length_score, questions)
    return beta_sweep(KL_SWEEP_CONFIG, reward, sft_params, KL_SWEEP_BETAS, KL_SWEEP_SEEDS)[1]
