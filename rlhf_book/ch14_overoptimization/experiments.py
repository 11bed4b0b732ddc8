"""Chapter 14's experiments: what the notebook runs, with its settings as named constants.

* **Closed form** (:mod:`.pool`): the reference pool of 20,000 responses whose proxy rewards
  length, optimised by the KL-regularised tilt and by best-of-N; the same pools with a proxy
  that is gold plus noise.
* **The mini GPT**: chapter 4's SFT model of the small GPT answers the rephrased evaluation
  questions ``BON_SAMPLES`` times each; every answer gets chapter 5's reward model's score (the
  proxy) and the world's gold reward, and :func:`~.bon.best_of_n_from_samples` turns them into
  best-of-N curves for every ``N`` in ``BON_NS`` against ``sqrt(KL)``.

Models are arguments: the notebook passes ``rlhf_book.textbook.substrate.sft_small()`` and
``reward_model_small()``.
"""

from __future__ import annotations

import jax
import numpy as np

from rlhf_book.ch05_reward_models import experiments as ch05_experiments
from rlhf_book.ch06_policy_gradients import experiments as ch06_experiments
from rlhf_book.ch06_policy_gradients.loop import reward_model_reward
from rlhf_book.ch09_rejection_sampling.selection import best_of_n_kl
from rlhf_book.ch14_overoptimization import bon, pool, proxies
from rlhf_book.lm import gpt
from rlhf_book.lm.eval import answer_samples

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


def scored_samples(sft_params, rm_params, questions=None, samples: int = BON_SAMPLES,
                   seed: int = BON_SEED) -> dict[str, np.ndarray]:
    """``samples`` answers of ``sft_params`` to each question (T = 1), each scored by the gold
    reward (``"gold"``) and by chapter 5's reward model ``rm_params`` (``"proxy"``): arrays
    ``[Q, samples]``, with ``"bytes"`` and the ``"texts"``."""
    questions = bon_questions() if questions is None else questions
    config = gpt.get_config("small")
    proxy = reward_model_reward(rm_params, config, ch05_experiments.RM_CONFIG.pooling)
    out = answer_samples(sft_params, questions, config, jax.random.PRNGKey(seed),
                         samples=samples, temperature=1.0, max_new_tokens=BON_TOKENS,
                         reward=proxy)
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
