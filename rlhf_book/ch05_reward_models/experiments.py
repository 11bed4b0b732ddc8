"""Chapter 5's experiments: what ``notebooks/ch05_reward_models.ipynb`` runs.

Settings are the named constants below; change one and rerun the notebook. The experiments
that train on chapter 0's pretrained small model take its parameters as an argument
(:func:`rlhf_book.textbook.substrate.pretrained_small` provides them):

* §5.1, §5.4: the Bradley-Terry curves with Llama 2's margins (:func:`per_pair_bt_loss`), the
  Plackett-Luce probabilities of every ranking, exact and sampled, and fitting item scores from
  sampled rankings three ways (:func:`fit_estimators`);
* notebook section 5: reward models trained on 100 to 3,000 pairs of the simulated annotators
  (:func:`rm_runs`), read against the annotators' ceiling and agreement, by answer style;
* notebook section 6: the lecture notes' six-pair reward-model lesson done right
  (:func:`lesson_runs`);
* §5.7: the targets of each kind of model (:func:`value_targets`) and the ways to read an ORM
  (:func:`orm_aggregates`).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlhf_book import data
from rlhf_book.ch03_training_overview import discounted_returns
from rlhf_book.ch05_reward_models.losses import (AGGREGATIONS, POOLINGS, aggregate_token_scores,
                                                 balanced_pairwise_loss, bradley_terry_loss,
                                                 init_reward_model, plackett_luce_loss,
                                                 preference_accuracy, sample_plackett_luce)
from rlhf_book.ch05_reward_models.loop import (LESSON_CONFIG, PairBatch, RMConfig, encode_pairs,
                                               gold_pair_accuracy, lesson_batch, lesson_tokenize,
                                               score_pairs, train_reward_model)
from rlhf_book.lm import gpt

# The model the reward models of section 5 start from: chapter 0's pretrained small GPT.
RM_MODEL = "small"
RM_SEED = 0

# §5.1: the Bradley-Terry curves; the margins of §5.4.1 (Llama 2: the rating gap, e.g. 5 - 2 = 3).
DELTAS = np.linspace(-6.0, 6.0, 241)
MARGINS = (0.0, 1.0, 3.0)

# §5.4.3: three completions scored (2, 1, 0); fitting eight items' scores from rankings of four.
PL_SCORES = (2.0, 1.0, 0.0)
PL_DRAWS = 20_000
FIT_ITEMS, FIT_K, FIT_RANKINGS, FIT_STEPS = 8, 4, 300, 500

# Notebook section 5: reward models on chapter 0's pretrained small model, trained on the first
# n of 3,000 pairs (majority of 3 annotators, noise 0.5) for the same 160 steps of 8 pairs each
# (1,280 pairs drawn), and tested on 500 pairs about held-out facts. 116 tokens hold the longest
# pair; 1e-3 is a third of pretraining's rate (a reward model this small tolerates it). The step
# budget is what fits the notebook's two minutes next to the pretraining run (about 7 s a model
# on a 2-core CPU); 16 pairs a step reach 0.728 on 3,000 pairs instead of 0.698.
RM_SIZES = (100, 1000, 3000)
RM_CONFIG = RMConfig(steps=160, batch_size=8, seq_len=116, learning_rate=1e-3,
                          warmup_steps=16, log_every=40, n_pairs=max(RM_SIZES))
N_HELDOUT_PAIRS = 500
ANNOTATORS, ANNOTATOR_NOISE = 3, 0.5

# Notebook section 6: the six pairs of the lecture notes' reward-model lesson on its randomly
# initialised mini GPT,
# with a 160-token context; each step draws a batch of 6 of the six pairs, with replacement.
LESSON_RM = RMConfig(steps=20, batch_size=6, seq_len=LESSON_CONFIG.max_seq_len,
                          learning_rate=5e-4, warmup_steps=2, log_every=20)
LESSON_TRUNCATION = 128  # the lesson's context, which cut its sequences from the right

# §5.7: token rewards of a four-token completion; the steps of the PRM end at tokens 2 and 4.
RM_TYPE_REWARDS = {"dense r = (1, 0, 1, 1)": (1.0, 0.0, 1.0, 1.0),
                   "outcome only r = (0, 0, 0, 1)": (0.0, 0.0, 0.0, 1.0)}
PRM_STEP_ENDS, PRM_STEP_LABELS = (2, 4), (-1, 1)
ORM_PROBS = (0.9, 0.8, 0.95, 0.6)  # §5.7.1's aggregation example (the lecture notes' numbers)


# ----------------------------------------------------------------------------------------------
# §5.1, §5.4: the Bradley-Terry and Plackett-Luce models


def per_pair_bt_loss(deltas, margin: float = 0.0) -> np.ndarray:
    """``-log sigmoid(delta - margin)`` for each reward gap in ``deltas``, through
    :func:`~rlhf_book.ch05_reward_models.bradley_terry_loss` one pair at a time."""
    one = lambda d: bradley_terry_loss(d[None], jnp.zeros(1), margin)
    return np.asarray(jax.vmap(one)(jnp.asarray(deltas, jnp.float32)))


def ranking_probabilities(scores=PL_SCORES) -> dict[tuple[int, ...], float]:
    """``{ranking: P(ranking)}`` under Plackett-Luce (eq. 20) for every ordering of ``scores``,
    a ranking listing item indices best first: ``exp(-plackett_luce_loss)`` of each ordering."""
    s = np.asarray(scores, np.float32)
    orders = list(itertools.permutations(range(len(s))))
    nll = jax.vmap(lambda row: plackett_luce_loss(row[None]))(jnp.asarray(s[np.array(orders)]))
    return {order: float(p) for order, p in zip(orders, np.exp(-np.asarray(nll, np.float64)))}


def sampled_rankings(key, scores, draws: int) -> dict[tuple[int, ...], float]:
    """Frequencies of the rankings drawn by
    :func:`~rlhf_book.ch05_reward_models.sample_plackett_luce`, ``draws`` of them."""
    s = jnp.broadcast_to(jnp.asarray(scores, jnp.float32), (draws, len(scores)))
    counts = collections.Counter(map(tuple, np.asarray(sample_plackett_luce(key, s)).tolist()))
    return {order: counts[order] / draws for order in itertools.permutations(range(len(scores)))}


def ranking_dataset(seed: int = 0, n_items: int = FIT_ITEMS, k: int = FIT_K,
                    n_rankings: int = FIT_RANKINGS):
    """``(true_scores [n_items], ranked [n_rankings, k])``: items with scores ``r* ~ N(0, 1)``;
    each row is a random subset of ``k`` items ranked by a Plackett-Luce draw (Gumbel-max),
    item indices best first."""
    rng = np.random.default_rng(seed)
    true = rng.normal(size=n_items)
    subsets = np.stack([rng.choice(n_items, size=k, replace=False) for _ in range(n_rankings)])
    order = sample_plackett_luce(jax.random.PRNGKey(seed), jnp.asarray(true[subsets]))
    return true, np.take_along_axis(subsets, np.asarray(order), axis=1)


def fit_item_scores(loss_of_scores, n_items: int, steps: int = FIT_STEPS,
                    learning_rate: float = 0.1) -> np.ndarray:
    """Minimise ``loss_of_scores(theta)`` over ``theta [n_items]`` with Adam from zeros (one
    jitted ``lax.scan``); returns the scores centred to mean 0, the only thing a
    Bradley-Terry or Plackett-Luce likelihood identifies."""
    optimizer = optax.adam(learning_rate)

    def step(carry, _):
        theta, state = carry
        grads = jax.grad(loss_of_scores)(theta)
        updates, state = optimizer.update(grads, state)
        return (optax.apply_updates(theta, updates), state), None

    theta = jnp.zeros(n_items)
    (theta, _), _ = jax.jit(lambda c: jax.lax.scan(step, c, None, length=steps))(
        (theta, optimizer.init(theta)))
    theta = np.asarray(theta, np.float64)
    return theta - theta.mean()


def fit_estimators(true, ranked) -> dict[str, np.ndarray]:
    """Centred scores fitted three ways from the same rankings: the Plackett-Luce likelihood
    (eq. 20), Bradley-Terry on all ``C(K, 2)`` pairs of each ranking averaged per ranking
    (eq. 19), and Bradley-Terry on one pair per ranking (its top two items), the information
    a single pairwise annotation would give."""
    ranked = jnp.asarray(ranked)
    n = len(true)
    return {
        "Plackett-Luce (eq. 20)": fit_item_scores(lambda t: plackett_luce_loss(t[ranked]), n),
        "BT, all C(K,2) pairs (eq. 19)": fit_item_scores(
            lambda t: balanced_pairwise_loss(t[ranked]), n),
        "BT, top pair only": fit_item_scores(
            lambda t: bradley_terry_loss(t[ranked[:, 0]], t[ranked[:, 1]]), n),
    }


# ----------------------------------------------------------------------------------------------
# Notebook section 5: reward models on chapter 0's pretrained small model


def rm_datasets(seed: int = 0):
    """``(train_pairs, heldout_pairs)``: ``max(RM_SIZES)`` pairs about training facts (the
    smaller training sets are their prefixes) and ``N_HELDOUT_PAIRS`` about held-out facts."""
    kw = dict(n_annotators=ANNOTATORS, noise=ANNOTATOR_NOISE)
    train_pairs = data.preference_pairs(seed=seed, n=max(RM_SIZES), **kw)
    heldout = data.preference_pairs(seed=seed + 1, n=N_HELDOUT_PAIRS,
                                    questions=data.split_questions()[1], **kw)
    return train_pairs, heldout


class RMRun(NamedTuple):
    """One trained reward model: its parameters, its training history and its rewards of the
    held-out pairs' chosen and rejected responses."""

    params: dict
    history: dict
    chosen: np.ndarray
    rejected: np.ndarray


def rm_run(base_params, train_pairs, eval_batch: PairBatch, config: gpt.GPTConfig | None = None,
           rm_config: RMConfig = RM_CONFIG, seed: int = RM_SEED) -> RMRun:
    """One reward model from ``base_params`` (chapter 0's pretrained small model) trained on
    ``train_pairs`` with ``rm_config``, scored on the pairs of ``eval_batch``."""
    config = config or gpt.get_config(RM_MODEL)
    params = init_reward_model(jax.random.PRNGKey(seed), base_params, config)
    params, history = train_reward_model(
        config, params, rm_config, encode_pairs(train_pairs, rm_config.seq_len), seed=seed,
        progress=False)
    return RMRun(params, history, *score_pairs(params, config, eval_batch))


def rm_runs(base_params) -> dict[int, RMRun]:
    """``{n_pairs: RMRun}``: one reward model per training-set size in ``RM_SIZES``, each from
    ``base_params`` with ``RM_CONFIG`` (the same number of steps)."""
    train_pairs, heldout = rm_datasets()
    eval_batch = encode_pairs(heldout, RM_CONFIG.seq_len)
    return {n: rm_run(base_params, train_pairs[:n], eval_batch) for n in RM_SIZES}


def annotator_references(pairs) -> dict[str, float]:
    """The two lines every reward-model accuracy is read against: the best accuracy any model
    can reach on these labels (``bt_accuracy_ceiling``) and the annotators' agreement."""
    return {"ceiling": data.bt_accuracy_ceiling([p.gold_chosen for p in pairs],
                                                [p.gold_rejected for p in pairs],
                                                ANNOTATOR_NOISE, ANNOTATORS),
            "agreement": data.inter_annotator_agreement([p.votes for p in pairs])}


def accuracy_by_style(pairs, r_c, r_r) -> dict[str, dict[str, float]]:
    """Accuracy, gold accuracy and ceiling per unordered pair of styles, largest groups first."""
    groups = collections.defaultdict(list)
    for k, p in enumerate(pairs):
        groups[" vs ".join(sorted((p.style_chosen, p.style_rejected)))].append(k)
    r_c, r_r = np.asarray(r_c), np.asarray(r_r)
    out = {}
    for name, idx in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        sub = [pairs[k] for k in idx]
        out[name] = {"n": len(idx),
                     "accuracy": float(preference_accuracy(r_c[idx], r_r[idx])),
                     "gold_accuracy": gold_pair_accuracy(sub, r_c[idx], r_r[idx]),
                     "ceiling": annotator_references(sub)["ceiling"]}
    return out


# ----------------------------------------------------------------------------------------------
# Notebook section 6: the lecture notes' reward-model lesson, done right


def lesson_lengths(pairs=data.LESSON_PREFERENCE_PAIRS) -> np.ndarray:
    """``[N, 2]`` token counts (chosen, rejected) of the lesson's tokenisation."""
    return np.array([[len(lesson_tokenize(p["prompt"], p[key]))
                      for key in ("preferred", "rejected")] for p in pairs])


def lesson_runs() -> dict[str, dict]:
    """``{pooling: {"history", "seen", "unseen"}}``: the lesson's reward model (randomly
    initialised mini GPT, ``LESSON_CONFIG``) trained on its six pairs with ``LESSON_RM``, once
    per pooling, and its rewards ``(chosen, rejected)`` of the six seen and four unseen pairs."""
    config = LESSON_CONFIG
    seen = lesson_batch(data.LESSON_PREFERENCE_PAIRS)
    unseen = lesson_batch(data.LESSON_UNSEEN_PAIRS)
    runs = {}
    for pooling in POOLINGS:
        key_lm, key_head = jax.random.split(jax.random.PRNGKey(0))
        params = init_reward_model(key_head, gpt.init_params(key_lm, config), config)
        params, history = train_reward_model(
            config, params, dataclasses.replace(LESSON_RM, pooling=pooling), seen, seed=0,
            progress=False)
        runs[pooling] = {"history": history,
                         "seen": score_pairs(params, config, seen, pooling, chunk_size=8),
                         "unseen": score_pairs(params, config, unseen, pooling, chunk_size=8)}
    return runs


# ----------------------------------------------------------------------------------------------
# §5.7: what each kind of model is trained on, and how an ORM is read


def value_targets(rewards: dict | None = None) -> dict[str, np.ndarray]:
    """The return-to-go of each token-reward sequence (gamma = 1): the targets of a value
    function (chapter 3's :func:`~rlhf_book.ch03_training_overview.discounted_returns`)."""
    rewards = RM_TYPE_REWARDS if rewards is None else rewards
    return {name: np.asarray(discounted_returns(jnp.asarray(r), 1.0))
            for name, r in rewards.items()}


def orm_aggregates(probs=ORM_PROBS) -> dict[str, float]:
    """One ORM's per-token probabilities read every way of :data:`AGGREGATIONS` (§5.7.1)."""
    p = jnp.asarray([probs], jnp.float32)
    return {how: float(aggregate_token_scores(p, jnp.ones_like(p), how)[0])
            for how in AGGREGATIONS}
