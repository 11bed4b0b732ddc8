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
from rlhf_book.ch14_overoptimization import bon, pool
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


