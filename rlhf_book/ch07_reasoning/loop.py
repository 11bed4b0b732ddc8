"""Chapter 7, the loop: reinforcement learning with verifiable rewards on the mini GPT (book
ch. 7 introduction, the three-step loop and Figure 25; §7.2.3 common practices).

The book's RLVR loop is RL's loop with a verifier where the reward model was:

1. **sample** several answers to several questions (chapter 6's rollout: ``B`` prompts, ``G``
   completions each, with the KV cache);
2. **verify** each answer: 1 when the answer it states is the right one, else 0
   (:func:`last_integer_verifier` on the world's sums; :func:`strict_format_verifier` and the
   hackable :func:`any_integer_verifier` beside it), run on the host as real verifiers are;
3. **step** toward the right answers: group advantages on the binary rewards (GRPO's, or
   MaxRL's ``(r - mean) / mean``), groups that all tie dropped (online filtering), a clipped
   policy-gradient loss, one optimizer step -- :func:`rlvr_step`, the chapter's loop-level
   exercise -- and repeat, revisiting the same questions many times.

:func:`make_rlvr_train` builds ``train(key)``: all steps in one ``lax.scan``, so that
``jax.jit(jax.vmap(train))(keys)`` trains one policy per seed at once. The run's settings are
chapter 6's :class:`~rlhf_book.ch06_policy_gradients.RLConfig` (batch, learning rate, KL
coefficient ``beta``, clip range, loss aggregation, truncation penalty); the advantage rule and
online filtering are this chapter's arguments.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlhf_book.ch06_policy_gradients.loop import RLConfig, RLState, init_rl_state, rollout
from rlhf_book.ch06_policy_gradients.losses import (LOG_RATIO_CLAMP, aggregate_loss,
                                                    dynamic_sampling_mask, grpo_advantages,
                                                    ppo_objective)
from rlhf_book.ch07_reasoning.rlvr import maxrl_advantages
from rlhf_book.data.arithmetic import extract_answer
from rlhf_book.lm import gpt, train
from rlhf_book.lm.checks import as_float_array, as_groups, check_choice
from rlhf_book.lm.kl import kl_k3
from rlhf_book.lm.ops import log_probs_from_logits, masked_sum
from rlhf_book.lm.rollout import PromptSet, Reward, adam, text_reward
from rlhf_book.lm.sampling import decode_masked

__all__ = [
    "ADVANTAGES", "last_integer_verifier", "any_integer_verifier", "strict_format_verifier",
    "VERIFIERS", "verifier_reward", "verifier_mixture", "rlvr_step", "make_rlvr_step",
    "make_rlvr_train", "train_rlvr",
]

# The advantage rules on binary rewards: GRPO's (r - mean) / std, Dr. GRPO's r - mean, MaxRL's
# (r - mean) / mean.
ADVANTAGES = ("grpo", "dr_grpo", "maxrl")

# ----------------------------------------------------------------------------------------------
# Step 2: verifiers for the world's arithmetic (answers are whole numbers)

_INTEGERS = re.compile(r"(?:(?<!\w)-)?\d+")
_STRICT = re.compile(r"\s*The answer is (-?\d+)\.\s*")


def last_integer_verifier(question, text: str) -> float:
    """1.0 when the last integer in ``text`` is ``question.answer``, else 0.0: the rule of
    :func:`rlhf_book.data.verify` and of GSM8K-style graders that read the final number. A
    reply with no number, a wrong one and a hedge all score 0 (book ch. 7 introduction: "a
    positive reward when the answer is correct and 0 otherwise")."""
    return 1.0 if extract_answer(text) == int(question.answer) else 0.0


def any_integer_verifier(question, text: str) -> float:
    """1.0 when *any* integer in ``text`` is ``question.answer``: a lax verifier, hackable by a
    policy that lists several numbers (the chapter's reward-hacking demonstration; book
    §7.2.3 on format rewards, and the over-optimisation of chapter 14)."""
    answer = int(question.answer)
    return 1.0 if any(int(x) == answer for x in _INTEGERS.findall(text)) else 0.0


def strict_format_verifier(question, text: str) -> float:
    """1.0 only when the whole reply is "The answer is N." (whitespace aside) with ``N`` the
    right answer: correctness and a format reward in one (book §7.2.3, format rewards). Closes
    the lax verifier's loophole: one committed number, nothing else."""
    match = _STRICT.fullmatch(text)
    return 1.0 if match and int(match[1]) == int(question.answer) else 0.0


VERIFIERS: dict[str, Callable] = {"last_integer": last_integer_verifier,
                                  "any_integer": any_integer_verifier,
                                  "strict_format": strict_format_verifier}


def verifier_reward(questions: Sequence, verifier: str = "last_integer") -> Reward:
    """A loop's :class:`~rlhf_book.lm.rollout.Reward`: the named verifier of
    :data:`VERIFIERS` applied on the host to ``questions[prompt_id]`` and each decoded
    completion (``jax.pure_callback`` inside the jitted step)."""
    check_choice(verifier, "verifier", sorted(VERIFIERS))
    return text_reward(VERIFIERS[verifier], questions)


def verifier_mixture(questions: Sequence, verifiers: Sequence[str]) -> Reward:
    """A :class:`~rlhf_book.lm.rollout.Reward` whose score is a weighted sum of several
    verifiers' verdicts: the host computes each of ``verifiers`` (names in :data:`VERIFIERS`)
    on every completion, ``[N, V]``, and the score is that times the reward's ``params``, a
    weight vector ``[V]`` (default: the first verifier alone). The weights travel as data, so
    one compiled loop trains under different verifiers: ``jax.vmap`` over one-hot weights
    compares them at the cost of one compilation."""
    if isinstance(verifiers, str) or not verifiers:
        raise ValueError(f"verifiers must be a non-empty list of names, got {verifiers!r}")
    for name in verifiers:
        check_choice(name, "verifiers", sorted(VERIFIERS))
    fns, items = [VERIFIERS[v] for v in verifiers], list(questions)

    def host(tokens, mask, prompt_ids):
        texts = decode_masked(tokens, mask)
        return np.asarray([[f(items[int(i)], t) for f in fns] for i, t in zip(prompt_ids, texts)],
                          np.float32)

    def fn(weights, tokens, mask, prompt_ids):
        out = jax.ShapeDtypeStruct((*prompt_ids.shape, len(fns)), jnp.float32)
        verdicts = jax.pure_callback(host, out, tokens, mask, prompt_ids,
                                     vmap_method="sequential")
        return verdicts @ weights

    return Reward(fn, jnp.eye(len(fns), dtype=jnp.float32)[0])


# ----------------------------------------------------------------------------------------------
# Step 3: from verified rewards to a gradient -- the chapter's loop-level exercise


def _group_advantages(rewards, advantage: str):
    if advantage == "maxrl":
        return maxrl_advantages(rewards)
    return grpo_advantages(rewards, scale=advantage == "grpo")


# [guide:rlvr-step]
def rlvr_step(params, tokens, mask, rewards, old_logp, ref_logp, model_config,
              advantage="grpo", online_filter=True, beta=0.0, clip_low=0.2, clip_high=0.28,
              aggregation="per_token", temperature=1.0):
    """The loss and gradient of one RLVR update from verified rewards (book ch. 7 introduction,
    the loop's step 2, "take gradient steps toward the correct answers"; §7.2.3's online
    filtering, KL removal, asymmetric clipping and loss normalisation; chapter 6's eqs. 52, 56,
    57, 67, 68; MaxRL, Tajwar et al. 2026).

    The rollout: ``B`` prompts with ``G`` completions each, ``N = B * G`` rows in prompt-major
    order (row ``b * G + g`` is completion ``g`` of prompt ``b``). ``tokens [N, T]`` (prompt,
    completion, padding), ``mask [N, T]`` (1 on completion tokens; position 0 is never one),
    ``rewards [B, G]`` the verifier's 0/1 verdicts, ``old_logp`` and ``ref_logp [N, T]`` the
    log-probs of the sampled tokens under the sampling policy and the reference (0 off the
    mask). ``params``: the policy's (mini GPT) parameters; ``model_config`` its configuration.

    Computed, in order:

    1. ``keep [B]``: with ``online_filter``, True for the groups whose rewards are not all
       equal (all right or all wrong carries no group-relative signal, §7.2.3); without, all
       True;
    2. ``A [B, G]``: ``advantage="grpo"``: ``(r - mean) / (std + 1e-4)`` (Bessel-corrected std,
       eq. 57); ``"dr_grpo"``: ``r - mean`` (eq. 58); ``"maxrl"``: ``(r - mean) / mean``, 0 for
       a group with mean 0. Each completion's advantage is shared by its tokens;
    3. ``logp [N, T]``: ``log pi_theta(tokens[:, t] | tokens[:, :t])`` under ``softmax(logits /
       temperature)`` of ``gpt.forward``, 0 where ``mask`` is 0;
    4. per completion token of a kept group, ``-min(rho A, clip(rho, 1 - clip_low, 1 +
       clip_high) A) + beta * k3``, ``rho = exp(logp - old_logp)`` (log-ratio clamped to
       +-20), ``k3 = exp(ref_logp - logp) - (ref_logp - logp) - 1``;
    5. ``loss``: the policy term and the KL term each reduced by ``aggregation`` (chapter 6's
       ``aggregate_loss``: ``"per_token"``, eq. 68, the default as in DAPO; ``"per_sequence"``,
       eq. 67; ``"fixed_length"``, eq. 69) over the tokens of kept groups only, then added. No
       kept group gives a loss and gradient of exactly 0.

    Returns ``(loss, grads, keep)``: the scalar loss, its gradient with respect to ``params``
    (shaped like ``params``; advantages, ``old_logp`` and ``ref_logp`` are constants) and
    ``keep [B]`` (bool).

    How: ``dynamic_sampling_mask`` (chapter 6) for ``keep``; ``grpo_advantages`` (6.3) or
    ``maxrl_advantages`` (7.7); the loss mask ``mask * keep`` repeated ``G`` times per group;
    then as in chapter 6's ``grpo_step`` (6.9): inside ``loss_fn(params)`` the logits of
    ``gpt.forward``, ``log_probs_from_logits`` of ``logits[:, :-1] / temperature`` against
    ``tokens[:, 1:]`` padded with one 0 on the left, ``ppo_objective`` on the clamped ratio,
    ``kl_k3``, ``aggregate_loss`` for each term; ``jax.value_and_grad``.
    """
    rewards = as_groups(rewards)
    tokens = jnp.asarray(tokens)
    if rewards.size != tokens.shape[0]:
        raise ValueError(f"rewards must have shape [B, G] with B * G = N = {tokens.shape[0]} "
                         f"rows of tokens, got {rewards.shape}")
    mask = as_float_array(mask, "mask", "[N, T]")
    check_choice(advantage, "advantage", ADVANTAGES)
    # BEGIN SOLUTION
    B, G = rewards.shape
    keep = dynamic_sampling_mask(rewards) if online_filter else jnp.ones(B, bool)
    adv = jnp.broadcast_to(_group_advantages(rewards, advantage).reshape(-1, 1), mask.shape)
    mask = mask * jnp.repeat(keep, G)[:, None]

    def loss_fn(params):
        logits = gpt.forward(params, tokens, model_config)
        logp = log_probs_from_logits(logits[:, :-1] / temperature, tokens[:, 1:])
        logp = jnp.where(mask > 0, jnp.pad(logp, ((0, 0), (1, 0))), 0.0)
        ratio = jnp.exp(jnp.clip(logp - old_logp, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
        policy = aggregate_loss(-ppo_objective(ratio, adv, clip_low, clip_high), mask,
                                aggregation)
        kl = aggregate_loss(kl_k3(logp, ref_logp), mask, aggregation)
        return policy + beta * kl

    loss, grads = jax.value_and_grad(loss_fn)(params)
    return loss, grads, keep
    # END SOLUTION
# [/guide]


# ----------------------------------------------------------------------------------------------
# The loop: sample, verify, step; all steps in one scan


def _check_on_policy(config: RLConfig) -> None:
    if config.epochs != 1 or config.minibatches != 1 or config.tis_cap is not None:
        raise ValueError(
            "RLConfig for the RLVR loop must make one on-policy update per batch: epochs=1, "
            f"minibatches=1, tis_cap=None; got epochs={config.epochs}, "
            f"minibatches={config.minibatches}, tis_cap={config.tis_cap}")
    if config.algo.advantage == "gae":
        raise ValueError("RLConfig.algorithm for the RLVR loop must not be 'ppo' (no value "
                         "head: RLVR's advantages are group-relative)")


# [guide:rlvr-loop]
def make_rlvr_step(config: RLConfig, model_config: gpt.GPTConfig, prompts: PromptSet,
                   reward: Reward, advantage: str = "grpo",
                   online_filter: bool = True) -> Callable:
    """``step(state, key) -> (state, metrics)``: one RLVR step (book ch. 7, the three-step
    loop and Figure 25). Sample ``config.prompts_per_step`` prompts x ``config.group_size``
    completions and score them with ``reward`` (chapter 6's :func:`rollout`, which also applies
    ``config.truncation_penalty``); :func:`rlvr_step` with ``advantage`` and
    ``online_filter``, ``config.beta``, ``config.clip`` and ``config.algo.aggregation``; one
    optax step (Adam, clipped by global norm). ``config`` must make one on-policy update per
    batch (``epochs = minibatches = 1``): the rollout's log-probs are then ``pi_old``.

    Metrics (scalars): ``score`` (mean verified reward: the training pass@1), ``solved`` (the
    share of groups with at least one right answer), ``kept`` (groups with signal), ``kl``
    (summed k3 to the reference, averaged), ``length`` (completion tokens), ``stopped``,
    ``loss``, ``grad_norm``."""
    _check_on_policy(config)
    check_choice(advantage, "advantage", ADVANTAGES)
    optimizer = adam(config.learning_rate, config.max_grad_norm)
    clip_low, clip_high = config.clip
    B, G = config.prompts_per_step, config.group_size

    def step(state: RLState, key):
        k_roll, _ = jax.random.split(key)  # chapter 6's step samples with the same key
        batch = rollout(state, k_roll, config, model_config, prompts, reward)  # 1. sample, 2. verify
        rewards = batch.scores.reshape(B, G)
        loss, grads, keep = rlvr_step(                                        # 3. step
            state.params["lm"], batch.tokens, batch.mask, rewards, batch.old_logp,
            batch.ref_logp, model_config, advantage, online_filter, config.beta, clip_low,
            clip_high, config.algo.aggregation, config.temperature)
        grads = {"lm": grads}
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "score": jnp.mean(batch.scores),
            "solved": jnp.mean((jnp.max(rewards, axis=1) > 0).astype(jnp.float32)),
            "kept": jnp.mean(keep.astype(jnp.float32)),
            "kl": jnp.mean(masked_sum(kl_k3(batch.old_logp, batch.ref_logp), batch.mask, axis=1)),
            "length": jnp.mean(jnp.sum(batch.mask, axis=1)),
            "stopped": jnp.mean(batch.stopped.astype(jnp.float32)),
            "loss": loss, "grad_norm": optax.tree.norm(grads)}
        return state._replace(params=params, opt_state=opt_state, step=state.step + 1), metrics

    return step
# [/guide]


def make_rlvr_train(config: RLConfig, model_config: gpt.GPTConfig, lm_params,
                    prompts: PromptSet, reward: Reward, advantage: str = "grpo",
                    online_filter: bool = True, ref_params=None) -> Callable:
    """``train(key, beta=None, reward_params=None) -> (final_state, metrics)``:
    ``config.steps`` RLVR steps (:func:`make_rlvr_step`) from ``lm_params`` in one
    ``lax.scan``, metrics with a leading axis of ``steps``. Pure: ``jax.jit(jax.vmap(train))(
    keys)`` trains one policy per seed. ``beta`` (may be traced) replaces ``config.beta`` and
    ``reward_params`` the reward's parameters (e.g. :func:`verifier_mixture`'s weights), so
    ``jax.vmap(train)(keys, betas, weights)`` compares KL coefficients or verifiers in one
    compilation."""

    def train(key, beta=None, reward_params=None):
        # A traced beta skips RLConfig's range check, as in chapter 6's make_train.
        run_config = config if beta is None else dataclasses.replace(config, beta=beta)
        run_reward = reward if reward_params is None else reward._replace(params=reward_params)
        step = make_rlvr_step(run_config, model_config, prompts, run_reward, advantage,
                              online_filter)
        state = init_rl_state(run_config, model_config, lm_params, run_reward, ref_params)
        return jax.lax.scan(step, state, jax.random.split(key, config.steps))

    return train



def train_rlvr(config: RLConfig, model_config: gpt.GPTConfig, lm_params, prompts: PromptSet,
               reward: Reward, *, advantage: str = "grpo", online_filter: bool = True,
               ref_params=None, seed: int = 0, progress: bool = True):
    """Run ``config.steps`` RLVR steps from ``lm_params``, ``log_every`` steps per compiled
    chunk, through the one training driver (:func:`rlhf_book.lm.train.run_in_chunks`) with a
    progress bar, as chapter 6's ``train_rl``. Returns ``(lm_params, history)``: the trained
    policy and the per-step metrics."""
    step = make_rlvr_step(config, model_config, prompts, reward, advantage, online_filter)
    state = init_rl_state(config, model_config, lm_params, reward, ref_params)
    state, history = train.run_in_chunks(
        step, state, steps=config.steps, chunk_size=config.log_every,
        key=jax.random.PRNGKey(seed), desc=f"RLVR ({advantage})", progress=progress,
        postfix=lambda h: {"pass@1": f"{h['score'][-1]:.3f}", "kl": f"{h['kl'][-1]:.3f}"})
    return state.params["lm"], history
