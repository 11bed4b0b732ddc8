"""Chapter 9 figures: the book's Figure 28 redrawn with this chapter's settings, the worked
example's two selections on the reward matrix (eqs. 117-123), the best-of-N curves of §9.3
(expected reward and KL against N, the formula against the exact KL of discrete distributions,
with and without ties), and best-of-N and rejection-sampling fine-tuning on the synthetic world
(gold reward against N and against KL; rewards before and after selection; answers before and
after one round of rejection sampling).

``notebooks/ch09_rejection_sampling.ipynb`` draws through these and passes its own results;
with no arguments (``rlhf-book figures ch09``) the world figures recompute them with
:func:`world_runs`: chapter 4's SFT model of the small GPT (from the substrate cache, or
trained), best-of-N sampling, one round of rejection sampling, and the evaluations, once per
process.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyBboxPatch, Rectangle

from rlhf_book import ch04_instruction_tuning as ch04
from rlhf_book import ch06_policy_gradients as ch06
from rlhf_book import ch09_rejection_sampling as ch09
from rlhf_book import data
from rlhf_book.lm import rollout, sampling
from rlhf_book.lm.ops import masked_sum
from rlhf_book.textbook.figures import FigureResult, figure, finish_axes
from rlhf_book.textbook.figures import ch06_policy_gradients as ch06_figures

# Book eq. (117): M = 5 prompts x N = 4 completions, and the K = 5 of eqs. (121)-(123).
BOOK_R = np.array([[0.7, 0.3, 0.5, 0.2],
                   [0.4, 0.8, 0.6, 0.5],
                   [0.9, 0.3, 0.4, 0.7],
                   [0.2, 0.5, 0.8, 0.6],
                   [0.5, 0.4, 0.3, 0.6]])
BOOK_K = 5

# §9.3 curves: N from 1 to 256; rewards ~ N(0, 1) as 6,001 atoms on [-9, 9] (exact E[max] to
# about 1e-4 for these N); Monte Carlo with 20,000 draws at a few N; the exact KL for uniform
# distributions over K distinct rewards, for 1,000 outcomes sharing three reward levels (ties),
# and for a fair coin (the reference notes' 0.6930 at N = 16).
CURVE_NS = np.unique(np.round(np.logspace(0, np.log10(256), 49)).astype(int))
TABLE_NS = (2, 4, 16)
MC_NS = (2, 4, 10, 16, 32, 100)
MC_DRAWS = 20_000
UNIFORM_KS = (10, 100, 1000)
COARSE_OUTCOMES, COARSE_LEVELS = 1000, 3

# The synthetic world (notebook sections 5-6): 128 training questions chosen with seed 0, 16
# completions of at most 32 new tokens (bytes) each at temperature 1 (the book's §9.2: 10 to
# 30+ completions, temperature 0.7-1.0), the gold reward as the scorer. One round of rejection
# sampling keeps the best completion of each prompt (eq. 113), or the best 128 pairs overall
# (eq. 116), if it stopped, and fine-tunes for 100 steps at chapter 4's SFT learning rate.
WORLD_PROMPTS = 128
BON_N = 16
MAX_NEW_TOKENS = 32
RS_CONFIG = ch09.RSConfig(n=BON_N, selection="per_prompt", max_new_tokens=MAX_NEW_TOKENS)
RS_TOP_K_CONFIG = dataclasses.replace(RS_CONFIG, selection="top_k", k=WORLD_PROMPTS)
RS_SFT_CONFIG = ch04.SFTConfig(steps=100, batch_size=16, seq_len=128, learning_rate=3e-4,
                               warmup_steps=5, log_every=100)
RS_SEED, EVAL_SEED, HELDOUT_SEED = 0, 1, 2
ANSWER_KINDS = ("right", "wrong", "none")


# ----------------------------------------------------------------------------------------------
# Helpers (also used by the notebook)


def normal_atoms(lo: float = -9.0, hi: float = 9.0, points: int = 6001):
    """``(probs [K], rewards [K])``: the standard normal as ``points`` equally spaced atoms."""
    x = np.linspace(lo, hi, points)
    p = np.exp(-0.5 * x ** 2)
    return p / p.sum(), x


_reward_curve = jax.jit(jax.vmap(ch09.expected_best_of_n_reward, in_axes=(None, None, 0)))
_kl_curve = jax.jit(jax.vmap(ch09.best_of_n_exact_kl, in_axes=(None, None, 0)))


def expected_reward_curve(probs, rewards, ns) -> np.ndarray:
    """``E[max of n]`` for every ``n`` in ``ns``, exactly (:func:`expected_best_of_n_reward`,
    one compiled ``vmap`` over ``n``)."""
    return np.asarray(_reward_curve(jnp.asarray(probs, jnp.float32),
                                    jnp.asarray(rewards, jnp.float32), jnp.asarray(ns)))


def exact_kl_curve(probs, rewards, ns) -> np.ndarray:
    """``KL(pi_BoN || pi)`` for every ``n`` in ``ns``, exactly (:func:`best_of_n_exact_kl`)."""
    return np.asarray(_kl_curve(jnp.asarray(probs, jnp.float32),
                                jnp.asarray(rewards, jnp.float32), jnp.asarray(ns)))


def monte_carlo_max(ns=MC_NS, draws: int = MC_DRAWS, seed: int = 0) -> dict[int, tuple]:
    """``{n: (mean, standard error)}`` of the maximum of ``n`` i.i.d. N(0, 1) draws."""
    rng = np.random.default_rng(seed)
    out = {}
    for n in ns:
        best = rng.standard_normal((draws, n)).max(axis=1)
        out[int(n)] = (float(best.mean()), float(best.std(ddof=1) / math.sqrt(draws)))
    return out


def coarse_distribution(outcomes: int = COARSE_OUTCOMES, levels: int = COARSE_LEVELS,
                        seed: int = 0):
    """``(probs, rewards)``: ``outcomes`` equally likely outcomes whose rewards take only
    ``levels`` values (ties), e.g. a reward that only says wrong / no answer / right."""
    rewards = np.random.default_rng(seed).integers(0, levels, outcomes).astype(np.float64)
    return np.full(outcomes, 1.0 / outcomes), rewards


def kl_curves(ns=CURVE_NS) -> dict[str, np.ndarray]:
    """The formula ``log N - (N - 1)/N`` and the exact KL of best-of-N for: uniform over ``K``
    distinct rewards (``K`` in ``UNIFORM_KS``), :func:`coarse_distribution`, and a fair coin."""
    ns = np.asarray(ns)
    out = {"n": ns, "formula": np.asarray(ch09.best_of_n_kl(ns))}
    for K in UNIFORM_KS:
        out[f"uniform K={K}"] = exact_kl_curve(np.full(K, 1.0 / K), np.arange(K), ns)
    probs, rewards = coarse_distribution()
    out[f"{COARSE_OUTCOMES} outcomes, {COARSE_LEVELS} reward levels"] = exact_kl_curve(
        probs, rewards, ns)
    out["fair coin"] = exact_kl_curve(np.array([0.5, 0.5]), np.array([0.0, 1.0]), ns)
    return out


def pool_best_of_n(rewards, n: int) -> np.ndarray:
    """The unbiased estimate of ``E[max of n draws]`` from a pool of ``m >= n`` scored samples
    of each prompt (Gao et al. 2022): with the pool's rewards sorted ascending, ``r_(i)`` has
    weight ``C(i - 1, n - 1) / C(m, n)``, the chance that it is the largest of a random subset
    of ``n``. ``rewards [B, m]`` -> ``[B]``; the mean of the pool at ``n = 1``, its maximum at
    ``n = m``."""
    rewards = np.sort(np.asarray(rewards, np.float64), axis=1)
    m = rewards.shape[1]
    if not 1 <= n <= m:
        raise ValueError(f"n must be in [1, {m}] for a pool of {m}, got {n}")
    weights = np.array([math.comb(i - 1, n - 1) for i in range(1, m + 1)], np.float64)
    return rewards @ (weights / math.comb(m, n))


def answer_shares(questions, tokens, mask) -> dict[str, float]:
    """What completions answer: ``tokens, mask [B, n, T]`` (a :class:`BestOfN`'s ``all_tokens``
    and ``all_mask``) for ``questions [B]``, classified by :func:`data.stated_answer` as
    ``right``, ``wrong`` or ``none`` (no answer stated); fractions of all ``B * n``."""
    tokens, mask = np.asarray(tokens), np.asarray(mask)
    B, n, T = tokens.shape
    texts = sampling.decode_masked(tokens.reshape(B * n, T), mask.reshape(B * n, T))
    counts = dict.fromkeys(ANSWER_KINDS, 0)
    for question, text in zip(np.repeat(np.asarray(questions, object), n), texts):
        stated = data.stated_answer(question, text)
        counts["none" if stated is None else
               "right" if stated.lower() == question.answer.lower() else "wrong"] += 1
    return {k: v / len(texts) for k, v in counts.items()}


_log_probs = jax.jit(rollout.token_log_probs, static_argnums=(2,))


def sequence_kl(params, ref_params, model_config, tokens, mask) -> np.ndarray:
    """``sum_t log pi(y_t) - log pi_ref(y_t)`` over each completion's tokens, for sequences
    sampled from ``pi = params``: ``tokens, mask [B, n, T] -> [B, n]``; its mean is an
    unbiased (k1) estimate of ``KL(pi || pi_ref)`` per completion."""
    tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
    shape = tokens.shape
    flat, m = tokens.reshape(-1, shape[-1]), mask.reshape(-1, shape[-1])
    diff = _log_probs(params, flat, model_config) - _log_probs(ref_params, flat, model_config)
    return np.asarray(masked_sum(diff, m, axis=1)).reshape(shape[:-1])


def paired_gain(after, before) -> tuple[float, float]:
    """Mean over prompts of ``mean(after) - mean(before)`` (``[B, n]`` each) and its standard
    error across prompts."""
    d = np.asarray(after, np.float64).mean(axis=1) - np.asarray(before, np.float64).mean(axis=1)
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(d.size))


def sft_policy():
    """Chapter 4's SFT model of the small GPT, the policy chapter 6's RL also starts from."""
    return ch06_figures.sft_policy()


def world_task(n_prompts: int = WORLD_PROMPTS, seed: int = 0):
    """``(model_config, questions, prompts, gold)``: ``n_prompts`` training questions (chosen
    with ``seed``, in their original order), their chat-template prompts, and the gold reward
    on them (``ch06.text_reward(data.gold_reward, questions)``)."""
    model_config, train, _ = ch06_figures.rl_task()
    ids = np.sort(np.random.default_rng(seed).choice(len(train), n_prompts, replace=False))
    questions = [train[i] for i in ids]
    prompts = ch06.encode_prompts([q.prompt for q in questions])
    return model_config, questions, prompts, ch06.text_reward(data.gold_reward, questions)


def heldout_task():
    """``(questions, prompts, gold)`` for every held-out question (facts never trained on)."""
    questions = data.split_questions()[1]
    prompts = ch06.encode_prompts([q.prompt for q in questions])
    return questions, prompts, ch06.text_reward(data.gold_reward, questions)


@functools.lru_cache(maxsize=1)
def world_runs() -> dict:
    """Everything the world figures show, as notebook sections 5-6 compute it: best-of-16
    samples of :func:`sft_policy` on :func:`world_task`'s prompts; one round of rejection
    sampling from it with each selection rule (same key, so the same samples); samples of the
    tuned policies with the SFT model's key; the per-prompt policy's KL from the SFT model;
    the SFT and the per-prompt policy on the held-out questions."""
    sft = sft_policy()
    model_config, questions, prompts, gold = world_task()
    sample = functools.partial(ch09.best_of_n_sample, model_config=model_config, n=BON_N,
                               max_new_tokens=MAX_NEW_TOKENS)
    key = jax.random.PRNGKey(EVAL_SEED)
    before = sample(sft, prompts=prompts, reward=gold, key=key)
    tuned, record = ch09.rejection_sampling_finetune(sft, model_config, prompts, gold, RS_CONFIG,
                                                     RS_SFT_CONFIG,
                                                     key=jax.random.PRNGKey(RS_SEED))
    after = sample(tuned, prompts=prompts, reward=gold, key=key)
    tuned_top, record_top = ch09.rejection_sampling_finetune(
        sft, model_config, prompts, gold, RS_TOP_K_CONFIG, RS_SFT_CONFIG,
        key=jax.random.PRNGKey(RS_SEED))
    after_top = sample(tuned_top, prompts=prompts, reward=gold, key=key)
    h_questions, h_prompts, h_gold = heldout_task()
    h_key = jax.random.PRNGKey(HELDOUT_SEED)
    h_before = sample(sft, prompts=h_prompts, reward=h_gold, key=h_key)
    h_after = sample(tuned, prompts=h_prompts, reward=h_gold, key=h_key)
    return {
        "record": record, "record_top_k": record_top,
        "before": np.asarray(before.all_rewards), "after": np.asarray(after.all_rewards),
        "after_top_k": np.asarray(after_top.all_rewards),
        "heldout_before": np.asarray(h_before.all_rewards),
        "heldout_after": np.asarray(h_after.all_rewards),
        "kl": sequence_kl(tuned, sft, model_config, after.all_tokens, after.all_mask),
        "answers": {
            "SFT, training": answer_shares(questions, before.all_tokens, before.all_mask),
            "RS, training": answer_shares(questions, after.all_tokens, after.all_mask),
            "RS top-K, training": answer_shares(questions, after_top.all_tokens,
                                                after_top.all_mask),
            "SFT, held-out": answer_shares(h_questions, h_before.all_tokens, h_before.all_mask),
            "RS, held-out": answer_shares(h_questions, h_after.all_tokens, h_after.all_mask)},
    }


WORLD_NS = (1, 2, 4, 8, 16)


def best_of_n_curve(rewards, ns=WORLD_NS) -> tuple[np.ndarray, np.ndarray]:
    """The gold reward of best-of-``n`` for every ``n`` in ``ns`` from ``rewards [B, m]`` (``m``
    samples of each of ``B`` prompts, :func:`pool_best_of_n`): the mean over prompts and its
    standard error."""
    est = np.stack([pool_best_of_n(rewards, int(n)) for n in ns], axis=1)  # [B, len(ns)]
    return est.mean(0), est.std(0, ddof=1) / math.sqrt(est.shape[0])


def plug_in_exact_kl(rewards, ns=WORLD_NS) -> np.ndarray:
    """``[B, len(ns)]``: :func:`best_of_n_exact_kl` with each prompt's ``m`` samples taken as
    its distribution (each of probability ``1/m``; equal rewards tie). A plug-in estimate of
    the KL of best-of-``n`` from the policy that drew them; 0 for a prompt whose samples all
    earned the same reward."""
    rewards = jnp.asarray(rewards, jnp.float32)
    uniform = jnp.full(rewards.shape[1], 1.0 / rewards.shape[1], jnp.float32)
    per_n = jax.vmap(ch09.best_of_n_exact_kl, in_axes=(None, None, 0))
    kl = np.asarray(jax.jit(jax.vmap(lambda r: per_n(uniform, r, jnp.asarray(ns))))(rewards))
    return np.maximum(kl, 0.0)  # round-off: -0.0 or -1e-9 for a prompt whose samples all tie


# ----------------------------------------------------------------------------------------------
# Figures


@figure("ch09_rs_overview", "ch09",
        "Figure 28 redrawn with this chapter's settings: the prompts are given to the current "
        "model, which samples N completions of each; a reward (here the synthetic world's gold "
        "reward, in the book a reward model) scores every completion; a selection rule keeps "
        "the best one per prompt (eq. 113) or the best K pairs overall (eq. 116); the starting "
        "model is fine-tuned on what was kept with the instruction-tuning loss. Best-of-N "
        "(§9.3) stops after the selection and keeps the model unchanged.")
def rs_overview() -> FigureResult:
    fig = Figure(figsize=(11, 2.6))
    ax = fig.add_subplot()
    boxes = (("prompts\nx_1 ... x_M", f"M = {WORLD_PROMPTS} training\nquestions", "0.85"),
             ("current model\nsamples N each", f"N = {BON_N}, T = 1,\n<= {MAX_NEW_TOKENS} "
                                                "new tokens", "#cfe2f3"),
             ("reward scores\nR [M, N]", "gold reward\n(book: a reward model)", "#fce5cd"),
             ("select\nper prompt / top K", "argmax_j r_ij (eq. 113)\nor top K of R_flat",
              "#d9ead3"),
             ("instruction-tune\non the kept pairs", f"{RS_SFT_CONFIG.steps} steps at "
                                                     f"{RS_SFT_CONFIG.learning_rate:g}",
              "#ead1dc"))
    width, gap = 1.7, 0.45
    for i, (title, detail, colour) in enumerate(boxes):
        x = i * (width + gap)
        ax.add_patch(FancyBboxPatch((x, 0.2), width, 1.2, boxstyle="round,pad=0.05",
                                    facecolor=colour, edgecolor="0.3"))
        ax.text(x + width / 2, 1.05, title, ha="center", va="center", fontsize=9,
                fontweight="bold")
        ax.text(x + width / 2, 0.5, detail, ha="center", va="center", fontsize=7.5)
        if i:
            ax.annotate("", (x - 0.04, 0.8), (x - gap + 0.04, 0.8),
                        arrowprops=dict(arrowstyle="->", lw=1.5))
    end = len(boxes) * (width + gap) - gap
    select_x = 3 * (width + gap) + width / 2
    ax.annotate("", (width + gap + width / 2, 1.48), (end - width / 2, 1.48),
                arrowprops=dict(arrowstyle="->", lw=1.2, ls="--", connectionstyle="arc3,rad=0.25"))
    ax.text((width + gap + end) / 2 + 0.3, 1.95, "another round from the new model (Llama 2)",
            ha="center", fontsize=7.5, style="italic")
    ax.annotate("best-of-N: return the kept\ncompletion, no training", (select_x, 0.15),
                (select_x, -0.55), ha="center", fontsize=7.5,
                arrowprops=dict(arrowstyle="<-", lw=1.0, color="tab:green"), color="tab:green")
    ax.set(xlim=(-0.2, end + 0.2), ylim=(-0.8, 2.2))
    ax.axis("off")
    fig.tight_layout()
    return FigureResult(fig, {"prompts": WORLD_PROMPTS, "completions_per_prompt": BON_N,
                              "max_new_tokens": MAX_NEW_TOKENS,
                              "sft_steps": RS_SFT_CONFIG.steps,
                              "learning_rate": RS_SFT_CONFIG.learning_rate})


@figure("ch09_selection", "ch09",
        "The book's worked example (eqs. 117-123): the reward matrix R of 5 prompts x 4 "
        "completions. Left: the best completion of each prompt (eq. 113, circled: S(R) = "
        "[1, 2, 1, 3, 4] 1-based) and the best K = 5 pairs overall (eq. 116, squares, ranked "
        "best first): prompt 3 keeps two completions, prompt 5 none. Right: R flattened "
        "row-major (eq. 122) with the top 5 coloured; eq. 116's ascending argsort lists them as "
        "[0, 11, 5, 14, 8], eq. 123 prints the descending order [8, 5, 14, 0, 11] (erratum).")
def selection(rewards=BOOK_R, k: int = BOOK_K) -> FigureResult:
    rewards = np.asarray(rewards, np.float64)
    B, N = rewards.shape
    per_prompt = np.asarray(ch09.select_top_per_prompt(rewards))
    top_p, top_c = (np.asarray(a) for a in ch09.select_top_overall(rewards, k))
    flat = rewards.reshape(-1)
    literal = np.argsort(flat)[-k:]
    fig = Figure(figsize=(11, 3.8))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.9]})
    left.imshow(rewards, cmap="Blues", vmin=0, vmax=1.3)
    for (i, j), v in np.ndenumerate(rewards):
        left.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=9)
    for i, j in enumerate(per_prompt):
        left.add_patch(Circle((j, i), 0.36, fill=False, edgecolor="k", lw=2.0))
    for i, j in zip(top_p, top_c):
        left.add_patch(Rectangle((j - 0.42, i - 0.42), 0.84, 0.84, fill=False,
                                 edgecolor="tab:orange", lw=2.2))
    left.set_xticks(range(N), [f"c{j + 1}" for j in range(N)])
    left.set_yticks(range(B), [f"p{i + 1}" for i in range(B)])
    left.set_title("per prompt (circles) and top 5 overall (squares)", fontsize=9)
    colours = np.where(np.isin(np.arange(B * N), top_p * N + top_c), "tab:orange", "0.75")
    right.bar(np.arange(B * N), flat, color=colours)
    for rank, f in enumerate(top_p * N + top_c, 1):
        right.text(f, flat[f] + 0.02, f"#{rank}", ha="center", fontsize=7, color="tab:red")
    for i in range(1, B):
        right.axvline(i * N - 0.5, color="0.4", lw=0.6, ls=":")
    right.set_xticks(np.arange(B * N), [str(f) for f in range(B * N)], fontsize=7)
    finish_axes(right, xlabel="flat index k (prompt k // 4, completion k % 4; 0-based)",
                ylabel="reward", ylim=(0, 1.1),
                title=f"R_flat: argsort(R_flat)[-5:] = {literal.tolist()} (eq. 116, ascending); "
                      f"eq. 123: {(top_p * N + top_c).tolist()}")
    right.title.set_fontsize(8.5)
    fig.tight_layout()
    return FigureResult(fig, {
        "per_prompt_0_based": per_prompt.tolist(), "per_prompt_book": (per_prompt + 1).tolist(),
        "per_prompt_rewards": rewards[np.arange(B), per_prompt].tolist(),
        "top_k_flat": (top_p * N + top_c).tolist(),
        "top_k_pairs_book": [[int(i) + 1, int(j) + 1] for i, j in zip(top_p, top_c)],
        "top_k_rewards": rewards[top_p, top_c].tolist(),
        "argsort_as_written": literal.tolist(),
        "prompts_without_a_top_k_pair": [i + 1 for i in range(B) if i not in set(top_p)]})


@figure("ch09_bon_curves", "ch09",
        "Best-of-N as a distribution (§9.3). Left: the expected best of N rewards when a single "
        "reward is N(0, 1), exactly (expected_best_of_n_reward on a fine grid), by Monte Carlo "
        "(20,000 draws, +-2 standard errors) and the growth rate sqrt(2 log N). Right: KL(pi_BoN "
        "|| pi) against N: the formula log N - (N - 1)/N and the exact KL of discrete "
        "distributions, below it: uniform over K distinct rewards (closer as K grows), 1,000 "
        "outcomes sharing 3 reward levels (ties: the KL stops at -log P(top level)), a fair "
        "coin (at most log 2).")
def bon_curves(ns=CURVE_NS) -> FigureResult:
    ns = np.asarray(ns)
    probs, x = normal_atoms()
    exact = expected_reward_curve(probs, x, ns)
    mc = monte_carlo_max()
    kl = kl_curves(ns)
    fig = Figure(figsize=(11, 3.9))
    left, right = fig.subplots(1, 2)
    left.plot(ns, exact, color="tab:blue", lw=2, label="exact E[max of N], r ~ N(0, 1)")
    left.errorbar(list(mc), [m for m, _ in mc.values()], yerr=[2 * s for _, s in mc.values()],
                  fmt="o", color="tab:red", ms=4, label="Monte Carlo (20,000 draws)")
    left.plot(ns[ns > 1], np.sqrt(2 * np.log(ns[ns > 1])), color="0.5", ls="--",
              label="sqrt(2 log N)")
    left.set_xscale("log", base=2)
    finish_axes(left, xlabel="N", ylabel="expected reward of best-of-N", title="reward vs N")
    left.legend(fontsize=7.5)
    colours = iter(("tab:orange", "tab:green", "tab:blue", "tab:purple", "tab:brown"))
    for name, curve in kl.items():
        if name == "formula":
            right.plot(ns, curve, color="k", lw=2.2, label="log N - (N - 1)/N (the formula)")
        elif name != "n":
            right.plot(ns, curve, color=next(colours), ls="-" if "K=" in name else "--",
                       lw=1.4, label=name)
    right.set_xscale("log", base=2)
    finish_axes(right, xlabel="N", ylabel="KL(pi_BoN || pi) (nats)", title="KL vs N")
    right.legend(fontsize=7.5)
    fig.tight_layout()
    at = {int(n): i for i, n in enumerate(ns)}
    numbers = {
        "expected_max_exact": {str(n): float(exact[at[n]]) for n in (2, 3, 4, 10, 16, 100)
                               if n in at},
        "expected_max_mc": {str(n): {"mean": m, "se": s} for n, (m, s) in mc.items()},
        "kl": {name: {str(n): float(curve[at[n]]) for n in (2, 4, 16, 256) if n in at}
               for name, curve in kl.items() if name != "n"}}
    return FigureResult(fig, numbers)


@figure("ch09_bon_world", "ch09",
        "Best-of-N on the synthetic world: chapter 4's SFT model of the small GPT answering 128 "
        "training questions, scored by the gold reward (mean +- standard error over prompts). "
        "Left: the gold reward of the best of N samples, estimated without bias from 16 samples "
        "per prompt, for the SFT model and for the model after one round of rejection "
        "sampling (RS). Right: the same gold reward against the KL from the SFT "
        "model: the formula log N - (N - 1)/N (an upper bound), the exact KL of best-of-N on "
        "each prompt's empirical reward distribution (ties: far smaller), and the RS-tuned "
        "model (k1 estimate per completion) with its single-sample gold reward.")
def bon_world(runs: dict | None = None) -> FigureResult:
    runs = world_runs() if runs is None else runs
    ns = np.asarray(WORLD_NS)
    sft, sft_se = best_of_n_curve(runs["before"], ns)
    rs, rs_se = best_of_n_curve(runs["after"], ns)
    plug_in = plug_in_exact_kl(runs["before"], ns)
    formula = np.asarray(ch09.best_of_n_kl(ns))
    kl = np.asarray(runs["kl"], np.float64)
    kl_mean, kl_se = float(kl.mean()), float(kl.std(ddof=1) / math.sqrt(kl.size))
    after = np.asarray(runs["after"], np.float64).mean(1)
    rs_gold, rs_gold_se = float(after.mean()), float(after.std(ddof=1) / math.sqrt(after.size))
    fig = Figure(figsize=(11, 3.9))
    left, right = fig.subplots(1, 2)
    for mean, se, colour, label in ((sft, sft_se, "tab:blue", "SFT model"),
                                    (rs, rs_se, "tab:red", "after one round of RS")):
        left.errorbar(ns, mean, yerr=se, fmt="o-", color=colour, ms=4, capsize=2, label=label)
    left.set_xscale("log", base=2)
    left.set_xticks(ns, [str(n) for n in ns])
    finish_axes(left, xlabel="N", ylabel="gold reward of best-of-N", title="best-of-N: gold vs N")
    left.legend(fontsize=7.5)
    right.errorbar(formula, sft, yerr=sft_se, fmt="o--", color="tab:blue", ms=4, capsize=2,
                   label="BoN, KL = log N - (N - 1)/N (bound)")
    right.errorbar(plug_in.mean(0), sft, yerr=sft_se, fmt="s-", color="tab:cyan", ms=4,
                   capsize=2, label="BoN, exact KL (ties; plug-in)")
    for n, x, y in zip(ns, formula, sft):
        right.annotate(f"N={n}", (x, y), xytext=(3, -10), textcoords="offset points", fontsize=7)
    right.errorbar([kl_mean], [rs_gold], xerr=[kl_se], yerr=[rs_gold_se], fmt="*",
                   color="tab:red", ms=11, capsize=2, label="one round of RS (sampled)")
    finish_axes(right, xlabel="KL from the SFT model (nats per completion)", ylabel="gold reward",
                title="gold vs KL")
    right.legend(fontsize=7.5, loc="center right")
    fig.tight_layout()
    return FigureResult(fig, {
        "n": ns.tolist(), "sft_bon_gold": sft.tolist(), "sft_bon_se": sft_se.tolist(),
        "rs_bon_gold": rs.tolist(), "rs_bon_se": rs_se.tolist(), "kl_formula": formula.tolist(),
        "kl_plug_in": plug_in.mean(0).tolist(),
        "prompts_with_zero_plug_in_kl": float((plug_in[:, -1] < 1e-6).mean()),
        "rs_kl": kl_mean, "rs_kl_se": kl_se, "rs_gold": rs_gold, "rs_gold_se": rs_gold_se})


@figure("ch09_rs_finetune", "ch09",
        "One round of rejection sampling on the synthetic world (128 training questions x 16 "
        "samples of chapter 4's SFT model, gold reward). Left: the gold rewards of all samples "
        "and of the completions each rule keeps (only those that ended with <|end|>): the best "
        "of each prompt (eq. 113) or the best 128 pairs overall (eq. 116), which are nearly all "
        "right answers but cover fewer prompts. Right: what the SFT model and the tuned models "
        "answer to the training questions (fresh samples, same key) and to held-out questions, "
        "with the mean gold reward; the title gives the paired gains +- standard error over "
        "prompts.")
def rs_finetune(runs: dict | None = None) -> FigureResult:
    runs = world_runs() if runs is None else runs
    record, top = runs["record"], runs["record_top_k"]
    sampled = np.asarray(record["all_rewards"], np.float64).reshape(-1)
    kept = np.asarray(record["selected_rewards"], np.float64)
    kept_top = np.asarray(top["selected_rewards"], np.float64)
    fig = Figure(figsize=(12, 4.1))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.35]})
    lo = math.floor(min(sampled.min(), kept.min()) * 4) / 4
    bins = np.arange(lo - 0.125, 1.25, 0.25)  # one bin per multiple of 0.25
    for values, colour, label in (
            (sampled, "tab:blue", f"all {sampled.size} samples"),
            (kept, "tab:orange", f"kept per prompt: {kept.size} from "
                                 f"{len(set(record['prompt_idx'].tolist()))} prompts"),
            (kept_top, "tab:green", f"kept top-K: {kept_top.size} from "
                                    f"{len(set(top['prompt_idx'].tolist()))} prompts")):
        left.hist(values, bins=bins, weights=np.full(values.size, 1 / values.size),
                  histtype="step", lw=2, color=colour, label=f"{label} (mean {values.mean():+.3f})")
    finish_axes(left, xlabel="gold reward", ylabel="fraction", title="before and after selection")
    left.legend(fontsize=7, loc="upper center")
    answers = runs["answers"]
    names = list(answers)
    bottom = np.zeros(len(names))
    for kind, colour in zip(ANSWER_KINDS, ("tab:green", "tab:red", "0.7")):
        share = np.array([answers[n][kind] for n in names])
        right.bar(range(len(names)), share, bottom=bottom, color=colour, label=kind, width=0.6)
        for i, (b, s) in enumerate(zip(bottom, share)):
            if s > 0.04:
                right.text(i, b + s / 2, f"{s:.0%}", ha="center", va="center", fontsize=7)
        bottom += share
    means = {"SFT, training": runs["before"], "RS, training": runs["after"],
             "RS top-K, training": runs["after_top_k"], "SFT, held-out": runs["heldout_before"],
             "RS, held-out": runs["heldout_after"]}
    gains = {"per prompt": paired_gain(runs["after"], runs["before"]),
             "top-K": paired_gain(runs["after_top_k"], runs["before"]),
             "per prompt, held-out": paired_gain(runs["heldout_after"], runs["heldout_before"])}
    for i, name in enumerate(names):
        right.text(i, 1.02, f"gold {np.mean(means[name]):+.3f}", ha="center", fontsize=7.5)
    right.set_xticks(range(len(names)), [n.replace(", ", "\n") for n in names], fontsize=8)
    title = "gains: " + "; ".join(f"{k} {g:+.3f} +- {s:.3f}" for k, (g, s) in gains.items())
    finish_axes(right, ylabel="fraction of answers", ylim=(0, 1.1), title=title)
    right.title.set_fontsize(8)
    right.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return FigureResult(fig, {
        "sampled_mean": float(sampled.mean()), "kept_mean": float(kept.mean()),
        "kept": int(kept.size), "kept_top_k_mean": float(kept_top.mean()),
        "kept_top_k": int(kept_top.size),
        "top_k_prompts": len(set(top["prompt_idx"].tolist())),
        "prompts": int(record["all_rewards"].shape[0]), "answers": answers,
        "gold": {k: float(np.mean(v)) for k, v in means.items()},
        "gains": {k: {"mean": g, "se": s} for k, (g, s) in gains.items()}})
