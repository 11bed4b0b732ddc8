"""Chapter 15 figures: Schulman's three KL estimators against the exact KL as two distributions
move apart (bias and spread, the reference notes' T15.1 table), the gradients the estimators
give when used as a loss (T15.2, by enumeration on a categorical), the per-token KL of the
mini GPT against its reference along sampled completions, the reward-KL frontier of chapter
6's loop under a sweep of beta, and forgetting: SFT against on-policy RL on a second task,
measured on the first (§15.2.1-15.2.3).

``notebooks/ch15_regularization.ipynb`` draws through these and passes its own results; with
no arguments (``rlhf-book figures ch15``) the figures recompute them (the runs on the mini GPT
start from chapter 4's SFT model of the small GPT, loaded from the substrate cache or trained).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.figure import Figure

from rlhf_book import ch04_instruction_tuning as ch04
from rlhf_book import ch06_policy_gradients as ch06
from rlhf_book import ch15_regularization as ch15
from rlhf_book import data
from rlhf_book.lm import gpt, sampling
from rlhf_book.textbook.figures import FigureResult, figure, finish_axes
from rlhf_book.textbook.figures import ch06_policy_gradients as ch06_figures
from rlhf_book.textbook.figures.ch06_policy_gradients import mean_se

# T15.1: q = N(0, 1) is sampled, p = N(mu, 1) is the reference; KL(q || p) = mu^2 / 2.
GAUSS_MUS = (0.1, 0.5, 1.0)
GAUSS_CURVE_MUS = tuple(np.round(np.linspace(0.1, 2.0, 20), 2).tolist())
GAUSS_SAMPLES = 1_000_000
# The same on categoricals: vocabulary 50, the reference's logits = the policy's + scale * noise.
CAT_VOCAB = 50
CAT_SCALES = tuple(np.round(np.linspace(0.1, 2.0, 12), 3).tolist())
CAT_SAMPLES = 200_000
# T15.2: the estimators as losses, by enumeration over a 6-token vocabulary.
GRAD_VOCAB = 6

# The reward-KL frontier (notebook section 5): chapter 6's RL run on the gold reward of the
# training questions (12 steps of 4 questions x 4 completions, at most 20 new tokens, learning
# rate 3e-4), RLOO with the KL as a k1 penalty in the reward (InstructGPT's place for it), one
# vmapped sweep of FRONTIER_BETAS x FRONTIER_SEEDS.
FRONTIER_CONFIG = dataclasses.replace(ch06_figures.RL_CONFIG, algorithm="rloo")
FRONTIER_BETAS = (0.0, 0.05, 0.2, 1.0)
FRONTIER_SEEDS = 2
# Per-token KL along completions (notebook section 4): the beta = 0 policy of the sweep (seed
# 0) against the SFT model, TOKEN_PROMPTS training questions x TOKEN_SAMPLES completions.
TOKEN_PROMPTS, TOKEN_SAMPLES = 32, 4

# Forgetting (notebook section 7). Task 1 (old): the world's capital, animal and colour
# questions, scored by the gold reward. Task 2 (new): a format on its arithmetic questions --
# open the answer with NEW_PREFIX ("The answer is 7."), one of the four templates chapter 4's
# SFT data uses for arithmetic, so the start model already does it about a quarter of the time
# and both methods can learn it at a small budget. Task 2's score is the share of answers that
# open with the prefix. From chapter 4's SFT model, the same budget of FORGET_STEPS steps of 16
# sequences at learning rate FORGET_LR each way: SFT on demonstrations "The answer is {x}." of
# arithmetic questions, or on-policy RL (GRPO, 4 questions x 4 completions, beta = 0: no
# explicit KL term) on the format score; FORGET_SEEDS seeds vmapped. Evaluation: one sampled
# answer (T = 1) per question and seed on EVAL_QUESTIONS training questions of each task, and
# the exact sequence KL to the start model along those answers.
OLD_TOPICS = ("capital", "animal", "color")
NEW_TOPICS = ("arithmetic",)
NEW_PREFIX = "The answer is"
FORGET_STEPS = 24
FORGET_SEEDS = 4
FORGET_LR = 3e-4
FORGET_RL_CONFIG = dataclasses.replace(ch06_figures.RL_CONFIG, algorithm="grpo",
                                       steps=FORGET_STEPS, beta=0.0, log_every=FORGET_STEPS)
SFT_BATCH = FORGET_RL_CONFIG.prompts_per_step * FORGET_RL_CONFIG.group_size
EVAL_QUESTIONS = 64
EVAL_TOKENS = 20

COLOURS = {"k1": "tab:blue", "k2": "tab:orange", "k3": "tab:green", "exact": "k",
           "sft": "tab:red", "rl": "tab:blue", "start": "0.4"}


# ----------------------------------------------------------------------------------------------
# T15.1: bias and spread of k1, k2, k3


def gaussian_estimates(mus=GAUSS_MUS, n: int = GAUSS_SAMPLES, seed: int = 0) -> dict:
    """For each ``mu``: the true ``KL(q || p) = mu^2 / 2`` and, for each estimator, the Monte
    Carlo mean, its standard error, the bias and the per-sample standard deviation (the
    library's ``kl_k1/k2/k3`` on ``logp = log q(x)``, ``ref_logp = log p(x)``, ``x ~ q``; the
    Gaussian normalisers cancel in the log-ratio and are left out)."""
    rng = np.random.default_rng(seed)
    out = {}
    for mu in mus:
        x = rng.standard_normal(n).astype(np.float32)
        logq, logp = -0.5 * x**2, -0.5 * (x - mu) ** 2
        true = mu**2 / 2
        row = {"true": true}
        for name in ch15.KL_ESTIMATORS:
            k = np.asarray(ch15.kl_estimate(logq, logp, name), np.float64)
            row[name] = {"mean": k.mean(), "se": k.std() / np.sqrt(n),
                         "bias": k.mean() - true, "std": k.std()}
        out[mu] = row
    return out


def categorical_estimates(scales=CAT_SCALES, vocab: int = CAT_VOCAB, n: int = CAT_SAMPLES,
                          seed: int = 0) -> dict:
    """The same on categoricals: policy logits ``z ~ N(0, I)``, reference ``z + s * N(0, I)``;
    exact ``KL(pi || pi_ref)`` by summing over the vocabulary, the estimators on ``n`` samples."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(vocab)
    noise = rng.standard_normal(vocab)
    out = {"scale": list(scales), "exact": []}
    for name in ch15.KL_ESTIMATORS:
        out[name] = {"mean": [], "se": [], "std": []}
    for s in scales:
        logp = z - np.logaddexp.reduce(z)
        zr = z + s * noise
        logr = zr - np.logaddexp.reduce(zr)
        out["exact"].append(float(np.sum(np.exp(logp) * (logp - logr))))
        y = rng.choice(vocab, size=n, p=np.exp(logp))
        for name in ch15.KL_ESTIMATORS:
            k = np.asarray(ch15.kl_estimate(logp[y].astype(np.float32),
                                            logr[y].astype(np.float32), name), np.float64)
            out[name]["mean"].append(k.mean())
            out[name]["se"].append(k.std() / np.sqrt(n))
            out[name]["std"].append(k.std())
    return out


@figure("ch15_estimators", "ch15",
        "Schulman's KL estimators (reference notes T15.1). Left: q = N(0, 1) sampled, reference "
        "p = N(mu, 1); bias / true KL and per-sample std / true KL of k1, k2, k3 against mu "
        "(10^6 samples each). Right: a 50-token categorical whose reference logits move away "
        "by a growing noise scale; the Monte Carlo mean of each estimator (200k samples, +- 2 "
        "standard errors) against the exact KL summed over the vocabulary.")
def estimators(gauss: dict | None = None, cat: dict | None = None) -> FigureResult:
    gauss = gaussian_estimates(GAUSS_CURVE_MUS, n=200_000) if gauss is None else gauss
    cat = categorical_estimates() if cat is None else cat
    fig = Figure(figsize=(12, 3.6))
    axes = fig.subplots(1, 3)
    mus = np.asarray(sorted(gauss))
    for name in ch15.KL_ESTIMATORS:
        true = np.asarray([gauss[m]["true"] for m in mus])
        axes[0].plot(mus, [gauss[m][name]["bias"] for m in mus] / true, "o-", ms=3,
                     color=COLOURS[name], label=name)
        axes[1].plot(mus, [gauss[m][name]["std"] for m in mus] / true, "o-", ms=3,
                     color=COLOURS[name], label=name)
    axes[1].set_yscale("log")
    finish_axes(axes[0], xlabel="mu (KL = mu^2 / 2)", ylabel="bias / true KL",
                title="Gaussian: bias")
    finish_axes(axes[1], xlabel="mu", ylabel="std / true KL", title="Gaussian: spread per sample")
    scale = np.asarray(cat["scale"])
    axes[2].plot(scale, cat["exact"], "k-", lw=2, label="exact (sum over vocabulary)")
    for name in ch15.KL_ESTIMATORS:
        m, se = np.asarray(cat[name]["mean"]), np.asarray(cat[name]["se"])
        axes[2].errorbar(scale, m, yerr=2 * se, fmt="o", ms=3, color=COLOURS[name], label=name)
    finish_axes(axes[2], xlabel="noise scale of the reference logits", ylabel="nats",
                title=f"categorical, V = {CAT_VOCAB}")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    table = {f"mu={m:g}": {name: {"bias/true": gauss[m][name]["bias"] / gauss[m]["true"],
                                  "std/true": gauss[m][name]["std"] / gauss[m]["true"]}
                           for name in ch15.KL_ESTIMATORS}
             for m in mus if m in GAUSS_MUS}
    return FigureResult(fig, {"gaussian": table,
                              "categorical_exact_last": cat["exact"][-1],
                              **{f"categorical_{n}_last": cat[n]["mean"][-1]
                                 for n in ch15.KL_ESTIMATORS}})


# ----------------------------------------------------------------------------------------------
# T15.2: the estimators as losses


def estimator_gradients(vocab: int = GRAD_VOCAB, seed: int = 0) -> dict:
    """By enumeration over ``vocab`` tokens: ``E_{y ~ pi}[grad k_i(y)]`` for each estimator
    (the sample ``y`` held fixed, the gradient through ``log pi_theta(y)`` only) and the
    gradients of the reverse KL ``KL(pi || pi_ref)`` and the forward KL ``KL(pi_ref || pi)``
    with respect to the policy's logits; all ``[vocab]``."""
    rng = np.random.default_rng(seed)
    theta = jnp.asarray(rng.standard_normal(vocab))
    ref_logp = jax.nn.log_softmax(jnp.asarray(rng.standard_normal(vocab)))
    out = {"theta": np.asarray(theta), "ref_logp": np.asarray(ref_logp)}
    for name in ch15.KL_ESTIMATORS:
        out[name] = np.asarray(ch15.estimator_loss_gradient(theta, ref_logp, name))
    out["reverse"] = np.asarray(ch15.kl_gradient(theta, ref_logp, "reverse"))
    out["forward"] = np.asarray(ch15.kl_gradient(theta, ref_logp, "forward"))
    return out


@figure("ch15_estimator_gradients", "ch15",
        "The estimators used as a loss (reference notes T15.2): the expected gradient with "
        "respect to the policy's logits, E_{y ~ pi}[grad k(y)] with the sample held fixed, by "
        "enumeration over a 6-token vocabulary, beside the gradients of the reverse KL(pi || "
        "pi_ref) and of the forward KL(pi_ref || pi). k1's is zero, k2's is the reverse KL's, "
        "k3's is the forward KL's.")
def estimator_gradient_bars(grads: dict | None = None) -> FigureResult:
    grads = estimator_gradients() if grads is None else grads
    fig = Figure(figsize=(9, 3.4))
    ax = fig.subplots()
    v = np.arange(len(grads["theta"]))
    series = [("k1", "k1"), ("k2", "k2"), ("reverse", "grad KL(pi || ref)"),
              ("k3", "k3"), ("forward", "grad KL(ref || pi)")]
    colours = {"k1": COLOURS["k1"], "k2": COLOURS["k2"], "reverse": "tab:purple",
               "k3": COLOURS["k3"], "forward": "tab:olive"}
    w = 0.16
    for i, (key, label) in enumerate(series):
        ax.bar(v + (i - 2) * w, grads[key], w, color=colours[key],
               label=("E[grad " + label + "]") if key.startswith("k") else label)
    ax.axhline(0, color="k", lw=0.5)
    finish_axes(ax, xlabel="logit index", ylabel="d / d theta_v", title="expected gradients")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    err = {f"{k}_vs_{t}": float(np.max(np.abs(grads[k] - (grads[t] if t else 0))))
           for k, t in (("k1", None), ("k2", "reverse"), ("k3", "forward"))}
    return FigureResult(fig, {"max_abs_diff": err})


# ----------------------------------------------------------------------------------------------
# RL on the mini GPT: the beta sweep (frontier) and the per-token KL of one policy


@functools.lru_cache(maxsize=1)
def frontier_runs() -> dict:
    """``{"metrics": {beta: {name: [seeds, steps]}}, "params": final lm params [betas * seeds,
    ...]}``: ``FRONTIER_CONFIG`` on the gold reward for each of ``FRONTIER_BETAS``,
    ``FRONTIER_SEEDS`` seeds, every (beta, seed) pair in one vmapped compilation."""
    model_config, questions, prompts = ch06_figures.rl_task()
    reward = ch06.text_reward(data.gold_reward, questions)
    train = ch06.make_train(FRONTIER_CONFIG, model_config, ch06_figures.sft_policy(), prompts,
                            reward)
    n_betas = len(FRONTIER_BETAS)
    keys = jnp.tile(jax.random.split(jax.random.PRNGKey(0), FRONTIER_SEEDS), (n_betas, 1))
    betas = jnp.repeat(jnp.asarray(FRONTIER_BETAS, jnp.float32), FRONTIER_SEEDS)
    state, metrics = jax.jit(jax.vmap(train))(keys, betas)
    metrics = {k: np.asarray(v).reshape(n_betas, FRONTIER_SEEDS, -1) for k, v in metrics.items()}
    return {"metrics": {b: {k: v[i] for k, v in metrics.items()}
                        for i, b in enumerate(FRONTIER_BETAS)},
            "params": state.params["lm"]}


def frontier_points(runs: dict | None = None, window: int = 3) -> dict:
    """Per beta: the gold reward and the KL per completion (k1 summed over tokens) over the
    last ``window`` steps, one value per seed."""
    runs = frontier_runs() if runs is None else runs
    return {b: {"reward": m["score"][:, -window:].mean(1), "kl": m["kl"][:, -window:].mean(1),
                "reward_first": m["score"][:, :window].mean(1)}
            for b, m in runs["metrics"].items()}


@figure("ch15_frontier", "ch15",
        "The reward-KL frontier of chapter 6's loop: RLOO on the gold reward of the training "
        "questions from chapter 4's SFT model, 12 steps, the KL to the SFT model as a k1 "
        "penalty in the reward with beta = 0, 0.05, 0.2, 1; 2 seeds each in one vmapped run. "
        "Left: gold reward against KL per completion over the last 3 steps (each dot a seed, "
        "the line joins the means). Right: KL per completion along training.")
def frontier(runs: dict | None = None) -> FigureResult:
    runs = frontier_runs() if runs is None else runs
    points = frontier_points(runs)
    fig = Figure(figsize=(10, 3.6))
    axes = fig.subplots(1, 2)
    cmap = {b: c for b, c in zip(FRONTIER_BETAS, ("k", "tab:red", "tab:orange", "tab:blue"))}
    means = []
    numbers = {}
    for b, p in points.items():
        axes[0].scatter(p["kl"], p["reward"], color=cmap.get(b), s=18, label=f"beta = {b:g}")
        means.append((p["kl"].mean(), p["reward"].mean()))
        kl = runs["metrics"][b]["kl"]
        steps = np.arange(1, kl.shape[1] + 1)
        m, se = mean_se(kl)
        axes[1].plot(steps, m, color=cmap.get(b), label=f"beta = {b:g}")
        axes[1].fill_between(steps, m - se, m + se, color=cmap.get(b), alpha=0.2)
        numbers[f"beta={b:g}"] = {"reward_last": float(p["reward"].mean()),
                                  "reward_first": float(p["reward_first"].mean()),
                                  "kl_last": float(p["kl"].mean())}
    means = np.asarray(means)
    axes[0].plot(means[:, 0], means[:, 1], "k--", lw=0.8)
    axes[0].axhline(np.mean([p["reward_first"].mean() for p in points.values()]), color="0.5",
                    ls=":", label="first 3 steps")
    finish_axes(axes[0], xlabel="KL(pi || pi_SFT) per completion (nats)", ylabel="gold reward",
                title="reward against KL")
    finish_axes(axes[1], xlabel="RL step", ylabel="nats", title="KL per completion")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return FigureResult(fig, numbers)


@functools.partial(jax.jit, static_argnames=("model_config",))
def _token_kls(params, ref_params, tokens, model_config):
    """Exact per-position ``KL(pi || pi_ref)`` over the vocabulary and the sampled tokens'
    log-probabilities under both models, aligned with the sampled tokens (position t holds the
    distribution that predicts token t)."""
    logits = gpt.forward(params, tokens, model_config)[:, :-1]
    ref_logits = gpt.forward(ref_params, tokens, model_config)[:, :-1]
    exact = ch15.exact_kl(logits, ref_logits)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1)[..., 0]
    ref_logp = jnp.take_along_axis(jax.nn.log_softmax(ref_logits), tokens[:, 1:, None], -1)[..., 0]
    pad = lambda x: jnp.pad(x, ((0, 0), (1, 0)))
    return pad(exact), pad(logp), pad(ref_logp)


def per_token_kl(params=None, ref_params=None, seed: int = 0) -> dict:
    """Along completions sampled from ``params`` (default: the beta = 0 policy of the frontier
    sweep, seed 0) for ``TOKEN_PROMPTS`` training questions x ``TOKEN_SAMPLES``: per completion
    position, the exact KL over the vocabulary and the k1 and k3 of the sampled token (arrays
    ``[N, max_new_tokens]``, zero past the end) with the completion ``mask``."""
    model_config, _, prompts = ch06_figures.rl_task()
    if params is None:
        params = jax.tree.map(lambda x: x[0], frontier_runs()["params"])
    ref_params = ch06_figures.sft_policy() if ref_params is None else ref_params
    ids = np.repeat(np.arange(TOKEN_PROMPTS), TOKEN_SAMPLES)
    gen = sampling.sample_cached(params, prompts.tokens[ids], prompts.lengths[ids],
                                 jax.random.PRNGKey(seed), 1.0, model_config,
                                 max_new_tokens=FRONTIER_CONFIG.max_new_tokens)
    exact, logp, ref_logp = _token_kls(params, ref_params, gen.tokens, model_config)
    mask = np.asarray(gen.mask, bool)
    # Completion positions: the first sampled token of each row is completion position 0.
    start = mask.argmax(axis=1)
    T = FRONTIER_CONFIG.max_new_tokens
    cols = start[:, None] + np.arange(T)[None]
    take = lambda x: np.take_along_axis(np.asarray(x, np.float64), cols, axis=1)
    m = take(mask).astype(bool)
    return {"exact": take(exact) * m, "k1": take(ch15.kl_k1(logp, ref_logp)) * m,
            "k3": take(ch15.kl_k3(logp, ref_logp)) * m, "mask": m}


@figure("ch15_token_kl", "ch15",
        "The per-token KL of an RL policy (chapter 6's loop, beta = 0, 12 steps from chapter 4's "
        "SFT model) against the SFT model along 128 sampled completions: at each completion "
        "position the mean exact KL over the vocabulary, and the mean k1 and k3 of the sampled "
        "token (+- 1 standard error over completions). Right: the same summed over positions, "
        "the sequence KL, per completion: exact against k1.")
def token_kl(result: dict | None = None) -> FigureResult:
    result = per_token_kl() if result is None else result
    fig = Figure(figsize=(10, 3.6))
    axes = fig.subplots(1, 2)
    m = result["mask"]
    n = m.sum(0)
    pos = np.arange(m.shape[1])[n >= 2]
    for name in ("exact", "k1", "k3"):
        x = result[name][:, pos]
        mean = x.sum(0) / n[pos]
        se = np.sqrt(((x - mean) ** 2 * m[:, pos]).sum(0) / (n[pos] - 1) / n[pos])
        axes[0].plot(pos, mean, "o-", ms=3, color=COLOURS[name], label=name)
        axes[0].fill_between(pos, mean - se, mean + se, color=COLOURS[name], alpha=0.2)
    finish_axes(axes[0], xlabel="completion position", ylabel="nats",
                title="KL(pi || pi_SFT) per token")
    seq_exact, seq_k1 = result["exact"].sum(1), result["k1"].sum(1)
    axes[1].scatter(seq_exact, seq_k1, s=8, color=COLOURS["k1"])
    lim = [min(seq_k1.min(), 0), max(seq_exact.max(), seq_k1.max())]
    axes[1].plot(lim, lim, "k--", lw=0.8, label="y = x")
    finish_axes(axes[1], xlabel="sum of exact per-token KL", ylabel="sum of k1 (log-ratio)",
                title="per completion")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return FigureResult(fig, {"sequence_exact": float(seq_exact.mean()),
                              "sequence_k1": float(seq_k1.mean()),
                              "sequence_k3": float(result["k3"].sum(1).mean()),
                              "length": float(m.sum(1).mean())})


# ----------------------------------------------------------------------------------------------
# Forgetting: SFT against on-policy RL on a second task


def forgetting_tasks():
    """``(old, new)``: the training questions of ``OLD_TOPICS`` (task 1) and of ``NEW_TOPICS``
    (task 2)."""
    questions = data.split_questions()[0]
    return ([q for q in questions if q.topic in OLD_TOPICS],
            [q for q in questions if q.topic in NEW_TOPICS])


def new_task_score(question, response: str) -> float:
    """Task 2's score (and RL reward): 1 if ``response`` opens with ``NEW_PREFIX``, else 0."""
    del question
    return float(response.strip().startswith(NEW_PREFIX))


def _sft_rows(questions, seed: int = 0):
    """Demonstrations of task 2: "The answer is {x}." to arithmetic questions."""
    rng = np.random.default_rng(seed)
    demos = [[{"role": "user", "content": q.prompt},
              {"role": "assistant", "content": f"{NEW_PREFIX} {q.answer}."}]
             for q in (questions[i] for i in rng.integers(len(questions), size=1000))]
    examples = ch04.sft_examples(demos, mask_prompt=True)
    return ch04.pad_examples(examples, max(len(tokens) for tokens, _ in examples))


def make_sft_train(model_config, lm_params, rows, steps: int = FORGET_STEPS,
                   batch_size: int = SFT_BATCH, learning_rate: float = FORGET_LR):
    """``train(key) -> params``: ``steps`` SFT steps (chapter 4's loss, prompt masked, Adam at
    a constant ``learning_rate`` with chapter 6's gradient clipping) on random rows, as one
    ``lax.scan``; pure, so ``jax.vmap`` runs seeds at once."""
    rows = jax.tree.map(jnp.asarray, rows)
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(learning_rate))

    def loss_fn(params, b):
        logits = gpt.forward(params, b.tokens, model_config)
        return ch04.sft_loss(logits, b.tokens, b.loss_mask)

    def step(carry, key):
        params, opt_state = carry
        idx = jax.random.randint(key, (batch_size,), 0, rows.tokens.shape[0])
        loss, grads = jax.value_and_grad(loss_fn)(params, jax.tree.map(lambda x: x[idx], rows))
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), loss

    def train(key):
        (params, _), losses = jax.lax.scan(step, (lm_params, optimizer.init(lm_params)),
                                           jax.random.split(key, steps))
        return params, losses

    return train


@functools.partial(jax.jit, static_argnames=("model_config",))
def _policy_kls(lm_params, ref_params, tokens, mask, model_config):
    """Exact sequence KL to ``ref_params`` along each policy's own samples: ``[policies, N]``."""
    ref = jax.vmap(lambda t: gpt.forward(ref_params, t, model_config))(tokens)
    logits = jax.vmap(lambda p, t: gpt.forward(p, t, model_config))(lm_params, tokens)
    kl = jax.vmap(lambda l, r, t, m: ch15.generation_kl(l, r, t, m).exact)
    return kl(logits, ref, tokens, mask)


def evaluate_policies(lm_params, questions, score=data.gold_reward, ref_params=None,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``score`` of one sampled answer (T = 1) to each of the first ``EVAL_QUESTIONS`` of
    ``questions`` (a fixed shuffle) per policy, and the exact sequence KL of each answer to
    ``ref_params`` (chapter 4's SFT model by default): two ``[policies, EVAL_QUESTIONS]``
    arrays. ``lm_params`` has a leading policy axis."""
    model_config = gpt.get_config(ch06_figures.PRETRAIN_MODEL)
    ref_params = ch06_figures.sft_policy() if ref_params is None else ref_params
    rng = np.random.default_rng(seed)
    chosen = [questions[i] for i in rng.permutation(len(questions))[:EVAL_QUESTIONS]]
    prompts = ch06.encode_prompts([q.prompt for q in chosen])
    S = jax.tree.leaves(lm_params)[0].shape[0]
    gen = ch06_figures._sample_seeds(lm_params, prompts.tokens, prompts.lengths,
                                     jax.random.split(jax.random.PRNGKey(seed + 1), S),
                                     model_config=model_config, max_new_tokens=EVAL_TOKENS)
    kls = _policy_kls(lm_params, ref_params, gen.tokens, gen.mask, model_config)
    tokens = np.asarray(gen.tokens).reshape(S * len(chosen), -1)
    texts = sampling.decode_masked(tokens, np.asarray(gen.mask).reshape(S * len(chosen), -1))
    scores = np.array([score(q, t) for q, t in zip(chosen * S, texts)]).reshape(S, len(chosen))
    return scores, np.asarray(kls)


@functools.lru_cache(maxsize=1)
def forgetting_runs() -> dict:
    """SFT and RL on task 2 from chapter 4's SFT model, ``FORGET_SEEDS`` seeds each, and the
    scores on both tasks before and after: ``{"old": {"start", "sft", "rl"}, "new": ...}``
    each ``[seeds]`` (the start evaluated with as many sampling seeds), the mean exact KL to
    the start along the answers the same way (``"old_kl"``, ``"new_kl"``), plus the SFT
    losses and the RL metrics."""
    model_config, _, _ = ch06_figures.rl_task()
    start = ch06_figures.sft_policy()
    old, new = forgetting_tasks()
    keys = jax.random.split(jax.random.PRNGKey(0), FORGET_SEEDS)
    sft_params, sft_losses = jax.jit(jax.vmap(make_sft_train(model_config, start, _sft_rows(new),
                                                             learning_rate=FORGET_LR)))(keys)
    prompts = ch06.encode_prompts([q.prompt for q in new])
    reward = ch06.text_reward(new_task_score, new)
    train = ch06.make_train(FORGET_RL_CONFIG, model_config, start, prompts, reward)
    state, rl_metrics = jax.jit(jax.vmap(train))(keys)
    starts = jax.tree.map(lambda x: jnp.broadcast_to(x, (FORGET_SEEDS, *x.shape)), start)
    out = {"sft_loss": np.asarray(sft_losses),
           "rl_score": np.asarray(rl_metrics["score"]), "rl_kl": np.asarray(rl_metrics["kl"])}
    for name, questions, score in (("old", old, data.gold_reward), ("new", new, new_task_score)):
        out[name], out[f"{name}_kl"] = {}, {}
        for run, p in (("start", starts), ("sft", sft_params), ("rl", state.params["lm"])):
            scores, kls = evaluate_policies(p, questions, score, start)
            out[name][run], out[f"{name}_kl"][run] = scores.mean(1), kls.mean(1)
    return out


@figure("ch15_forgetting", "ch15",
        "Forgetting (§15.2): from chapter 4's SFT model, 24 steps of 16 sequences on a new task "
        "(open the answer to an arithmetic question with 'The answer is') by SFT on "
        "demonstrations or by on-policy RL (GRPO on the format score, no KL term); 4 seeds "
        "each. Left: share of 64 sampled answers to arithmetic questions in the new format. "
        "Middle: gold reward of one sampled answer to each of 64 old-task questions (capital, "
        "animal, colour). Right: exact KL to the start model per answer, summed over tokens, on "
        "each task's answers. Mean +- standard error over seeds.")
def forgetting(runs: dict | None = None) -> FigureResult:
    runs = forgetting_runs() if runs is None else runs
    fig = Figure(figsize=(12, 3.4))
    axes = fig.subplots(1, 3)
    numbers = {}
    labels = ["start", "+ SFT", "+ RL"]
    for ax, task, title, ylabel in (
            (axes[0], "new", "new task (format on arithmetic)", "share 'The answer is ...'"),
            (axes[1], "old", "old task (capital, animal, colour)", "gold reward")):
        for i, run in enumerate(("start", "sft", "rl")):
            m, se = mean_se(runs[task][run])
            ax.bar(i, m, yerr=se, color=COLOURS[run], capsize=4)
            numbers[f"{task}_{run}"] = {"mean": float(m), "se": float(se)}
        ax.set_xticks(range(3), labels)
        finish_axes(ax, ylabel=ylabel, title=title)
    for j, task in enumerate(("new", "old")):
        for i, run in enumerate(("sft", "rl")):
            m, se = mean_se(runs[f"{task}_kl"][run])
            axes[2].bar(3 * j + i, m, yerr=se, color=COLOURS[run], capsize=4)
            numbers[f"{task}_kl_{run}"] = {"mean": float(m), "se": float(se)}
    axes[2].set_xticks([0, 1, 3, 4], ["SFT\nnew", "RL\nnew", "SFT\nold", "RL\nold"])
    finish_axes(axes[2], ylabel="KL to start per answer (nats)", title="distance moved")
    fig.tight_layout()
    return FigureResult(fig, numbers)
