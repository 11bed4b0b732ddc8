"""Every public loss, advantage and KL function against bad input (the conventions of
:mod:`rlhf_book.lm.checks`): a NaN or an infinity anywhere in an array argument, an empty
batch, or a hyperparameter outside its range (NaN and infinities included) raises a
``ValueError`` naming the argument, when the function is called eagerly; valid input gives a
finite result, eagerly and under ``jit`` (where the value checks are skipped, not failed).

The registry below lists each function with one valid call. The sizes differ from each other
(B = 3 prompts, G = 2 completions each, N = 6 sequences, T = 5 tokens, V = 7 vocabulary, K = 4
responses), so the batch axis of each argument is unambiguous.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhf_book.ch03_training_overview import rl as ch03
from rlhf_book.ch04_instruction_tuning import losses as ch04
from rlhf_book.ch05_reward_models import losses as ch05
from rlhf_book.ch06_policy_gradients import losses as ch06
from rlhf_book.ch07_reasoning import rlvr as ch07
from rlhf_book.ch08_direct_alignment import losses as ch08
from rlhf_book.ch09_rejection_sampling import selection as ch09
from rlhf_book.ch14_overoptimization import bon as ch14_bon
from rlhf_book.ch14_overoptimization import gao as ch14_gao
from rlhf_book.ch15_regularization import losses as ch15
from rlhf_book.lm import kl as lmkl
from rlhf_book.lm import ops as lmops

B, G, T, V, K = 3, 2, 5, 7, 4
N = B * G
rng = np.random.default_rng(0)


def logp(*shape):
    """Log-probabilities of sampled tokens: negative, finite."""
    return -rng.uniform(0.1, 3.0, shape).astype(np.float32)


def normal(*shape):
    return rng.normal(size=shape).astype(np.float32)


def mask(n=N, t=T):
    m = np.ones((n, t), np.float32)
    m[:, 0] = 0.0  # a prompt position
    m[1, -1] = 0.0  # a padded row end
    return m


def unit(*shape):
    """Rewards or rates in [0, 1]."""
    return rng.uniform(0.0, 1.0, shape).astype(np.float32)


def probs(k=K):
    p = rng.uniform(0.1, 1.0, k).astype(np.float32)
    return p / p.sum()


@dataclasses.dataclass(frozen=True)
class Case:
    """One valid call of ``fn``: ``args`` by name; ``floats`` the float array arguments that a
    NaN or an infinity must not get through; ``logits`` those of them where ``-inf`` is a
    probability of 0 (allowed); ``batch`` the arguments whose leading axis is the batch;
    ``ranges`` each hyperparameter's documented range ``(low, high, strict)``, ``None`` bounds
    open."""
    name: str
    fn: Callable
    args: dict
    floats: tuple = ()
    logits: tuple = ()
    batch: tuple = ()
    ranges: dict = dataclasses.field(default_factory=dict)

    def __call__(self, **overrides):
        return self.fn(**{**self.args, **overrides})


def pair_args():
    return dict(policy_chosen_logps=logp(N), policy_rejected_logps=logp(N),
                ref_chosen_logps=logp(N), ref_rejected_logps=logp(N))


PAIRS = ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps")
CLIPS = {"clip_low": (0.0, 1.0, False), "clip_high": (0.0, None, False)}
BETA_POSITIVE = {"beta": (0.0, None, True)}
BETA_PENALTY = {"beta": (0.0, None, False)}
TOKENS = ("logp", "old_logp", "mask")

CASES = [
    # chapter 3
    Case("discounted_return", ch03.discounted_return, dict(rewards=normal(B, T), gamma=0.9),
         ("rewards",), batch=("rewards",), ranges={"gamma": (0.0, 1.0, False)}),
    Case("discounted_returns", ch03.discounted_returns,
         dict(rewards=normal(B, T), gamma=0.9, dones=np.zeros((B, T), np.float32)),
         ("rewards", "dones"), batch=("rewards", "dones"), ranges={"gamma": (0.0, 1.0, False)}),
    Case("reinforce_loss", ch03.reinforce_loss,
         dict(logp=logp(N, T), returns=normal(N, T), mask=mask(), baseline=normal(T)),
         ("logp", "returns", "mask", "baseline"), batch=("logp", "returns", "mask")),
    Case("batch_baseline", ch03.batch_baseline, dict(returns=normal(N, T), mask=mask()),
         ("returns", "mask"), batch=("returns", "mask")),
    Case("rlhf_objective", ch03.rlhf_objective,
         dict(rewards=normal(N), logp_policy=logp(N, T), logp_ref=logp(N, T), beta=0.1,
              mask=mask()),
         ("rewards", "logp_policy", "logp_ref", "mask"),
         batch=("rewards", "logp_policy", "logp_ref", "mask"), ranges=BETA_PENALTY),
    # chapter 7
    Case("pass_rates", ch07.pass_rates, dict(rewards=unit(B, G)), ("rewards",), batch=("rewards",)),
    Case("difficulty_filter", ch07.difficulty_filter, dict(pass_rates=unit(B), low=0.2, high=0.8),
         ("pass_rates",), batch=("pass_rates",),
         ranges={"low": (0.0, 0.8, False), "high": (0.2, 1.0, False)}),
    Case("zero_variance_groups", ch07.zero_variance_groups, dict(rewards=normal(B, G)),
         ("rewards",), batch=("rewards",)),
    Case("zero_signal_probability", ch07.zero_signal_probability, dict(p=unit(B), G=8), ("p",),
         batch=("p",)),
    Case("maxrl_advantages", ch07.maxrl_advantages, dict(rewards=unit(B, G)), ("rewards",),
         batch=("rewards",)),
    Case("sum_then_normalize", ch07.sum_then_normalize,
         dict(rewards=normal(B, G, 2), weights=np.array([1.0, 0.5], np.float32), eps=1e-4),
         ("rewards", "weights"), batch=("rewards",), ranges={"eps": (0.0, None, True)}),
    Case("normalize_then_sum", ch07.normalize_then_sum,
         dict(rewards=normal(B, G, 2), weights=np.array([1.0, 0.5], np.float32), eps=1e-4),
         ("rewards", "weights"), batch=("rewards",), ranges={"eps": (0.0, None, True)}),
    # chapter 4
    Case("sft_loss", ch04.sft_loss,
         dict(logits=normal(N, T, V), tokens=rng.integers(0, V, (N, T)), loss_mask=mask()),
         ("logits", "loss_mask"), logits=("logits",), batch=("logits", "tokens", "loss_mask")),
    # chapter 5
    Case("bradley_terry_probability", ch05.bradley_terry_probability,
         dict(r_a=normal(N), r_b=normal(N)), ("r_a", "r_b"), batch=("r_a", "r_b")),
    Case("bradley_terry_loss", ch05.bradley_terry_loss,
         dict(chosen_rewards=normal(N), rejected_rewards=normal(N), margin=np.abs(normal(N))),
         ("chosen_rewards", "rejected_rewards", "margin"),
         batch=("chosen_rewards", "rejected_rewards", "margin")),
    Case("balanced_pairwise_loss", ch05.balanced_pairwise_loss,
         dict(scores=normal(B, K), valid=np.ones((B, K), np.float32)), ("scores", "valid"),
         batch=("scores", "valid")),
    Case("plackett_luce_loss", ch05.plackett_luce_loss, dict(scores=normal(N, K)), ("scores",),
         batch=("scores",)),
    Case("orm_loss", ch05.orm_loss,
         dict(logits=normal(N, T), labels=rng.integers(0, 2, N).astype(np.float32), mask=mask()),
         ("logits", "labels", "mask"), batch=("logits", "labels", "mask")),
    Case("prm_loss", ch05.prm_loss,
         dict(logits=normal(N, T, 3), step_labels=rng.integers(-1, 2, (N, T)), mask=mask()),
         ("logits", "mask"), batch=("logits", "step_labels", "mask")),
    Case("prm_binary_loss", ch05.prm_binary_loss,
         dict(logits=normal(N, T), step_labels=rng.integers(0, 2, (N, T)), mask=mask()),
         ("logits", "mask"), batch=("logits", "step_labels", "mask")),
    Case("aggregate_token_scores", ch05.aggregate_token_scores,
         dict(probs=rng.uniform(0.01, 1, (N, T)), mask=mask(), how="prod"), ("probs", "mask"),
         batch=("probs", "mask")),
    Case("preference_accuracy", ch05.preference_accuracy,
         dict(chosen_rewards=normal(N), rejected_rewards=normal(N), tie=0.5),
         ("chosen_rewards", "rejected_rewards"), batch=("chosen_rewards", "rejected_rewards"),
         ranges={"tie": (0.0, 1.0, False)}),
    Case("mean_pool", ch05.mean_pool, dict(hidden=normal(N, T, 8), mask=mask()),
         ("hidden", "mask"), batch=("hidden", "mask")),
    # chapter 6
    Case("reinforce_advantages", ch06.reinforce_advantages, dict(rewards=normal(N)),
         ("rewards",), batch=("rewards",)),
    Case("rloo_advantages", ch06.rloo_advantages, dict(rewards=normal(B, G)), ("rewards",),
         batch=("rewards",)),
    Case("grpo_advantages", ch06.grpo_advantages, dict(rewards=normal(B, G), eps=1e-4),
         ("rewards",), batch=("rewards",), ranges={"eps": (0.0, None, True)}),
    Case("token_advantages", ch06.token_advantages, dict(advantages=normal(N), mask=mask()),
         ("advantages", "mask"), batch=("advantages", "mask")),
    Case("policy_gradient_loss", ch06.policy_gradient_loss,
         dict(logp=logp(N, T), advantages=normal(N), mask=mask(), tis=np.ones((N, T), np.float32),
              max_length=T),
         ("logp", "advantages", "mask", "tis"), batch=("logp", "advantages", "mask", "tis"),
         ranges={"max_length": (0, None, True)}),
    Case("ppo_objective", ch06.ppo_objective, dict(ratio=rng.uniform(0.5, 1.5, (N, T)),
                                                  advantages=normal(N, T)),
         ("ratio", "advantages"), batch=("ratio", "advantages"), ranges=CLIPS),
    Case("ppo_clip_loss", ch06.ppo_clip_loss,
         dict(logp=logp(N, T), old_logp=logp(N, T), advantages=normal(N), mask=mask()),
         TOKENS + ("advantages",), batch=TOKENS + ("advantages",), ranges=CLIPS),
    Case("value_loss", ch06.value_loss,
         dict(values=normal(N, T), old_values=normal(N, T), returns=normal(N, T), mask=mask(),
              clip=0.2),
         ("values", "old_values", "returns", "mask"),
         batch=("values", "old_values", "returns", "mask"), ranges={"clip": (0.0, None, True)}),
    Case("grpo_loss", ch06.grpo_loss,
         dict(logp=logp(N, T), old_logp=logp(N, T), ref_logp=logp(N, T), advantages=normal(N),
              mask=mask(), beta=0.04),
         TOKENS + ("ref_logp", "advantages"), batch=TOKENS + ("ref_logp", "advantages"),
         ranges={**CLIPS, **BETA_PENALTY}),
    Case("gspo_sequence_ratio", ch06.gspo_sequence_ratio,
         dict(logp=logp(N, T), old_logp=logp(N, T), mask=mask()), TOKENS, batch=TOKENS),
    Case("gspo_loss", ch06.gspo_loss,
         dict(logp=logp(N, T), old_logp=logp(N, T), advantages=normal(N), mask=mask()),
         TOKENS + ("advantages",), batch=TOKENS + ("advantages",), ranges=CLIPS),
    Case("cispo_loss", ch06.cispo_loss,
         dict(logp=logp(N, T), old_logp=logp(N, T), advantages=normal(N), mask=mask()),
         TOKENS + ("advantages",), batch=TOKENS + ("advantages",),
         ranges={"ratio_cap": (0.0, None, True)}),
    Case("aggregate_loss", ch06.aggregate_loss,
         dict(per_token_loss=normal(N, T), mask=mask(), mode="fixed_length", max_length=T),
         ("per_token_loss", "mask"), batch=("per_token_loss", "mask"),
         ranges={"max_length": (0, None, True)}),
    Case("tis_weights", ch06.tis_weights, dict(learner_logp=logp(N, T), sampler_logp=logp(N, T)),
         ("learner_logp", "sampler_logp"), batch=("learner_logp", "sampler_logp"),
         ranges={"cap": (0.0, None, True), "log_clamp": (0.0, None, True)}),
    Case("kl_penalized_token_rewards", ch06.kl_penalized_token_rewards,
         dict(scores=normal(N), logp=logp(N, T), ref_logp=logp(N, T), mask=mask(), beta=0.05),
         ("scores", "logp", "ref_logp", "mask"), batch=("scores", "logp", "ref_logp", "mask"),
         ranges=BETA_PENALTY),
    Case("kl_penalized_sequence_rewards", ch06.kl_penalized_sequence_rewards,
         dict(scores=normal(N), logp=logp(N, T), ref_logp=logp(N, T), mask=mask(), beta=0.05),
         ("scores", "logp", "ref_logp", "mask"), batch=("scores", "logp", "ref_logp", "mask"),
         ranges=BETA_PENALTY),
    Case("compute_gae", ch06.compute_gae,
         dict(rewards=normal(N, T), values=normal(N, T), mask=mask(), gamma=1.0, lam=0.95),
         ("rewards", "values", "mask"), batch=("rewards", "values", "mask"),
         ranges={"gamma": (0.0, 1.0, False), "lam": (0.0, 1.0, False)}),
    Case("dynamic_sampling_mask", ch06.dynamic_sampling_mask, dict(rewards=normal(B, G)),
         ("rewards",), batch=("rewards",)),
    Case("overlong_penalty", ch06.overlong_penalty,
         dict(lengths=np.arange(N, dtype=np.float32) * 10, max_length=40, cache_length=10),
         ("lengths",), batch=("lengths",), ranges={"cache_length": (0, 40, True)}),
    Case("clip_fraction", ch06.clip_fraction,
         dict(logp=logp(N, T), old_logp=logp(N, T), advantages=normal(N), mask=mask()),
         TOKENS + ("advantages",), batch=TOKENS + ("advantages",), ranges=CLIPS),
    Case("approx_kl", ch06.approx_kl, dict(logp=logp(N, T), old_logp=logp(N, T), mask=mask()),
         TOKENS, batch=TOKENS),
    # chapter 8
    Case("log_partition", ch08.log_partition, dict(ref_probs=probs(), rewards=normal(K), beta=0.5),
         ("ref_probs", "rewards"), batch=("ref_probs", "rewards"), ranges=BETA_POSITIVE),
    Case("optimal_policy", ch08.optimal_policy, dict(ref_probs=probs(), rewards=normal(K), beta=0.5),
         ("ref_probs", "rewards"), batch=("ref_probs", "rewards"), ranges=BETA_POSITIVE),
    Case("regularized_objective", ch08.regularized_objective,
         dict(probs=probs(), ref_probs=probs(), rewards=normal(K), beta=0.5),
         ("probs", "ref_probs", "rewards"), batch=("probs", "ref_probs", "rewards"),
         ranges=BETA_PENALTY),
    Case("reward_from_policy", ch08.reward_from_policy,
         dict(policy_probs=probs(), ref_probs=probs(), beta=0.5, log_z=0.3),
         ("policy_probs", "ref_probs"), batch=("policy_probs", "ref_probs"),
         ranges={**BETA_PENALTY, "log_z": (None, None, False)}),
    Case("population_dpo_loss", ch08.population_dpo_loss,
         dict(policy_logits=normal(K), ref_probs=probs(), rewards=normal(K), beta=0.5),
         ("policy_logits", "ref_probs", "rewards"),
         batch=("policy_logits", "ref_probs", "rewards"), ranges=BETA_POSITIVE),
    Case("sequence_log_probs", ch08.sequence_log_probs,
         dict(token_log_probs=logp(N, T), mask=mask()), ("token_log_probs", "mask"),
         batch=("token_log_probs", "mask")),
    Case("dpo_logits", ch08.dpo_logits, pair_args(), PAIRS, batch=PAIRS),
    Case("implicit_reward", ch08.implicit_reward,
         dict(policy_logps=logp(N), ref_logps=logp(N), beta=0.1), ("policy_logps", "ref_logps"),
         batch=("policy_logps", "ref_logps"), ranges=BETA_POSITIVE),
    Case("dpo_loss", ch08.dpo_loss, dict(**pair_args(), beta=0.1, label_smoothing=0.1), PAIRS,
         batch=PAIRS, ranges={**BETA_POSITIVE, "label_smoothing": (0.0, 0.5, False)}),
    Case("dpo_gradient_weight", ch08.dpo_gradient_weight, dict(**pair_args(), beta=0.1), PAIRS,
         batch=PAIRS, ranges=BETA_POSITIVE),
    Case("robust_dpo_loss", ch08.robust_dpo_loss, dict(**pair_args(), beta=0.1,
                                                       label_smoothing=0.1), PAIRS,
         batch=PAIRS, ranges={**BETA_POSITIVE, "label_smoothing": (0.0, 0.5 - 1e-6, False)}),
    Case("ipo_loss", ch08.ipo_loss, dict(**pair_args(), beta=0.1), PAIRS, batch=PAIRS,
         ranges=BETA_POSITIVE),
    Case("hinge_loss", ch08.hinge_loss, dict(**pair_args(), beta=0.1), PAIRS, batch=PAIRS,
         ranges=BETA_POSITIVE),
    Case("simpo_loss", ch08.simpo_loss,
         dict(avg_chosen_logps=logp(N), avg_rejected_logps=logp(N), beta=2.0, gamma=1.0),
         ("avg_chosen_logps", "avg_rejected_logps"),
         batch=("avg_chosen_logps", "avg_rejected_logps"),
         ranges={**BETA_POSITIVE, "gamma": (None, None, False)}),
    Case("orpo_odds_ratio_loss", ch08.orpo_odds_ratio_loss,
         dict(avg_chosen_logps=logp(N), avg_rejected_logps=logp(N)),
         ("avg_chosen_logps", "avg_rejected_logps"),
         batch=("avg_chosen_logps", "avg_rejected_logps")),
    Case("kto_loss", ch08.kto_loss, dict(**pair_args(), kl_reference_point=0.1, beta=0.1),
         PAIRS + ("kl_reference_point",), batch=PAIRS,
         ranges={**BETA_POSITIVE, "desirable_weight": (0.0, None, False),
                 "undesirable_weight": (0.0, None, False)}),
    # chapter 9
    Case("select_top_per_prompt", ch09.select_top_per_prompt, dict(rewards=normal(B, K)),
         ("rewards",), batch=("rewards",)),
    Case("select_top_overall", ch09.select_top_overall, dict(rewards=normal(B, K), k=2),
         ("rewards",)),
    Case("best_of_n_distribution", ch09.best_of_n_distribution,
         dict(probs=probs(), rewards=normal(K), n=4), ("probs", "rewards"),
         batch=("probs", "rewards")),
    Case("best_of_n_exact_kl", ch09.best_of_n_exact_kl,
         dict(probs=probs(), rewards=normal(K), n=4), ("probs", "rewards"),
         batch=("probs", "rewards")),
    Case("expected_best_of_n_reward", ch09.expected_best_of_n_reward,
         dict(probs=probs(), rewards=normal(K), n=4), ("probs", "rewards"),
         batch=("probs", "rewards")),
    # chapter 14
    Case("gao_bon", ch14_gao.gao_bon, dict(d=unit(K), alpha=1.0, beta=0.5), ("d",),
         batch=("d",)),
    Case("gao_rl", ch14_gao.gao_rl, dict(d=unit(K), alpha=1.0, beta=0.5), ("d",),
         batch=("d",)),
    Case("best_of_n_from_samples", ch14_bon.best_of_n_from_samples,
         dict(proxy=normal(B, K), gold=normal(B, K), n=2), ("proxy", "gold"),
         batch=("proxy", "gold")),
    # chapter 15
    Case("exact_kl", ch15.exact_kl, dict(logits_p=normal(N, V), logits_q=normal(N, V)),
         ("logits_p", "logits_q"), logits=("logits_p", "logits_q"),
         batch=("logits_p", "logits_q")),
    Case("sequence_kl", ch15.sequence_kl,
         dict(logits=normal(N, T, V), ref_logits=normal(N, T, V), mask=mask()),
         ("logits", "ref_logits", "mask"), logits=("logits", "ref_logits"),
         batch=("logits", "ref_logits", "mask")),
    Case("sequence_kl_estimate", ch15.sequence_kl_estimate,
         dict(logp=logp(N, T), ref_logp=logp(N, T), mask=mask()), ("logp", "ref_logp", "mask"),
         batch=("logp", "ref_logp", "mask")),
    Case("generation_kl", ch15.generation_kl,
         dict(logits=normal(N, T, V), ref_logits=normal(N, T, V),
              tokens=rng.integers(1, V, (N, T)), mask=mask()),  # token 0 never sampled
         ("logits", "ref_logits", "mask"), logits=("logits", "ref_logits"),
         batch=("logits", "ref_logits", "tokens", "mask")),
    Case("torch_kl_div", ch15.torch_kl_div,
         dict(input=np.log(np.stack([probs(V) for _ in range(N)])),
              target=np.stack([probs(V) for _ in range(N)]), reduction="batchmean"),
         ("input", "target"), batch=("input", "target")),
    Case("kl_gradient", ch15.kl_gradient, dict(logits=normal(N, V), ref_logits=normal(N, V)),
         ("logits", "ref_logits"), batch=("logits", "ref_logits")),
    Case("estimator_loss_gradient", ch15.estimator_loss_gradient,
         dict(logits=normal(N, V), ref_logits=normal(N, V)), ("logits", "ref_logits"),
         batch=("logits", "ref_logits")),
    Case("estimator_reward_gradient", ch15.estimator_reward_gradient,
         dict(logits=normal(N, V), ref_logits=normal(N, V)), ("logits", "ref_logits"),
         batch=("logits", "ref_logits")),
    Case("ppo_ptx_objective", ch15.ppo_ptx_objective,
         dict(rl_objective=np.float32(0.3), pretrain_logp=logp(N), gamma=27.8),
         ("rl_objective", "pretrain_logp"), batch=("pretrain_logp",),
         ranges={"gamma": (0.0, None, False)}),
    Case("ptx_loss", ch15.ptx_loss, dict(rl_loss=np.float32(0.3), pretrain_nll=np.float32(2.1),
                                         gamma=27.8),
         ("rl_loss", "pretrain_nll"),
         ranges={"gamma": (0.0, None, False)}),
    Case("dpo_nll_loss", ch15.dpo_nll_loss,
         dict(**pair_args(), chosen_lengths=np.full(N, 4.0, np.float32), beta=0.1, alpha=1.0),
         PAIRS + ("chosen_lengths",), batch=PAIRS + ("chosen_lengths",),
         ranges={**BETA_POSITIVE, "alpha": (0.0, None, False)}),
    Case("margin_bt_loss", ch15.margin_bt_loss,
         dict(chosen_rewards=normal(N), rejected_rewards=normal(N), margin=np.abs(normal(N))),
         ("chosen_rewards", "rejected_rewards", "margin"),
         batch=("chosen_rewards", "rejected_rewards", "margin")),
    Case("margin_dpo_loss", ch15.margin_dpo_loss,
         dict(**pair_args(), margin=np.abs(normal(N)), beta=0.1), PAIRS + ("margin",),
         batch=PAIRS + ("margin",), ranges=BETA_POSITIVE),
    # lm: the KL estimators and the next-token loss every chapter shares
    *[Case(f"lm.{fn.__name__}", fn, dict(logp=logp(N, T), ref_logp=logp(N, T)),
           ("logp", "ref_logp"), batch=("logp", "ref_logp"))
      for fn in (lmkl.log_ratio, lmkl.kl_k1, lmkl.kl_k2, lmkl.kl_k3, lmkl.kl_estimate)],
    Case("lm.next_token_loss", lmops.next_token_loss,
         dict(logits=normal(N, T, V), tokens=rng.integers(0, V, (N, T)), mask=mask()),
         ("logits", "mask"), logits=("logits",), batch=("logits", "tokens", "mask")),
    Case("lm.next_token_log_probs", lmops.next_token_log_probs,
         dict(logits=normal(N, T, V), tokens=rng.integers(0, V, (N, T))), ("logits",),
         logits=("logits",), batch=("logits", "tokens")),
    Case("lm.log_probs_from_logits", lmops.log_probs_from_logits,
         dict(logits=normal(N, T, V), targets=rng.integers(0, V, (N, T))), ("logits",),
         logits=("logits",), batch=("logits", "targets")),
]
IDS = [case.name for case in CASES]
HYPERS = [(case, name) for case in CASES for name in case.ranges]


def all_finite(out: Any) -> bool:
    return all(bool(jnp.all(jnp.isfinite(jnp.asarray(leaf)))) for leaf in jax.tree.leaves(out))


def test_the_registry_covers_every_public_loss_and_advantage():
    """A new loss in a chapter's ``losses`` module must be added here (or to ``NOT_LOSSES``
    with the reason)."""
    NOT_LOSSES = {
        # text, integer and model-level functions: no float batch to corrupt
        "apply_chat_template", "loss_mask_for", "unroll_conversation", "pad_examples",
        "pack_examples", "sft_examples", "sample_plackett_luce", "init_reward_model",
        "reward_scores", "n_pairs_per_prompt", "last_token_index", "best_of_n", "margin_like",
        "unflatten_index", "inverse_permutation", "best_of_n_kl", "check_roles",
        # simulated environments of chapter 3 (values are states, not data)
        "thermostat_reward", "thermostat_step", "threshold_policy", "rollout_thermostat",
        "cartpole_reset", "cartpole_step", "recipe_table",
        # chapter 7: votes over answers (integers or Python objects), an exact enumeration in
        # Python floats, and pass@k over integer counts
        "majority_vote", "majority_vote_index", "majority_vote_accuracy", "pass_at_k",
        # masked reductions: documented to tolerate anything at masked positions
        "masked_mean", "masked_sum",
    }
    covered = {case.fn.__name__ for case in CASES}
    for module in (ch03, ch04, ch05, ch06, ch07, ch08, ch09, ch15, lmkl, lmops):
        names = getattr(module, "__all__", [n for n in dir(module) if not n.startswith("_")])
        for name in names:
            fn = getattr(module, name)
            if callable(fn) and getattr(fn, "__module__", None) == module.__name__ \
                    and not isinstance(fn, type):
                assert name in covered | NOT_LOSSES, f"{module.__name__}.{name} is not covered"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_valid_input_gives_a_finite_result_eagerly_and_under_jit(case):
    eager = case()
    assert all_finite(eager), case.name
    arrays = {k: v for k, v in case.args.items() if k in case.floats}
    jitted = jax.jit(lambda a: case(**a))(arrays)  # value checks are skipped under tracing
    for x, y in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=IDS)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_nan_or_an_infinity_in_any_array_argument_raises(case, data):
    name = data.draw(st.sampled_from(case.floats), label="argument")
    bad_values = [math.nan, math.inf] + ([] if name in case.logits else [-math.inf])
    bad = data.draw(st.sampled_from(bad_values), label="value")
    x = np.array(case.args[name], np.float32, copy=True)
    x.flat[data.draw(st.integers(0, x.size - 1), label="position")] = bad
    with pytest.raises(ValueError, match=name):
        case(**{name: x})


@pytest.mark.parametrize("case", [c for c in CASES if c.logits], ids=[c.name for c in CASES
                                                                      if c.logits])
def test_minus_inf_logits_are_a_probability_of_zero_not_an_error(case):
    for name in case.logits:
        x = np.array(case.args[name], np.float32, copy=True)
        x[..., 0] = -np.inf  # one category impossible everywhere
        out = case(**{name: x})
        assert not any(bool(jnp.any(jnp.isnan(jnp.asarray(leaf)))) for leaf in jax.tree.leaves(out))


@pytest.mark.parametrize("case", [c for c in CASES if c.batch], ids=[c.name for c in CASES
                                                                     if c.batch])
def test_an_empty_batch_raises(case):
    empty = {name: np.asarray(case.args[name])[:0] for name in case.batch}
    with pytest.raises(ValueError, match="empty"):
        case(**empty)


@pytest.mark.parametrize("case, name", HYPERS, ids=[f"{c.name}-{n}" for c, n in HYPERS])
def test_a_hyperparameter_outside_its_range_raises(case, name):
    low, high, strict = case.ranges[name]
    bad = [math.nan, math.inf, -math.inf]
    if low is not None:
        bad.append(low if strict else low - 0.5)
    if high is not None:
        bad.append(high + 0.5)
    for value in bad:
        with pytest.raises(ValueError, match=name):
            case(**{name: value})
    # ... while both ends of a closed range are accepted and give a finite result
    for value in (low, high):
        if value is not None and not (value == low and strict):
            assert all_finite(case(**{name: value})), (case.name, name, value)
