"""Chapter 6 figures: the gradient weight each loss aggregation gives a token (§6.2.2), the PPO
objective and its gradient with CISPO's weight beside it (Figure 20), group advantages against
the number of correct completions (GRPO, Dr. GRPO, RLOO), GAE's lambda on Figure 21's value
example, truncated importance sampling and GSPO's sequence ratio, and RL on the small model:
learning curves of five algorithms in gold reward, and the lesson's length-hacking reward under
a sweep of KL coefficients (seed 003, exercises 3 and 5).

``notebooks/ch06_policy_gradients.ipynb`` draws through these and passes its own results; with
no arguments (``rlhf-book figures ch06``) the RL figures recompute them: chapter 0's pretraining
of the small model, chapter 4's SFT run (prompt masked), then the RL runs of
:func:`algorithm_runs` and :func:`kl_sweep_runs`, each done once per process.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from rlhf_book import ch06_policy_gradients as ch06
from rlhf_book import data
from rlhf_book.lm import gpt, rollout, sampling
from rlhf_book.lm.eval import mean_se
from rlhf_book.textbook.figures import FigureResult, figure, finish_axes
from rlhf_book.textbook.figures import ch04_instruction_tuning as ch04_figures
from rlhf_book.textbook.figures.ch00_mini_gpt import PRETRAIN_MODEL

# §6.2.2.1: the book's two sequences of per-token losses (W1), and its gradient demo (W2).
AGG_LOSSES = ([1.0, 1.0, 1.0, 1.0, 10.0], [1.0] * 9 + [10.0])
AGG_MAX_LENGTH = 10
AGG_LABELS = {"per_sequence": "per sequence (eq. 67, GRPO)",
              "per_token": "per token (eq. 68, DAPO)",
              "fixed_length": "fixed length (eq. 69, Dr. GRPO)"}

# Figure 20: the clipped objective for A = +1 and A = -1 at eps = 0.2; CISPO's weight with the
# cap at 1 + eps (the book's eq. 66 upper bound), and the lectures' two ratios (seed 000).
PPO_EPS = 0.2
RATIOS = np.linspace(0.0025, 2.4975, 500)  # half-steps: never exactly on 1 +- eps
TABLE_RATIOS = (0.5, 0.9, 1.0, 1.1, 1.5, 2.0)  # W3 and W11 (never exactly 1 +- eps)
LECTURE_RATIOS = {"pi_new / pi_old = 0.4 / 0.2": 2.0, "0.5 (seed 000's A < 0 case)": 0.5}

# Figure 22's group: G = 8 binary rewards, k of them correct (W4b).
GROUP_SIZE = 8

# Figure 21: rewards 0 ... 0, 0.73 at the end, the critic's predictions (W6).
FIG21_REWARDS = (0.0, 0.0, 0.0, 0.0, 0.0, 0.73)
FIG21_VALUES = (0.45, 0.55, 0.62, 0.68, 0.71, 0.73)
GAE_LAMBDAS = (0.0, 0.5, 0.95, 1.0)

# §6.2.4 and §6.1.7: TIS cap C = 2 (Open Instruct); token log-ratios ~ N(0, 0.1^2) for GSPO.
TIS_CAP = 2.0
TIS_LOG_RATIOS = (-12.0, -0.5, 0.0, 0.5, 1.0, 12.0)
GSPO_SIGMA = 0.1
GSPO_LENGTHS = (1, 3, 10, 30, 100, 300, 1000)
GSPO_SEQUENCES = 1000

# Notebook sections 8-9: RL on chapter 4's SFT model (the small GPT). Every run: 12 steps of 4
# training questions x 4 completions, at most 20 new tokens, learning rate 3e-4 (the SFT rate;
# the library's default 2e-5 suits the larger pipeline model and barely moves this one in 12
# steps), the KL coefficient 0.02 (InstructGPT's), 8 seeds vmapped. The sizes are what the
# notebook's time budget allows (see the notebook's run-time note); the ranking of algorithms
# at this scale is not a benchmark.
RL_CONFIG = ch06.RLConfig(algorithm="grpo", steps=12, prompts_per_step=4, group_size=4,
                          max_new_tokens=20, learning_rate=3e-4, beta=0.02, log_every=12)
RL_ALGORITHMS = ("grpo", "dr_grpo", "rloo", "ppo", "cispo")
N_SEEDS = 8
# What the policies say at the end: 32 training questions, one completion per seed at T = 1.
N_BREAKDOWN_QUESTIONS = 32
ANSWER_KINDS = ("right", "wrong", "none")

# Seed 003's exercises 3 and 5 on its flawed reward `len(response) / 100`: RLOO (the KL folded
# into the reward, as the lesson's `reward - kl_coeff * kl`), 32 new tokens so that length has
# room to grow, and the KL coefficients of both exercises (0 and 0.1; 0.001, 0.02, 0.5).
KL_SWEEP_CONFIG = dataclasses.replace(RL_CONFIG, algorithm="rloo", max_new_tokens=32)
KL_SWEEP_BETAS = (0.0, 0.001, 0.02, 0.1, 0.5)
KL_SWEEP_SEEDS = 4

ALGORITHM_COLOURS = {"grpo": "tab:blue", "dr_grpo": "tab:cyan", "rloo": "tab:green",
                     "ppo": "tab:red", "cispo": "tab:purple", "reinforce": "tab:olive",
                     "dapo": "tab:brown", "gspo": "tab:pink"}


# ----------------------------------------------------------------------------------------------
# Helpers (also used by the notebook)


def length_score(question, response: str) -> float:
    """The lecture notes' flawed reward model (seed 003, exercise 3): ``len(response) / 100``,
    in characters, whatever the question."""
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
    """``{mode: (loss, dL/d l [N, T])}``: each aggregation of eqs. 67-69 of the per-token losses
    ``rows`` and its gradient with respect to every token's loss (``jax.grad``), 0 on padding."""
    losses, mask = padded(rows)
    out = {}
    for mode in ch06.AGGREGATIONS:
        f = lambda l, m=mode: ch06.aggregate_loss(l, mask, m, max_length)  # noqa: E731
        value, grad = jax.jit(jax.value_and_grad(f))(jnp.asarray(losses))
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
    objective = lambda r: ch06.ppo_objective(r, a, eps, eps)  # noqa: E731

    def cispo_weight(r):
        old = -jnp.log(r) * jnp.ones((1, 1))  # rho = exp(logp - old) = r at logp = 0

        def loss(logp):
            return ch06.cispo_loss(logp, old, jnp.full((1,), a), jnp.ones((1, 1)),
                                   ratio_cap=1.0 + eps)

        return -jax.grad(loss)(jnp.zeros((1, 1)))[0, 0]

    return (jax.vmap(objective)(rho), jax.vmap(jax.grad(objective))(rho),
            jax.vmap(cispo_weight)(jnp.maximum(rho, 1e-6)))


def group_advantage_table(group_size: int = GROUP_SIZE) -> dict[str, np.ndarray]:
    """Advantages of a correct and of an incorrect completion in a group of ``group_size``
    binary rewards with ``k = 1 .. G-1`` correct, under GRPO (eq. 57), Dr. GRPO (eq. 58) and
    RLOO (eqs. 47-48), and the group's Bessel-corrected standard deviation."""
    ks = np.arange(1, group_size)
    rewards = np.array([[1.0] * k + [0.0] * (group_size - k) for k in ks], np.float32)
    out = {"k": ks, "std": rewards.std(axis=1, ddof=1)}
    for name, adv in (("grpo", ch06.grpo_advantages(rewards)),
                      ("dr_grpo", ch06.grpo_advantages(rewards, scale=False)),
                      ("rloo", ch06.rloo_advantages(rewards))):
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
    out = {lam: np.asarray(ch06.compute_gae(r, v, mask, 1.0, lam)[0][0]) for lam in lambdas}
    out["returns"] = np.asarray(ch06.compute_gae(r, v, mask, 1.0, 1.0)[1][0])
    return out


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
    rho = np.asarray(ch06.gspo_sequence_ratio(jnp.asarray(flat), jnp.zeros_like(flat),
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


def sft_policy():
    """Chapter 4's SFT model of the small GPT (the prompt-masked run), the policy every RL run
    starts from: :func:`rlhf_book.textbook.figures.ch04_instruction_tuning.sft_small`."""
    return ch04_figures.sft_small()


def rl_task():
    """``(model_config, questions, prompts)``: the small GPT, the training questions
    (``data.split_questions()[0]``) and their chat-template prompts."""
    questions = data.split_questions()[0]
    return gpt.get_config(PRETRAIN_MODEL), questions, ch06.encode_prompts([q.prompt for q in questions])


def run_seeds(config: ch06.RLConfig, reward: ch06.Reward, lm_params, n_seeds: int, seed: int = 0):
    """``config``'s RL run from ``lm_params`` once per seed, all seeds at once:
    ``jax.jit(jax.vmap(make_train(...)))(keys)``. Returns the metrics as NumPy arrays
    ``[n_seeds, steps]`` (and the final states)."""
    model_config, _, prompts = rl_task()
    train = jax.jit(jax.vmap(ch06.make_train(config, model_config, lm_params, prompts, reward)))
    state, metrics = train(jax.random.split(jax.random.PRNGKey(seed), n_seeds))
    return {k: np.asarray(v) for k, v in metrics.items()}, state


def _sample_seeds(lm_params, tokens, lengths, keys, *, model_config, max_new_tokens):
    return rollout.sample_policies(lm_params, ch06.PromptSet(tokens, lengths), keys, 1.0,
                                   model_config, max_new_tokens=max_new_tokens)


def answer_breakdown(lm_params, n_questions: int = N_BREAKDOWN_QUESTIONS, seed: int = 0,
                     n_seeds: int = N_SEEDS,
                     max_new_tokens: int = RL_CONFIG.max_new_tokens) -> dict[str, float]:
    """What a policy answers: one completion (temperature 1) to each of ``n_questions``
    training questions per seed, classified by :func:`data.stated_answer` as ``right``,
    ``wrong`` or ``none`` (no answer to the question stated), and the mean gold reward.
    ``lm_params`` has a leading seed axis (the final states of a vmapped run) or none (one
    model, e.g. the SFT policy, sampled ``n_seeds`` times)."""
    model_config, questions, prompts = rl_task()
    if lm_params["tok_emb"].ndim == 2:  # [V, D]: one model, no seed axis
        lm_params = jax.tree.map(lambda x: jnp.broadcast_to(x, (n_seeds, *x.shape)), lm_params)
    S = jax.tree.leaves(lm_params)[0].shape[0]
    ids = np.random.default_rng(seed).choice(len(questions), n_questions, replace=False)
    gen = _sample_seeds(lm_params, prompts.tokens[ids], prompts.lengths[ids],
                        jax.random.split(jax.random.PRNGKey(seed + 1), S),
                        model_config=model_config, max_new_tokens=max_new_tokens)
    tokens = np.asarray(gen.tokens).reshape(S * n_questions, -1)
    texts = sampling.decode_masked(tokens, np.asarray(gen.mask).reshape(S * n_questions, -1))
    counts = dict.fromkeys(ANSWER_KINDS, 0)
    gold = []
    for question, text in zip([questions[i] for i in np.tile(ids, S)], texts):
        stated = data.stated_answer(question, text)
        kind = "none" if stated is None else (
            "right" if stated.lower() == question.answer.lower() else "wrong")
        counts[kind] += 1
        gold.append(data.gold_reward(question, text))
    return {**{k: v / len(texts) for k, v in counts.items()}, "gold": float(np.mean(gold)),
            "samples": len(texts)}


@functools.lru_cache(maxsize=1)
def algorithm_runs() -> dict[str, dict]:
    """``{algorithm: metrics}``: each of ``RL_ALGORITHMS`` with ``RL_CONFIG`` on the gold
    reward of the training questions, ``N_SEEDS`` seeds from :func:`sft_policy`; each entry
    also holds ``"answers"``, the :func:`answer_breakdown` of its final policies, and the
    entry ``"sft"`` that of the starting point."""
    _, questions, _ = rl_task()
    gold = ch06.text_reward(data.gold_reward, questions)
    params = sft_policy()
    runs = {}
    for a in RL_ALGORITHMS:
        metrics, state = run_seeds(dataclasses.replace(RL_CONFIG, algorithm=a), gold, params,
                                   N_SEEDS)
        runs[a] = {**metrics, "answers": answer_breakdown(state.params["lm"])}
    runs["sft"] = {"answers": answer_breakdown(params)}
    return runs


@functools.lru_cache(maxsize=1)
def kl_sweep_runs() -> dict[float, dict]:
    """``{beta: metrics}``: ``KL_SWEEP_CONFIG`` on the length reward (:func:`length_score`) for
    each of ``KL_SWEEP_BETAS``, ``KL_SWEEP_SEEDS`` seeds from :func:`sft_policy`."""
    model_config, questions, prompts = rl_task()
    reward = ch06.text_reward(length_score, questions)
    train = ch06.make_train(KL_SWEEP_CONFIG, model_config, sft_policy(), prompts, reward)
    # Every (beta, seed) pair in one vmap, beta traced: one compilation for the whole sweep.
    n_betas = len(KL_SWEEP_BETAS)
    keys = jnp.tile(jax.random.split(jax.random.PRNGKey(0), KL_SWEEP_SEEDS), (n_betas, 1))
    betas = jnp.repeat(jnp.asarray(KL_SWEEP_BETAS, jnp.float32), KL_SWEEP_SEEDS)
    _, metrics = jax.jit(jax.vmap(train))(keys, betas)
    metrics = {k: np.asarray(v).reshape(n_betas, KL_SWEEP_SEEDS, -1) for k, v in metrics.items()}
    return {b: {k: v[i] for k, v in metrics.items()} for i, b in enumerate(KL_SWEEP_BETAS)}


def first_last(x, window: int = 3) -> dict[str, float]:
    """Mean over seeds of the first and of the last ``window`` steps, the change, and the
    standard error of the change across seeds."""
    x = np.asarray(x, np.float64)
    first, last = x[:, :window].mean(axis=1), x[:, -window:].mean(axis=1)
    change = last - first
    return {"first": float(first.mean()), "last": float(last.mean()),
            "change": float(change.mean()),
            "change_se": float(change.std(ddof=1) / np.sqrt(len(change)))}


def _band(ax, x, values, colour, label, **kw):
    mean, se = mean_se(values)
    ax.plot(x, mean, color=colour, label=label, **kw)
    ax.fill_between(x, mean - se, mean + se, color=colour, alpha=0.2, lw=0)


# ----------------------------------------------------------------------------------------------
# Figures


@figure("ch06_loss_aggregation", "ch06",
        "Loss aggregation (§6.2.2, eqs. 67-69) on the book's example: per-token losses "
        "[1, 1, 1, 1, 10] and [1 x 9, 10]. Each cell is the gradient of the batch loss with "
        "respect to that token's loss (jax.grad of aggregate_loss): per sequence, a token of "
        "the short sequence counts twice as much as one of the long sequence; per token and "
        "fixed length (L_max = 10), every token counts the same.")
def loss_aggregation(rows=AGG_LOSSES, max_length: int = AGG_MAX_LENGTH) -> FigureResult:
    results = aggregation_weights(rows, max_length)
    losses, mask = padded(rows)
    fig = Figure(figsize=(11, 3.3))
    axes = fig.subplots(len(results), 1)
    vmax = max(float(w.max()) for _, w in results.values())
    numbers = {}
    for ax, (mode, (value, weights)) in zip(axes, results.items()):
        shown = np.where(mask > 0, weights, np.nan)
        ax.imshow(shown, cmap="Blues", vmin=0, vmax=vmax * 1.8, aspect="auto")
        for (i, t), w in np.ndenumerate(weights):
            if mask[i, t]:
                ax.text(t, i, f"{w:.3f}\n(l={losses[i, t]:g})", ha="center", va="center",
                        fontsize=6.5)
        ax.set_yticks(range(len(rows)), [f"{int(mask[i].sum())} tokens" for i in range(len(rows))],
                      fontsize=7)
        ax.set_xticks([])
        ax.set_title(f"{AGG_LABELS[mode]}: loss = {value:.4g}", fontsize=8.5, loc="left")
        numbers[mode] = {"loss": value,
                         "weights": [sorted({round(float(w), 6) for w, m in zip(wr, mr) if m})
                                     for wr, mr in zip(weights, mask)]}
    fig.suptitle("d loss / d l_t for every completion token (blank: padding)", fontsize=9)
    fig.tight_layout()
    return FigureResult(fig, numbers)


@figure("ch06_ppo_objective", "ch06",
        "Figure 20 reproduced: PPO's clipped objective J(rho) = min(rho A, clip(rho, 0.8, 1.2) A) "
        "(top) and its gradient dJ/d rho (bottom) for A = +1 and A = -1; the shaded band is the "
        "trust region 1 +- eps. Dashed: the weight each method puts on grad log pi, rho dJ/d rho "
        "for PPO and min(rho, 1.2) A for CISPO (capped at 1 + eps, no lower clip): PPO drops "
        "the token (weight 0) on one side of the band, CISPO never does.")
def ppo_regions(eps: float = PPO_EPS) -> FigureResult:
    fig = Figure(figsize=(10.5, 5.6))
    axes = fig.subplots(2, 2, sharex=True)
    numbers = {}
    for col, advantage in enumerate((1.0, -1.0)):
        c = ppo_curves(advantage, eps=eps)
        top, bottom = axes[0, col], axes[1, col]
        for ax in (top, bottom):
            ax.axvspan(1 - eps, 1 + eps, color="tab:green", alpha=0.12)
            ax.axvline(1.0, color="0.5", lw=0.6)
        top.plot(c["rho"], c["rho"] * advantage, color="0.6", ls=":", label="unclipped rho A")
        top.plot(c["rho"], c["J"], color="tab:blue", lw=2, label="J = min(rho A, clip(rho) A)")
        for label, r in LECTURE_RATIOS.items():
            j = float(ch06.ppo_objective(jnp.float32(r), jnp.float32(advantage), eps, eps))
            top.plot(r, j, "o", color="tab:red", ms=5)
            top.annotate(f"rho={r:g}: J={j:+.2f}", (r, j), xytext=(4, -12 if advantage > 0 else 6),
                         textcoords="offset points", fontsize=7)
        finish_axes(top, title=f"A = {advantage:+g}", ylabel="objective J")
        top.legend(fontsize=7, loc="upper left" if advantage > 0 else "lower left")
        bottom.plot(c["rho"], c["dJ"], color="tab:blue", lw=2, label="PPO dJ/d rho")
        bottom.plot(c["rho"], c["ppo_weight"], color="tab:blue", ls="--", lw=1,
                    label="PPO weight on grad log pi (rho dJ/d rho)")
        bottom.plot(c["rho"], c["cispo_weight"], color="tab:purple", ls="--", lw=1.5,
                    label="CISPO weight min(rho, 1+eps) A")
        bottom.axhline(0, color="k", lw=0.6)
        finish_axes(bottom, xlabel="ratio rho = pi_theta / pi_old", ylabel="gradient")
        bottom.legend(fontsize=7, loc="upper left" if advantage > 0 else "lower left")
        exact = ppo_curves(advantage, TABLE_RATIOS, eps)
        numbers[f"A={advantage:+g}"] = {
            f"rho={r:g}": {"J": float(exact["J"][k]), "dJ/drho": float(exact["dJ"][k]),
                           "ppo_weight": float(exact["ppo_weight"][k]),
                           "cispo_weight": float(exact["cispo_weight"][k])}
            for k, r in enumerate(TABLE_RATIOS)}
    fig.tight_layout()
    return FigureResult(fig, numbers)


@figure("ch06_group_advantages", "ch06",
        "Group advantages for G = 8 binary rewards with k correct (Figure 22; eqs. 57-59): the "
        "advantage of a correct completion (solid) and of an incorrect one (dashed). GRPO divides "
        "by the group's std, which is smallest when nearly all or nearly none are correct "
        "(bars, right axis: 1/std), so a lone correct answer gets 2.47; Dr. GRPO does not "
        "divide; RLOO is Dr. GRPO times G/(G-1) = 8/7 (eq. 60).")
def group_advantages(group_size: int = GROUP_SIZE) -> FigureResult:
    g = group_advantage_table(group_size)
    fig = Figure(figsize=(10.5, 3.8))
    ax, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.6, 1]})
    for name, colour, label in (("grpo", "tab:blue", "GRPO (r - mean) / (std + 1e-4)"),
                                ("dr_grpo", "tab:cyan", "Dr. GRPO r - mean"),
                                ("rloo", "tab:green", "RLOO r - mean of the others")):
        ax.plot(g["k"], g[f"{name}_correct"], "o-", color=colour, label=f"{label}: correct")
        ax.plot(g["k"], g[f"{name}_incorrect"], "s--", color=colour, ms=4, label="... incorrect")
    ax.axhline(0, color="k", lw=0.6)
    finish_axes(ax, xlabel=f"k correct of G = {group_size}", ylabel="advantage",
                title="advantage of a correct and an incorrect completion")
    ax.legend(fontsize=6.5, ncol=2, loc="lower left")
    right.bar(g["k"], 1.0 / g["std"], color="tab:blue", alpha=0.6)
    for k, v in zip(g["k"], 1.0 / g["std"]):
        right.text(k, v, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    finish_axes(right, xlabel=f"k correct of G = {group_size}", ylabel="1 / std (ddof = 1)",
                title="GRPO's extra weight = GRPO / Dr. GRPO", ylim=(0, 3.3))
    fig.tight_layout()
    return FigureResult(fig, {k: v.tolist() for k, v in g.items()})


@figure("ch06_gae_lambda", "ch06",
        "GAE (§6.3.2, eqs. 75-77) on Figure 21's value example: rewards 0 on five tokens and "
        "0.73 at <|eos|>, the critic's predictions V = .45 ... .73, gamma = 1. Left: the "
        "regression targets (Monte-Carlo returns, 0.73 everywhere) and the predictions. Right: "
        "advantages for lambda = 0 (one-step TD), 0.5, 0.95 and 1 (returns minus V, the "
        "figure's A_t): lambda trades the critic's bias for the returns' variance.")
def gae_lambda(lambdas=GAE_LAMBDAS) -> FigureResult:
    sweep = gae_sweep(lambdas)
    t = np.arange(len(FIG21_VALUES))
    tokens = ("The", "answer", "is", "5", ".", "<|eos|>")
    fig = Figure(figsize=(10.5, 3.5))
    left, right = fig.subplots(1, 2)
    left.bar(t - 0.2, sweep["returns"], 0.4, color="tab:orange", label="target (return) 0.73")
    left.bar(t + 0.2, FIG21_VALUES, 0.4, color="tab:blue", label="prediction V(s_t)")
    left.set_xticks(t, tokens, fontsize=8)
    finish_axes(left, ylabel="value", title="the critic's regression (Figure 21)", ylim=(0, 0.9))
    left.legend(fontsize=7, loc="lower right")
    for lam, colour in zip(lambdas, ("tab:gray", "tab:cyan", "tab:blue", "tab:red")):
        right.plot(t, sweep[lam], "o-", color=colour, label=f"lambda = {lam:g}")
    right.set_xticks(t, tokens, fontsize=8)
    finish_axes(right, ylabel="advantage A_t", title="GAE advantages (gamma = 1)")
    right.legend(fontsize=7)
    fig.tight_layout()
    return FigureResult(fig, {f"lambda={lam:g}": sweep[lam].tolist() for lam in lambdas}
                        | {"returns": sweep["returns"].tolist()})


@figure("ch06_tis_gspo", "ch06",
        "Left: truncated importance-sampling weights min(pi_learner / pi_sampler, 2) (§6.2.4, "
        "eq. 70, code C6) against the log-ratio, one-sided: below 1 the ratio passes unchanged; "
        "dots are the reference notes' examples. Right: with independent token log-ratios "
        "~ N(0, 0.1^2), the spread of log rho for a single token, for the unnormalised "
        "sequence ratio prod_t rho_t (grows like sqrt(|a|)) and for GSPO's length-normalised "
        "ratio (eq. 63, shrinks like 1/sqrt(|a|)).")
def tis_gspo(cap: float = TIS_CAP) -> FigureResult:
    x = np.linspace(-3, 3, 301).astype(np.float32)
    w = np.asarray(ch06.tis_weights(jnp.asarray(x), jnp.zeros_like(jnp.asarray(x)), cap))
    points = np.asarray(TIS_LOG_RATIOS, np.float32)
    wp = np.asarray(ch06.tis_weights(jnp.asarray(points), jnp.zeros(len(points)), cap))
    spread = gspo_spread()
    fig = Figure(figsize=(10.5, 3.6))
    left, right = fig.subplots(1, 2)
    left.plot(x, np.exp(x), color="0.6", ls=":", label="ratio e^x (untruncated)")
    left.plot(x, w, color="tab:blue", lw=2, label=f"TIS weight min(e^x, {cap:g})")
    shown = np.abs(points) <= 3
    left.plot(points[shown], wp[shown], "o", color="tab:red", ms=5)
    for p, v in zip(points[shown], wp[shown]):
        left.annotate(f"{v:.3g}", (p, v), xytext=(3, 5), textcoords="offset points", fontsize=7)
    finish_axes(left, xlabel="log pi_learner - log pi_sampler", ylabel="weight", ylim=(0, 4),
                title="truncated importance sampling (C = 2)")
    left.legend(fontsize=7, loc="upper left")
    L = np.asarray(spread["length"])
    right.loglog(L, spread["token_log_std"], "o-", color="0.5", label="one token log rho_t")
    right.loglog(L, spread["product_log_std"], "s-", color="tab:red",
                 label="sequence sum_t log rho_t (unnormalised)")
    right.loglog(L, spread["gspo_log_std"], "^-", color="tab:blue",
                 label="GSPO mean_t log rho_t (eq. 63)")
    finish_axes(right, xlabel="completion length |a| (tokens)", ylabel="std of the log-ratio",
                title=f"token log-ratios ~ N(0, {GSPO_SIGMA:g}^2)")
    right.legend(fontsize=7)
    fig.tight_layout()
    return FigureResult(fig, {"tis_weights": dict(zip(map(str, TIS_LOG_RATIOS), wp.tolist())),
                              **spread})


@figure("ch06_rl_algorithms", "ch06",
        "RL with real gradients on chapter 4's SFT model (the small GPT): five algorithms with "
        "the same budget (12 steps of 4 training questions x 4 completions, learning rate "
        "3e-4, beta 0.02), 8 seeds each, mean +- standard error. From the left: gold reward of "
        "the completions sampled at each step; KL to the SFT model (summed over a "
        "completion's tokens); completion length in tokens; and what the final policies answer "
        "to 32 training questions (right, wrong, or no answer stated), next to the SFT model. "
        "The gold reward rises because wrong answers (-1) give way to non-answers (-0.5).")
def rl_algorithms(runs: dict | None = None) -> FigureResult:
    """``runs``: ``{algorithm: metrics [seeds, steps] (+ "answers")}``, optionally with
    ``"sft": {"answers": ...}``; by default :func:`algorithm_runs`."""
    runs = algorithm_runs() if runs is None else runs
    fig = Figure(figsize=(14, 3.6))
    axes = fig.subplots(1, 4, gridspec_kw={"width_ratios": [1, 1, 1, 0.9]})
    numbers = {}
    for algorithm, metrics in runs.items():
        if "score" not in metrics:
            continue
        colour = ALGORITHM_COLOURS.get(algorithm, None)
        steps = np.arange(1, metrics["score"].shape[1] + 1)
        for ax, key in zip(axes, ("score", "kl", "length")):
            _band(ax, steps, metrics[key], colour, algorithm)
        numbers[algorithm] = {"gold": first_last(metrics["score"]),
                              "kl_last": first_last(metrics["kl"])["last"],
                              "length": first_last(metrics["length"]),
                              "seeds": int(metrics["score"].shape[0])}
    finish_axes(axes[0], xlabel="RL step", ylabel="mean gold reward of the step's samples",
                title="gold reward (training questions)")
    finish_axes(axes[1], xlabel="RL step", ylabel="KL(pi || pi_SFT) per completion (nats)",
                title="KL to the SFT model")
    finish_axes(axes[2], xlabel="RL step", ylabel="tokens", title="completion length")
    axes[0].legend(fontsize=7)
    answers = {name: m["answers"] for name, m in runs.items() if "answers" in m}
    if answers:
        names = list(answers)
        bottom = np.zeros(len(names))
        for kind, colour in zip(ANSWER_KINDS, ("tab:green", "tab:red", "0.7")):
            share = np.array([answers[n][kind] for n in names])
            axes[3].bar(range(len(names)), share, bottom=bottom, color=colour, label=kind)
            bottom += share
        axes[3].set_xticks(range(len(names)), names, rotation=30, fontsize=7)
        finish_axes(axes[3], ylabel="fraction of answers", ylim=(0, 1), title="final answers")
        axes[3].legend(fontsize=7, loc="lower right")
        numbers["answers"] = answers
    fig.tight_layout()
    return FigureResult(fig, numbers)


@figure("ch06_kl_sweep", "ch06",
        "The lecture notes' exercises 3 and 5 (seed 003) with real gradients: RLOO on the flawed "
        "reward len(response) / 100 from chapter 4's SFT model, with the KL penalty folded into "
        "the reward, beta = 0 (no penalty), 0.001, 0.02, 0.1 and 0.5; 4 seeds each, mean +- "
        "standard error. Left: completion length in tokens (32 is the limit). Middle: the "
        "reward. Right: KL to the SFT model per completion.")
def kl_sweep(runs: dict | None = None) -> FigureResult:
    runs = kl_sweep_runs() if runs is None else runs
    fig = Figure(figsize=(12, 3.6))
    axes = fig.subplots(1, 3)
    colours = dict(zip(sorted(runs), ("k", "tab:red", "tab:orange", "tab:green", "tab:blue")))
    numbers = {}
    for beta in sorted(runs):
        metrics = runs[beta]
        steps = np.arange(1, metrics["score"].shape[1] + 1)
        label = f"beta = {beta:g}" + (" (no KL)" if beta == 0 else "")
        for ax, key in zip(axes, ("length", "score", "kl")):
            _band(ax, steps, metrics[key], colours.get(beta), label)
        numbers[f"beta={beta:g}"] = {"length": first_last(metrics["length"]),
                                     "reward": first_last(metrics["score"]),
                                     "kl": first_last(metrics["kl"]),
                                     "seeds": int(metrics["score"].shape[0])}
    finish_axes(axes[0], xlabel="RL step", ylabel="tokens", title="completion length")
    finish_axes(axes[1], xlabel="RL step", ylabel="len(response) / 100", title="the flawed reward")
    finish_axes(axes[2], xlabel="RL step", ylabel="KL(pi || pi_SFT) per completion (nats)",
                title="KL to the SFT model")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return FigureResult(fig, numbers)
