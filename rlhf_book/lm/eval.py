"""Measuring a policy on the synthetic world: what its answers are worth by the gold reward,
how often they are right, how long they are, whether they stop, and how far the policy has
moved from a reference -- each with its standard error.

Every chapter that trains a policy (SFT, RL, DPO, best-of-N, the regularisation experiments)
reports these numbers the same way, so that they can be put side by side.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_book import data
from rlhf_book.lm import gpt, sampling
from rlhf_book.lm.ops import masked_sum
from rlhf_book.lm.rollout import Reward, encode_prompts, token_log_probs

ANSWER_KINDS = ("right", "wrong", "none")


def mean_se(x, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The mean of ``x`` along ``axis`` (by default over seeds or samples) and its standard
    error ``std(ddof=1) / sqrt(n)`` (NaN when ``n < 2``)."""
    x = np.asarray(x, np.float64)
    n = x.shape[axis]
    se = x.std(axis=axis, ddof=1) / np.sqrt(n) if n > 1 else np.full_like(x.mean(axis=axis),
                                                                             np.nan)
    return x.mean(axis=axis), se


def first_last(x, window: int = 3) -> dict[str, float]:
    """How a training curve moved: ``x [seeds, steps]``; the mean over seeds of its first and
    of its last ``window`` steps, the change, and the standard error of the change across
    seeds (each seed's change is one independent sample)."""
    x = np.asarray(x, np.float64)
    first, last = x[:, :window].mean(axis=1), x[:, -window:].mean(axis=1)
    change = last - first
    return {"first": float(first.mean()), "last": float(last.mean()),
            "change": float(change.mean()),
            "change_se": float(change.std(ddof=1) / np.sqrt(len(change)))}


def answer_kind(question: data.Question, text: str) -> str:
    """``"right"``, ``"wrong"`` or ``"none"`` (no answer to the question stated): what
    :func:`rlhf_book.data.stated_answer` finds in ``text``."""
    stated = data.stated_answer(question, text)
    if stated is None:
        return "none"
    return "right" if stated.lower() == question.answer.lower() else "wrong"


def score_answers(questions: Sequence[data.Question], texts: Sequence[str],
                  score: Callable = data.gold_reward) -> dict[str, np.ndarray]:
    """Per answer: its ``score`` (the gold reward by default), whether it is ``right``, its
    ``kind`` (:func:`answer_kind`) and its length in ``bytes``."""
    kinds = [answer_kind(q, t) for q, t in zip(questions, texts)]
    return {"score": np.asarray([score(q, t) for q, t in zip(questions, texts)], np.float64),
            "right": np.asarray([k == "right" for k in kinds], np.float64),
            "kind": np.asarray(kinds),
            "bytes": np.asarray([len(t.encode()) for t in texts], np.float64)}


_token_log_probs = jax.jit(token_log_probs, static_argnums=(2,))


def sampled_kl(params, ref_params, tokens, mask, model_config: gpt.GPTConfig,
               logp=None) -> np.ndarray:
    """``sum_t log pi(y_t | .) - log pi_ref(y_t | .)`` over each completion's tokens ``[N]``:
    the k1 estimate of ``KL(pi || pi_ref)`` of whole completions, unbiased when the tokens were
    sampled from ``pi`` at temperature 1 (book §15.1, eq. 129). ``logp`` (``[N, T]``, aligned
    with ``mask``): the policy's log-probabilities of the tokens when they are already known
    (the sampler's own at temperature 1), which saves one forward pass of the policy."""
    if logp is None:
        logp = _token_log_probs(params, tokens, model_config)
    ref = _token_log_probs(ref_params, tokens, model_config)
    return np.asarray(masked_sum(logp - ref, mask, axis=1))


_reward_fns: dict = {}


def _jitted(fn: Callable) -> Callable:
    """One compiled copy per reward function (a reward model's is reused across calls)."""
    if fn not in _reward_fns:
        _reward_fns[fn] = jax.jit(fn)
    return _reward_fns[fn]


def answer_samples(params, questions: Sequence[data.Question], model_config: gpt.GPTConfig,
                   key, *, samples: int = 1, temperature: float = 1.0, max_new_tokens: int = 48,
                   ref_params=None, reward: Reward | None = None,
                   score: Callable = data.gold_reward) -> dict:
    """Answer each question ``samples`` times (KV-cache sampling at ``temperature``; 0 is
    greedy) and measure every answer. Returns arrays of shape ``[len(questions), samples]``:
    ``gold`` (``score``, the gold reward by default), ``right``, ``wrong`` and ``none``
    (:func:`answer_kind` as 0/1), ``bytes``, ``length`` (tokens), ``stopped`` (ended with
    ``<|end|>``); with ``ref_params``, ``kl``: the sequence log-ratio to the reference
    (:func:`sampled_kl`, an unbiased estimate of ``KL(pi || pi_ref)`` only at temperature 1);
    with ``reward`` (a :class:`~rlhf_book.lm.rollout.Reward`, e.g. a reward model), ``reward``:
    its score of exactly the generated tokens, as RL reads them; and the ``texts``."""
    questions = list(questions)
    if not questions:
        raise ValueError("questions must be a non-empty sequence of Question")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive int, got {samples!r}")
    prompts = encode_prompts([q.prompt for q in questions])
    ids = np.repeat(np.arange(len(questions)), samples)
    gen = sampling.generate(params, prompts.tokens[ids], key, model_config,
                            prompt_lengths=prompts.lengths[ids], max_new_tokens=max_new_tokens,
                            temperature=temperature)
    texts = sampling.decode_masked(gen.tokens, gen.mask)
    scored = score_answers([questions[i] for i in ids], texts, score)
    out = {"gold": scored["score"], "right": scored["right"],
           **{kind: scored["kind"] == kind for kind in ANSWER_KINDS[1:]},
           "bytes": scored["bytes"], "length": np.asarray(gen.mask).sum(1),
           "stopped": np.asarray(gen.stopped)}
    if ref_params is not None:
        # The sampler's log-probabilities are the policy's own at temperature 1 (and, greedy,
        # at 0): then only the reference needs a forward pass.
        own = gen.logprobs if float(temperature) in (0.0, 1.0) else None
        out["kl"] = (np.zeros(len(ids)) if ref_params is params else  # the model against itself
                     sampled_kl(params, ref_params, gen.tokens, gen.mask, model_config, logp=own))
    if reward is not None:
        out["reward"] = np.asarray(_jitted(reward.fn)(reward.params, gen.tokens, gen.mask,
                                                      jnp.asarray(ids)))
    shape = (len(questions), samples)
    out = {k: np.asarray(v, np.float64).reshape(shape) for k, v in out.items()}
    return {**out, "texts": np.asarray(texts, dtype=object).reshape(shape)}


def evaluate_policy(params, questions: Sequence[data.Question], model_config: gpt.GPTConfig,
                    key, *, ref_params=None, samples: int = 1, temperature: float = 1.0,
                    max_new_tokens: int = 48, score: Callable = data.gold_reward) -> dict:
    """Answer each question ``samples`` times (:func:`answer_samples`) and average. Returns
    means with standard errors over the answers: ``gold`` (``score``, the gold reward by
    default) and ``gold_se``, ``accuracy`` and ``accuracy_se`` (the gold answer stated),
    ``answer_bytes``, ``length`` (tokens), ``stopped`` (ended with ``<|end|>``) and
    ``stopped_se``; with ``ref_params``, the sequence KL to the reference as ``kl`` and
    ``kl_se``; ``n`` answers, and the ``texts`` themselves."""
    a = answer_samples(params, questions, model_config, key, samples=samples,
                       temperature=temperature, max_new_tokens=max_new_tokens,
                       ref_params=ref_params, score=score)
    out = {"n": a["gold"].size, "texts": a["texts"].ravel().tolist(),
           "answer_bytes": float(a["bytes"].mean()), "length": float(a["length"].mean())}
    for name, key_ in (("gold", "gold"), ("accuracy", "right"), ("stopped", "stopped"),
                       ("kl", "kl")):
        if key_ in a:
            mean, se = mean_se(a[key_].ravel())
            out[name], out[f"{name}_se"] = float(mean), float(se)
    return out
