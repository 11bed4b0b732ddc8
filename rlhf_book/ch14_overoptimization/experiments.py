"""Chapter 14's experiments: what the notebook runs, with its settings as named constants.

* **Closed form** (:mod:`.pool`): the reference pool of 20,000 responses whose proxy rewards
  length, optimised by the KL-regularised tilt and by best-of-N; the same pools with a proxy
  that is gold plus noise.
* **The mini GPT**: chapter 4's SFT model of the small GPT answers the rephrased evaluation
  questions ``BON_SAMPLES`` times each; every answer gets chapter 5's reward model's score (the
  proxy) and the world's gold reward, and :func:`~.bon.best_of_n_from_samples` turns them into
  best-of-N curves for every ``N`` in ``BON_NS`` against ``sqrt(KL)``, ranked by the reward
  model or by its length-controlled score; and RL against the same reward model
  (:func:`frontier_runs`, chapter 6's loop) under a sweep of KL penalties, measured as it goes.
* **Learned proxies in closed form** (:mod:`.proxies`): data size, a train and a test reward
  model, ensembles, and the KL penalty against early stopping by exact policy gradient.

Models are arguments: the notebook passes ``rlhf_book.textbook.substrate.sft_small()`` and
``reward_model_small()``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_book import data
from rlhf_book.ch05_reward_models import experiments as ch05_experiments
from rlhf_book.ch06_policy_gradients import experiments as ch06_experiments
from rlhf_book.ch06_policy_gradients import loop as ch06_loop
from rlhf_book.ch06_policy_gradients.loop import reward_model_reward
from rlhf_book.ch09_rejection_sampling.selection import best_of_n_kl
from rlhf_book.ch14_overoptimization import bon, pool, proxies
from rlhf_book.lm import gpt, rollout, sampling
from rlhf_book.lm.eval import answer_samples
from rlhf_book.lm.rollout import token_log_probs

# ----------------------------------------------------------------------------------------------
# Settings

# The closed-form reference run: the tilts' betas and best-of-N's N (N <= K / 20: past it a
# finite pool runs out of tail and the curve turns up again).
TILT_BETAS = (10, 3, 2, 1.5, 1, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1)
POOL_NS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
N_POOLS = 60  # pools per kind for the expectation over pools

# Best-of-N on the mini GPT: BON_SAMPLES answers (T = 1, at most BON_TOKENS new tokens, so an
# answer can run past the gold reward's 48 free bytes) to each of the first BON_QUESTIONS
# rephrased evaluation questions of chapter 6.
BON_QUESTIONS = 128
BON_SAMPLES = 64
BON_NS = (1, 2, 4, 8, 16, 32, 64)
BON_TOKENS = 64
BON_SEED = 0

# RL against the reward model on the mini GPT (chapter 15 reuses these runs for its reward-KL
# frontier): chapter 6's RL loop (4 questions x 4 completions a step, learning rate 3e-4), RLOO
# with the KL as a k1 penalty in the reward, on a PROXY reward: chapter 5's reward model, which
# prefers confident and padded answers. At most 64 new tokens, so that an answer can run past
# the gold reward's 48 free bytes. One vmapped sweep of FRONTIER_BETAS x FRONTIER_SEEDS,
# FRONTIER_STEPS steps; every FRONTIER_CHUNK steps each policy answers the first
# FRONTIER_QUESTIONS of chapter 6's rephrased evaluation questions (one sample, T = 1), scored by
# the gold reward and by the proxy, with the KL to the SFT model along the answers.
FRONTIER_STEPS = 16
FRONTIER_CHUNK = 4
FRONTIER_CONFIG = ch06_loop.RLConfig(algorithm="rloo", steps=FRONTIER_CHUNK, prompts_per_step=4,
                                     group_size=4, max_new_tokens=64, learning_rate=3e-4,
                                     log_every=FRONTIER_CHUNK)
FRONTIER_BETAS = (0.0, 0.05, 0.5)
FRONTIER_SEEDS = 4
FRONTIER_QUESTIONS = 128

# Learned proxies (:mod:`.proxies`): linear Bradley-Terry reward models on the feature pool
# (seed PROXY_POOL_SEED: quality, length, its square and eight heavy-tailed features gold
# ignores), fitted to pairs labelled by the gold reward; PROXY_SEEDS data seeds for standard
# errors; the tilts' betas end at 0.1 (sqrt KL near its ceiling sqrt(log K) = 3.15).
PROXY_POOL_SEED = 0
PROXY_SEEDS = 128
PROXY_BETAS = (10, 3, 2, 1.5, 1, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.15, 0.1)
SCALING_PAIRS = (50, 100, 300, 1000, 3000)  # the data-size sweep
HALF_PAIRS = 150  # pairs per reward model for the train/test split and the ensembles
ENSEMBLE_MEMBERS, ENSEMBLE_K, ENSEMBLE_SEED = 5, 1.0, 100
# The KL penalty against early stopping: exact natural policy gradient on the reference length
# pool, for each KL coefficient of PG_BETAS (0: no penalty, stop early instead).
PG_BETAS = (0.0, 0.2, 0.5, 1.0)
PG_STEPS, PG_LR, PG_EVERY = 400, 0.025, 10


# ----------------------------------------------------------------------------------------------
# The mini GPT


def bon_questions() -> list:
    """The first ``BON_QUESTIONS`` of chapter 6's rephrased evaluation questions."""
    return ch06_experiments.eval_questions()["rephrased"][:BON_QUESTIONS]


def rm_proxy(rm_params) -> rollout.Reward:
    """Chapter 5's reward model ``rm_params`` of the small GPT as a
    :class:`~rlhf_book.lm.rollout.Reward` (what chapter 6's loop optimises and what scores
    samples here): the proxy."""
    return reward_model_reward(rm_params, gpt.get_config("small"),
                               ch05_experiments.RM_CONFIG.pooling)


def scored_samples(sft_params, rm_params, questions=None, samples: int = BON_SAMPLES,
                   seed: int = BON_SEED) -> dict[str, np.ndarray]:
    """``samples`` answers of ``sft_params`` to each question (T = 1), each scored by the gold
    reward (``"gold"``) and by chapter 5's reward model ``rm_params`` (``"proxy"``): arrays
    ``[Q, samples]``, with ``"bytes"`` and the ``"texts"``."""
    questions = bon_questions() if questions is None else questions
    out = answer_samples(sft_params, questions, gpt.get_config("small"),
                         jax.random.PRNGKey(seed), samples=samples, temperature=1.0,
                         max_new_tokens=BON_TOKENS, reward=rm_proxy(rm_params))
    return {"gold": out["gold"], "proxy": out["reward"], "bytes": out["bytes"],
            "right": out["right"], "none": out["none"], "texts": out["texts"]}


def bon_curves(scored: dict, ns=BON_NS) -> dict[str, np.ndarray]:
    """Best-of-N ranked by the proxy, from :func:`scored_samples`, for every ``N`` of ``ns``:
    ``"gold"``, ``"proxy"`` and ``"bytes"`` of the pick, each ``[len(ns), Q]`` (per question:
    the unit of a standard error), and ``"sqrt_kl"`` ``[len(ns)]``, ``sqrt(log N - (N -
    1) / N)``: exact when no two samples tie, an upper bound when the policy repeats an answer
    (Beirami et al. 2024)."""
    proxy = np.asarray(scored["proxy"], np.float32)
    out = {key: np.stack([np.asarray(bon.best_of_n_from_samples(proxy, np.asarray(
        scored[key], np.float32), int(n)), np.float64) for n in ns])
        for key in ("gold", "proxy", "bytes")}
    out["sqrt_kl"] = np.sqrt(np.asarray(best_of_n_kl(np.asarray(ns, np.float64)), np.float64))
    return out


def length_controlled_samples(scored: dict) -> dict:
    """:func:`scored_samples` with the proxy replaced by its length-controlled version
    (:func:`~.proxies.length_controlled`, one slope over every sample's bytes): best-of-N then
    ranks by what the reward model says beyond what an answer's length predicts."""
    out = dict(scored)
    out["proxy"] = np.asarray(proxies.length_controlled(scored["proxy"], scored["bytes"]),
                              np.float64)
    return out


def top_picks(scored: dict, questions=None, k: int = 3) -> list[tuple[str, str, float, float]]:
    """``(question, answer, proxy, gold)`` of the reward model's favourite answer among the
    samples, for the first ``k`` questions: what best-of-``BON_SAMPLES`` would return."""
    questions = bon_questions() if questions is None else questions
    best = np.argmax(scored["proxy"], axis=1)
    return [(questions[q].prompt, scored["texts"][q, best[q]], float(scored["proxy"][q, best[q]]),
             float(scored["gold"][q, best[q]])) for q in range(k)]


# ----------------------------------------------------------------------------------------------
# Closed form


def pool_curves(seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """The reference pool (:func:`pool.length_pool`) under the tilts of ``TILT_BETAS`` and
    best-of-N for ``POOL_NS``: ``{"tilt": tilt_curve, "bon": bon_curve}``."""
    p = pool.length_pool(seed)
    return {"tilt": pool.tilt_curve(p, TILT_BETAS), "bon": pool.bon_curve(p, POOL_NS)}


def goodhart_kinds(n_pools: int = N_POOLS, betas=TILT_BETAS[:-1]) -> dict[str, np.ndarray]:
    """The tilts' gold reward ``[n_pools, len(betas)]`` on ``n_pools`` pools of each kind:
    ``"regressional"`` (proxy = gold + noise, :func:`pool.noisy_pool`) and ``"extremal"``
    (the length-rewarding proxy, :func:`pool.length_pool`), and each kind's ``sqrt_kl`` (mean
    over pools)."""
    out = {}
    for name, make in (("regressional", pool.noisy_pool), ("extremal", pool.length_pool)):
        curves = [pool.tilt_curve(make(seed=s), betas) for s in range(n_pools)]
        out[name] = np.stack([c["gold"] for c in curves])
        out[name + "_sqrt_kl"] = np.mean([c["sqrt_kl"] for c in curves], axis=0)
    return out




# ----------------------------------------------------------------------------------------------
# Learned proxies in closed form (:mod:`.proxies`)


_fit_many = jax.jit(jax.vmap(proxies.fit_linear_rm))  # one compile per pair count


def _pairs(fp, n: int, seeds: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` gold-labelled pairs for each data seed ``0 .. seeds - 1``: ``[seeds, n, F]``,
    ``[seeds, n]``."""
    drawn = [proxies.gold_pairs(fp, n, seed=s) for s in range(seeds)]
    return np.stack([d[0] for d in drawn]), np.stack([d[1] for d in drawn])


def data_scaling(ns=SCALING_PAIRS, seeds: int = PROXY_SEEDS,
                 betas=PROXY_BETAS) -> dict[int, dict[str, np.ndarray]]:
    """For each number of pairs ``n`` of ``ns``: ``seeds`` linear reward models, each fitted to
    ``n`` gold-labelled pairs of the feature pool (data seed ``s``), and the tilt against each.
    Per ``n``: ``"gold"``, ``"proxy"`` and ``"sqrt_kl"``, each ``[seeds, M]``."""
    fp = proxies.feature_pool(PROXY_POOL_SEED)
    out = {}
    for n in ns:
        w = np.asarray(_fit_many(*_pairs(fp, int(n), seeds)), np.float64)  # [seeds, F]
        proxy = w @ fp.features.T
        out[int(n)] = proxies.tilt_scores(proxy, betas, {"gold": fp.gold, "proxy": proxy})
    return out


def train_test(n: int = HALF_PAIRS, seeds: int = PROXY_SEEDS,
               betas=PROXY_BETAS) -> dict[str, np.ndarray]:
    """Book Figure 39 in closed form: per data seed, ``2 n`` gold-labelled pairs split into two
    halves, a reward model fitted to each; the tilt against the first (``"train"``) scored by
    itself, by the second (``"test"``) and by ``"gold"``, each ``[seeds, M]``, with
    ``"sqrt_kl"``."""
    fp = proxies.feature_pool(PROXY_POOL_SEED)
    x, y = _pairs(fp, 2 * n, seeds)
    train = np.asarray(_fit_many(x[:, :n], y[:, :n]), np.float64) @ fp.features.T
    test = np.asarray(_fit_many(x[:, n:], y[:, n:]), np.float64) @ fp.features.T
    return proxies.tilt_scores(train, betas, {"train": train, "test": test, "gold": fp.gold})


def ensembles(n: int = HALF_PAIRS, members: int = ENSEMBLE_MEMBERS, k: float = ENSEMBLE_K,
              seeds: int = PROXY_SEEDS, betas=PROXY_BETAS) -> dict[str, dict[str, np.ndarray]]:
    """Per data seed, ``n`` gold-labelled pairs; one reward model fitted to all of them
    (``"single"``) and ``members`` fitted to bootstrap resamples of them, combined by each of
    :data:`~.proxies.AGGREGATES` (``k`` for ``mean_minus_std``). The tilt against each proxy:
    ``{name: {"gold", "sqrt_kl": [seeds, M]}}``."""
    fp = proxies.feature_pool(PROXY_POOL_SEED)
    x, y = _pairs(fp, n, seeds)
    rng = np.random.default_rng(ENSEMBLE_SEED)
    idx = rng.integers(n, size=(seeds, members, n))  # bootstrap resamples, per seed
    xs = np.take_along_axis(x[:, None], idx[..., None], axis=2).reshape(seeds * members, n, -1)
    ys = np.take_along_axis(y[:, None], idx, axis=2).reshape(seeds * members, n)
    w = np.asarray(_fit_many(xs, ys), np.float64).reshape(seeds, members, -1)
    rewards = w @ fp.features.T  # [seeds, members, K]
    named = {"single": np.asarray(_fit_many(x, y), np.float64) @ fp.features.T}
    named.update({a: np.stack([np.asarray(proxies.ensemble_reward(r, a, k), np.float64)
                               for r in rewards]) for a in proxies.AGGREGATES})
    return {name: proxies.tilt_scores(proxy, betas, {"gold": fp.gold})
            for name, proxy in named.items()}


def kl_penalty_runs(natural: bool = True) -> dict[str, np.ndarray]:
    """Exact policy-gradient ascent (:func:`~.proxies.pg_curves`) on the reference length pool,
    once per KL coefficient of ``PG_BETAS``, ``PG_STEPS`` steps at ``PG_LR``, recorded every
    ``PG_EVERY`` steps: the KL penalty against early stopping of the ``beta = 0`` run."""
    return proxies.pg_curves(pool.length_pool(0), PG_BETAS, PG_STEPS, PG_LR, natural=natural,
                             every=PG_EVERY)


def peak(curves: dict[str, np.ndarray], key: str = "gold") -> dict[str, float]:
    """Where the mean over seeds of ``curves[key]`` ``[seeds, M]`` peaks: ``index``, ``value``
    with its standard error over seeds ``se``, the mean ``sqrt_kl`` there ``d``, and ``last``
    (the strongest optimisation) with ``last_se``."""
    v = np.asarray(curves[key], np.float64)
    mean, se = v.mean(axis=0), v.std(axis=0, ddof=1) / np.sqrt(v.shape[0])
    i = int(np.argmax(mean))
    return {"index": i, "value": float(mean[i]), "se": float(se[i]),
            "d": float(np.asarray(curves["sqrt_kl"]).mean(axis=0)[i]),
            "last": float(mean[-1]), "last_se": float(se[-1])}


# ----------------------------------------------------------------------------------------------
# RL against the reward model on the mini GPT


@functools.partial(jax.jit, static_argnames=("model_config",))
def policy_k1(lm_params, ref_params, tokens, mask, model_config):
    """``sum_t log pi(y_t) - log pi_ref(y_t)`` over each answer, for each policy (leading axis
    of ``lm_params``) along its own samples ``tokens, mask [policies, N, T]``: ``[policies,
    N]``, the k1 estimate of the sequence ``KL(pi || pi_ref)``, unbiased at T = 1 (book §15.1,
    eq. 129; chapter 15 computes it exactly over the vocabulary)."""
    ref = jax.vmap(lambda t: token_log_probs(ref_params, t, model_config))(tokens)
    logp = jax.vmap(lambda p, t: token_log_probs(p, t, model_config))(lm_params, tokens)
    return jnp.sum((logp - ref) * mask, axis=-1)


def _frontier_eval(lm_params, sft_params, questions, model_config, seed: int,
                   proxy: rollout.Reward, text_score: Callable | None, policy_kls) -> dict:
    """Each policy (leading axis) answers ``questions`` once at T = 1: ``gold``, ``proxy`` (the
    reward model ``proxy`` of the answers, or ``text_score(question, text)`` when the proxy
    has no parameters) and ``kl`` (``policy_kls`` of the answers to ``sft_params``), ``[policies,
    Q]`` each, with ``bytes`` and ``texts``."""
    prompts = rollout.encode_prompts([q.prompt for q in questions])
    P, Q = jax.tree.leaves(lm_params)[0].shape[0], len(questions)
    gen = rollout.sample_policies(lm_params, prompts,
                                  jax.random.split(jax.random.PRNGKey(seed), P), 1.0,
                                  model_config, max_new_tokens=FRONTIER_CONFIG.max_new_tokens)
    kl = np.asarray(policy_kls(lm_params, sft_params, gen.tokens, gen.mask, model_config))
    texts = sampling.decode_masked(np.asarray(gen.tokens).reshape(P * Q, -1),
                                   np.asarray(gen.mask).reshape(P * Q, -1))
    gold = np.asarray([data.gold_reward(q, t) for q, t in zip(questions * P, texts)])
    if proxy.params is None:
        score = np.asarray([text_score(q, t) for q, t in zip(questions * P, texts)])
    else:
        T = gen.tokens.shape[-1]
        score = np.asarray(jax.jit(proxy.fn)(proxy.params, gen.tokens.reshape(P * Q, T),
                                             gen.mask.reshape(P * Q, T),
                                             jnp.tile(jnp.arange(Q), P)))
    return {"gold": gold.reshape(P, Q), "proxy": score.reshape(P, Q), "kl": kl,
            "bytes": np.asarray([len(t.encode()) for t in texts], float).reshape(P, Q),
            "texts": np.asarray(texts, dtype=object).reshape(P, Q)}


def frontier_questions() -> list:
    """The first ``FRONTIER_QUESTIONS`` of chapter 6's rephrased evaluation questions: what
    :func:`frontier_runs` measures every policy on."""
    return ch06_experiments.eval_questions()["rephrased"][:FRONTIER_QUESTIONS]


def frontier_runs(sft_params, proxy: rollout.Reward, text_score: Callable | None = None,
                  policy_kls=policy_k1) -> dict:
    """RLOO on ``proxy`` (a :class:`~rlhf_book.lm.rollout.Reward`, e.g. chapter 5's reward model
    from :func:`rm_proxy`; chapter 15's notebook runs this with the same reward model) from
    ``sft_params`` for each of ``FRONTIER_BETAS`` x ``FRONTIER_SEEDS`` (every run in one
    compiled ``vmap``, beta traced), ``FRONTIER_STEPS`` steps in chunks of ``FRONTIER_CHUNK``;
    after each chunk (and at step 0) every policy is measured on the rephrased questions
    (:func:`_frontier_eval`; ``text_score`` scores the answers when the proxy is a text reward,
    ``policy_kls`` measures the KL, by default :func:`policy_k1`). Returns ``{"steps": [C],
    "evals": {beta: {"gold", "proxy", "kl", "bytes": [C, seeds]}}, "metrics": {beta: {name:
    [seeds, steps]}}, "params": final lm params [betas * seeds, ...], "texts": {beta: the last
    answers [seeds, Q]}}``."""
    if proxy.params is None and text_score is None:
        raise ValueError("text_score is needed when the proxy is a text reward (no params)")
    model_config, questions, prompts = ch06_experiments.rl_task()
    eval_qs = frontier_questions()
    betas, S = FRONTIER_BETAS, FRONTIER_SEEDS
    R = len(betas) * S
    swept = jnp.repeat(jnp.asarray(betas, jnp.float32), S)
    init = ch06_loop.init_rl_state(FRONTIER_CONFIG, model_config, sft_params, proxy)
    state = jax.tree.map(lambda x: jnp.broadcast_to(x, (R, *jnp.shape(x))), init)

    def chunk(state, key, beta):
        config = dataclasses.replace(FRONTIER_CONFIG, beta=beta)
        step = ch06_loop.make_rl_step(config, model_config, prompts, proxy)
        return jax.lax.scan(step, state, jax.random.split(key, FRONTIER_CHUNK))

    chunk = jax.jit(jax.vmap(chunk))
    n_chunks = FRONTIER_STEPS // FRONTIER_CHUNK
    keys = jax.random.split(jax.random.PRNGKey(0), S)
    evals, metrics, steps = [], [], []
    for c in range(n_chunks + 1):
        if c:
            chunk_keys = jnp.tile(jax.vmap(lambda k: jax.random.fold_in(k, c))(keys),
                                  (len(betas), 1))
            state, m = chunk(state, chunk_keys, swept)
            metrics.append({k: np.asarray(v) for k, v in m.items()})
        evals.append(_frontier_eval(state.params["lm"], sft_params, eval_qs, model_config,
                                    seed=c, proxy=proxy, text_score=text_score,
                                    policy_kls=policy_kls))
        steps.append(c * FRONTIER_CHUNK)
    out = {"steps": np.asarray(steps), "evals": {}, "metrics": {}, "texts": {},
           "params": state.params["lm"]}
    for i, beta in enumerate(betas):
        part = slice(i * S, (i + 1) * S)
        out["evals"][beta] = {k: np.stack([e[k][part].mean(axis=1) for e in evals])
                              for k in ("gold", "proxy", "kl", "bytes")}
        out["metrics"][beta] = {k: np.concatenate([m[k][part] for m in metrics], axis=1)
                                for k in metrics[0]}
        out["texts"][beta] = evals[-1]["texts"][part]
    return out


def frontier_points(runs: dict) -> dict:
    """Per beta of :func:`frontier_runs`, at every checkpoint: the mean over seeds of the gold
    reward, the proxy and the KL on the rephrased questions, each with its standard error over
    seeds (``[C]`` arrays), and the checkpoint ``steps``."""
    out = {}
    for beta, e in runs["evals"].items():
        row = {"steps": runs["steps"]}
        for k in ("gold", "proxy", "kl", "bytes"):
            v = e[k]
            row[k] = v.mean(axis=1)
            row[f"{k}_se"] = v.std(axis=1, ddof=1) / np.sqrt(v.shape[1])
        out[beta] = row
    return out


def runs_to_arrays(runs: dict) -> dict[str, np.ndarray]:
    """:func:`frontier_runs`' results without the parameters, as flat ``{name: array}`` (what a
    checkpoint's history stores): ``steps``, ``evals/<beta>/<name>``, ``metrics/<beta>/<name>``
    and ``texts/<beta>``. :func:`runs_from_arrays` undoes it."""
    out = {"steps": np.asarray(runs["steps"])}
    for beta in runs["evals"]:
        out |= {f"evals/{beta!r}/{k}": np.asarray(v) for k, v in runs["evals"][beta].items()}
        out |= {f"metrics/{beta!r}/{k}": np.asarray(v) for k, v in runs["metrics"][beta].items()}
        out[f"texts/{beta!r}"] = np.asarray(runs["texts"][beta], dtype=object)
    return out


def runs_from_arrays(arrays: dict, params=None) -> dict:
    """The results of :func:`frontier_runs` back from :func:`runs_to_arrays`' flat arrays (and
    the final ``params``, when kept)."""
    runs = {"steps": np.asarray(arrays["steps"]), "evals": {}, "metrics": {}, "texts": {},
            "params": params}
    for name, value in arrays.items():
        if name == "steps":
            continue
        kind, beta, *rest = name.split("/")
        beta = float(beta)
        if kind == "texts":
            runs["texts"][beta] = np.asarray(value, dtype=object)
        else:
            runs[kind].setdefault(beta, {})[rest[0]] = np.asarray(value)
    order = sorted(runs["evals"], key=FRONTIER_BETAS.index)
    for kind in ("evals", "metrics", "texts"):
        runs[kind] = {beta: runs[kind][beta] for beta in order}
    return runs
