"""Chapter 8 figures: DPO's loss and gradient weight against the margin (eqs. 79, 81, 108); the
family of §8.2 side by side (cDPO, robust DPO, IPO, SLiC's hinge, SimPO); the derivation on a
finite response set (the Gibbs-tilted optimum of eq. 95 over beta, ``J = beta log Z - beta KL``,
and the population DPO loss minimised back to ``pi*``); the KL that DPO, cDPO and IPO reach on
certain preferences (reference notes T8.4); preference displacement on a log-linear policy
(Figure 27, reference notes T8.2) and its NLL fix; and DPO on the synthetic world: offline on
the simulated annotators' pairs with and without the NLL term, online on pairs the policy
samples, next to GRPO with the same sampling budget.

``notebooks/ch08_direct_alignment.ipynb`` draws through these and passes its own results; with
no arguments (``rlhf-book figures ch08``) the figures recompute them (the world runs start from
chapter 4's SFT model of the small GPT, loaded from the substrate cache or trained).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.figure import Figure

from rlhf_book import ch06_policy_gradients as ch06
from rlhf_book import ch08_direct_alignment as ch08
from rlhf_book import data
from rlhf_book.textbook.figures import FigureResult, figure, finish_axes
from rlhf_book.textbook.figures import ch06_policy_gradients as ch06_figures
from rlhf_book.textbook.figures.ch04_instruction_tuning import sft_small
from rlhf_book.textbook.figures.ch06_policy_gradients import first_last, mean_se, rl_task

# Reference notes §8.7, exercise 1: the worked pair, h = (pc - pr) - (rc - rr) = 2 at beta 0.1.
WORKED_PAIR = (-10.0, -12.0, -11.0, -11.0)
WORKED_BETA = 0.1
LOSS_BETAS = (0.05, 0.1, 0.5, 1.0)
FAMILY_EPS = 0.1  # cDPO's and robust DPO's flip rate
SIMPO_BETA, SIMPO_GAMMA = 2.0, 1.0  # SimPO at the paper's scale (the rlhf-book code: 2.0, 0.5 * 2)

# Reference notes §8.1: the toy response set and the table's betas.
TOY_REF = (0.5, 0.3, 0.2)
TOY_REWARDS = (1.0, 0.0, 2.0)
TOY_BETAS = (0.25, 0.5, 1.0, 2.0, 10.0)

# Reference notes T8.4: one certain preference (p* = 1) between two responses of four, pi_ref
# uniform, tabular policy, Adam (plain gradient descent either crawls, DPO's gradient decaying
# like exp(-beta h), or oscillates, IPO's curvature 2 per logit).
KL_LOSSES = ("dpo", "cdpo", "ipo")
KL_BETAS = (0.05, 0.1, 0.5)
KL_STEPS = 2000
KL_LR = 0.02

# Reference notes T8.2: M = 50 responses with d = 8 features, one pair (0 chosen, 1 rejected),
# beta = 0.1, gradient descent at lr 0.05 for 3000 steps; DPO alone and DPO + NLL (alpha = 1).
DISPLACEMENT_M, DISPLACEMENT_D = 50, 8
DISPLACEMENT_BETA, DISPLACEMENT_LR, DISPLACEMENT_STEPS = 0.1, 0.05, 3000

# DPO on the synthetic world (notebook section 6). Offline: the simulated annotators' pairs on
# training facts (3 annotators, noise 0.5, majority label), DPO at beta 0.1 with and without
# the chosen completions' NLL (RPO, alpha = 1), N_SEEDS seeds vmapped; evaluated on pairs about
# held-out facts. Online: best vs worst of G = 4 samples of the current policy, labelled by the
# gold reward, with chapter 6's RL budget (12 steps of 4 training questions x 4 completions, at
# most 20 new tokens, learning rate 3e-4), beside GRPO on the same budget and reward.
N_PAIRS = 600
N_HELDOUT_PAIRS = 128
N_SEEDS = 4
OFFLINE_CONFIG = ch08.DPOConfig(steps=40, batch_size=8, learning_rate=3e-4, beta=0.1,
                                log_every=40)
OFFLINE_RUNS = {"dpo": 0.0, "dpo+nll": 1.0}  # name -> nll_coef
RL_CONFIG = ch06_figures.RL_CONFIG  # GRPO, 12 steps of 4 x 4, 20 new tokens, lr 3e-4, beta 0.02
ONLINE_CONFIG = ch08.DPOConfig(on_policy=True, steps=RL_CONFIG.steps,
                               batch_size=RL_CONFIG.prompts_per_step,
                               completions_per_prompt=RL_CONFIG.group_size,
                               max_new_tokens=RL_CONFIG.max_new_tokens,
                               learning_rate=RL_CONFIG.learning_rate, beta=0.1,
                               log_every=RL_CONFIG.steps)

COLOURS = {"dpo": "tab:blue", "cdpo": "tab:orange", "robust": "tab:brown", "ipo": "tab:green",
           "hinge": "tab:red", "simpo": "tab:purple", "dpo+nll": "tab:cyan",
           "online dpo": "tab:pink", "grpo": "tab:olive", "sft": "0.4", "tabular": "tab:gray"}


def smooth(x, window: int = 5) -> np.ndarray:
    """The running mean of the last ``window`` steps along the last axis (fewer at the start)."""
    x = np.asarray(x, np.float64)
    c = np.cumsum(x, axis=-1)
    out = c.copy()
    out[..., window:] = c[..., window:] - c[..., :-window]
    counts = np.minimum(np.arange(1, x.shape[-1] + 1), window)
    return out / counts


def _one(x) -> jax.Array:
    return jnp.asarray([x], jnp.float32)


# ----------------------------------------------------------------------------------------------
# The losses against the margin h


def loss_curves(h, beta: float = WORKED_BETA, eps: float = FAMILY_EPS) -> dict[str, np.ndarray]:
    """Each loss of the family for one pair with margin ``h = (pc - pr) - (rc - rr)`` (the
    reference log-probs 0), and ``-dL/dh``, how hard it pushes ``h`` up, by ``jax.grad`` of
    the library's functions. SimPO reads ``h`` as its difference of average log-probs."""
    h = jnp.asarray(h, jnp.float32)
    zero = jnp.zeros(())
    losses = {
        "dpo": lambda x: ch08.dpo_loss(x[None], zero[None], zero[None], zero[None], beta),
        "cdpo": lambda x: ch08.dpo_loss(x[None], zero[None], zero[None], zero[None], beta,
                                        label_smoothing=eps),
        "robust": lambda x: ch08.robust_dpo_loss(x[None], zero[None], zero[None], zero[None],
                                                 beta, eps),
        "ipo": lambda x: ch08.ipo_loss(x[None], zero[None], zero[None], zero[None], beta),
        "hinge": lambda x: ch08.hinge_loss(x[None], zero[None], zero[None], zero[None], beta),
        "simpo": lambda x: ch08.simpo_loss(x[None], zero[None], beta, SIMPO_GAMMA * beta
                                           / SIMPO_BETA),
    }
    out = {"h": np.asarray(h)}
    for name, f in losses.items():
        out[name] = np.asarray(jax.vmap(f)(h))
        out[f"{name}_push"] = -np.asarray(jax.vmap(jax.grad(f))(h))
    return out


def worked_pair_losses(beta: float = WORKED_BETA, eps: float = FAMILY_EPS) -> dict[str, float]:
    """The reference notes' pair (h = 2) under every loss, and DPO's gradient weight."""
    pc, pr, rc, rr = (_one(v) for v in WORKED_PAIR)
    return {"h": float(ch08.dpo_logits(pc, pr, rc, rr)[0]),
            "dpo": float(ch08.dpo_loss(pc, pr, rc, rr, beta)),
            "weight": float(ch08.dpo_gradient_weight(pc, pr, rc, rr, beta)[0]),
            "cdpo": float(ch08.dpo_loss(pc, pr, rc, rr, beta, label_smoothing=eps)),
            "robust": float(ch08.robust_dpo_loss(pc, pr, rc, rr, beta, eps)),
            "ipo": float(ch08.ipo_loss(pc, pr, rc, rr, beta)),
            "hinge": float(ch08.hinge_loss(pc, pr, rc, rr, beta))}


# ----------------------------------------------------------------------------------------------
# The derivation on a finite response set (§8.1.2)


def toy_table(betas=TOY_BETAS, ref=TOY_REF, rewards=TOY_REWARDS) -> dict[float, dict]:
    """The reference notes' table: for each ``beta``, ``pi*`` (eq. 95), ``Z`` (eq. 87),
    ``KL(pi* || pi_ref)``, ``E_pi*[r]`` and ``J(pi*)`` (eq. 82), all from the library."""
    ref, rewards = jnp.asarray(ref, jnp.float32), jnp.asarray(rewards, jnp.float32)
    out = {}
    for beta in betas:
        star = ch08.optimal_policy(ref, rewards, beta)
        log_z = float(ch08.log_partition(ref, rewards, beta))
        kl = float(jnp.sum(star * (jnp.log(star) - jnp.log(ref))))
        out[beta] = {"pi": np.asarray(star, np.float64), "Z": float(np.exp(min(log_z, 700.0))),
                     "log_Z": log_z,
                     "kl": kl, "reward": float(jnp.sum(star * rewards)),
                     "J": float(ch08.regularized_objective(star, ref, rewards, beta))}
    return out


@functools.partial(jax.jit, static_argnames=("steps",))
def _ascend_objective(ref, rewards, beta, steps: int, lr):
    opt = optax.adam(lr)

    def step(carry, _):
        logits, state = carry
        g = jax.grad(lambda l: -ch08.regularized_objective(jax.nn.softmax(l), ref, rewards,
                                                           beta))(logits)
        updates, state = opt.update(g, state)
        return (optax.apply_updates(logits, updates), state), None

    logits = jnp.log(ref)
    (logits, _), _ = jax.lax.scan(step, (logits, opt.init(logits)), None, length=steps)
    return jax.nn.softmax(logits)


def ascend_objective(beta: float, ref=TOY_REF, rewards=TOY_REWARDS, steps: int = 2000,
                     lr: float = 0.05) -> np.ndarray:
    """Maximise ``J(pi) = E_pi[r] - beta KL(pi || pi_ref)`` (eq. 82) by Adam on the logits of
    ``pi``, from ``pi_ref``: gradient ascent, no closed form. Returns the policy ``[K]``."""
    return np.asarray(_ascend_objective(jnp.asarray(ref, jnp.float32),
                                        jnp.asarray(rewards, jnp.float32), beta, steps, lr),
                      np.float64)


@functools.partial(jax.jit, static_argnames=("steps",))
def _fit_population(ref, rewards, beta, steps: int, lr):
    opt = optax.adam(lr)

    def step(carry, _):
        logits, state = carry
        loss, g = jax.value_and_grad(ch08.population_dpo_loss)(logits, ref, rewards, beta)
        updates, state = opt.update(g, state)
        return (optax.apply_updates(logits, updates), state), loss

    logits = jnp.log(ref)
    (logits, _), losses = jax.lax.scan(step, (logits, opt.init(logits)), None, length=steps)
    return jax.nn.softmax(logits), losses


def fit_population_dpo(beta: float, ref=TOY_REF, rewards=TOY_REWARDS, steps: int = 3000,
                       lr: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Minimise the population DPO loss (every pair, Bradley-Terry labels of the true reward;
    reference notes T8.1) by Adam on a tabular policy's logits, from ``pi_ref``. No reward
    model and no sampling: only log-probabilities. Returns ``(pi [K], loss per step)``."""
    pi, losses = _fit_population(jnp.asarray(ref, jnp.float32),
                                 jnp.asarray(rewards, jnp.float32), beta, steps, lr)
    return np.asarray(pi, np.float64), np.asarray(losses, np.float64)


@functools.partial(jax.jit, static_argnames=("steps",))
def _fit_pairs(logits, ref, rewards, pairs, beta, steps: int, lr):
    opt = optax.adam(lr)
    first, second = pairs[:, 0], pairs[:, 1]
    p = jax.nn.sigmoid(rewards[first] - rewards[second])  # Bradley-Terry (eq. 96)

    def loss(logits):
        logp = jax.nn.log_softmax(logits)
        one = lambda i, j, eps: ch08.dpo_loss(logp[i][None], logp[j][None],  # noqa: E731
                                              jnp.log(ref[i])[None], jnp.log(ref[j])[None],
                                              beta, label_smoothing=eps)
        # the soft label p is cDPO with eps = 1 - p, for pairs ordered so that p >= 1/2
        return jnp.mean(jax.vmap(one)(first, second, 1.0 - p))

    def step(carry, _):
        logits, state = carry
        g = jax.grad(loss)(logits)
        updates, state = opt.update(g, state)
        return (optax.apply_updates(logits, updates), state), None

    (logits, _), _ = jax.lax.scan(step, (logits, opt.init(logits)), None, length=steps)
    return logits, jax.grad(loss)(logits)


def fit_dpo_on_pairs(pairs, beta: float, ref, rewards, init_logits=None, steps: int = 3000,
                     lr: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """DPO on the given pairs only, ``(i, j)`` with ``r_i >= r_j``, each labelled by the
    Bradley-Terry probability ``p = sigmoid(r_i - r_j)`` (soft labels: :func:`dpo_loss` with
    ``label_smoothing = 1 - p``); Adam on a tabular policy's logits from ``init_logits``
    (default ``log pi_ref``). Returns ``(pi [K], the final gradient [K])``: a response that
    no pair mentions never gets a gradient (reference notes T8.1, the coverage failure)."""
    ref = jnp.asarray(ref, jnp.float32)
    logits = jnp.log(ref) if init_logits is None else jnp.asarray(init_logits, jnp.float32)
    logits, grad = _fit_pairs(logits, ref, jnp.asarray(rewards, jnp.float32),
                              jnp.asarray(pairs, jnp.int32), beta, steps, lr)
    return np.asarray(jax.nn.softmax(logits), np.float64), np.asarray(grad, np.float64)


# ----------------------------------------------------------------------------------------------
# T8.4: the KL DPO reaches on a certain preference


@functools.partial(jax.jit, static_argnames=("loss", "steps"))
def _certain_pair_run(beta, loss: str, steps: int, lr):
    ref_logp = jnp.log(jnp.full(4, 0.25))
    opt = optax.adam(lr)

    def objective(logits):
        logp = jax.nn.log_softmax(logits)
        args = (logp[0][None], logp[1][None], ref_logp[0][None], ref_logp[1][None])
        if loss == "ipo":
            return ch08.ipo_loss(*args, beta)
        return ch08.dpo_loss(*args, beta, label_smoothing=FAMILY_EPS if loss == "cdpo" else 0.0)

    def step(carry, _):
        logits, state = carry
        updates, state = opt.update(jax.grad(objective)(logits), state)
        logits = optax.apply_updates(logits, updates)
        logp = jax.nn.log_softmax(logits)
        kl = jnp.sum(jnp.exp(logp) * (logp - ref_logp))
        return (logits, state), (kl, (logp[0] - logp[1]) - (ref_logp[0] - ref_logp[1]))

    _, (kl, h) = jax.lax.scan(step, (ref_logp, opt.init(ref_logp)), None, length=steps)
    return kl, h


def certain_preference_runs(betas=KL_BETAS, losses=KL_LOSSES, steps: int = KL_STEPS,
                            lr: float = KL_LR) -> dict[str, dict[float, dict]]:
    """Reference notes T8.4: four responses, ``pi_ref`` uniform, one pair whose label is
    certain (response 0 always beats response 1), a tabular policy trained by Adam with DPO,
    cDPO (eps = 0.1) and IPO. Returns ``{loss: {beta: {"kl", "h"} per step}}``. On four
    responses the KL cannot pass ``log 4`` (all mass on one response): DPO heads there at
    every ``beta``."""
    out = {}
    for loss in losses:
        out[loss] = {}
        for beta in betas:
            kl, h = _certain_pair_run(jnp.float32(beta), loss, steps, jnp.float32(lr))
            out[loss][beta] = {"kl": np.asarray(kl), "h": np.asarray(h)}
    return out


# ----------------------------------------------------------------------------------------------
# Figure 27: preference displacement (reference notes T8.2)


def displacement_features(m: int = DISPLACEMENT_M, d: int = DISPLACEMENT_D) -> np.ndarray:
    """The reference notes' features ``phi [M, d]``: ``default_rng(0).standard_normal((M, d))``,
    then the rejected response's ``phi[1] = 0.9 phi[0] + sqrt(0.19) N(0, I)`` (cosine 0.73 with
    the chosen ``phi[0]``)."""
    rng = np.random.default_rng(0)
    phi = rng.standard_normal((m, d))
    phi[1] = 0.9 * phi[0] + np.sqrt(0.19) * rng.standard_normal(d)
    return phi.astype(np.float32)


@functools.partial(jax.jit, static_argnames=("steps", "tabular"))
def _displacement(phi, alpha, beta, lr, steps: int, tabular: bool):
    def logp_of(theta):
        return jax.nn.log_softmax(theta if tabular else phi @ theta)

    theta0 = jnp.zeros(phi.shape[0] if tabular else phi.shape[1])
    ref = logp_of(theta0)

    def loss(theta):
        logp = logp_of(theta)
        dpo = ch08.dpo_loss(logp[0][None], logp[1][None], ref[0][None], ref[1][None], beta)
        return dpo - alpha * logp[0]  # + alpha * NLL of the chosen response

    def step(theta, _):
        theta = theta - lr * jax.grad(loss)(theta)
        logp = logp_of(theta)
        return theta, (logp[0], logp[1], 1.0 - jnp.exp(logp[0]) - jnp.exp(logp[1]))

    _, (chosen, rejected, unseen) = jax.lax.scan(step, theta0, None, length=steps)
    return chosen, rejected, unseen


def displacement_runs(steps: int = DISPLACEMENT_STEPS) -> dict[str, dict[str, np.ndarray]]:
    """One preference pair, three policies, plain gradient descent (reference notes T8.2):
    ``"dpo"`` and ``"dpo+nll"`` (alpha = 1) on the log-linear policy ``pi(y) ∝ exp(theta .
    phi(y))`` over 50 responses, and ``"tabular"`` (one logit per response) with DPO alone.
    Each: ``log pi(y_c)``, ``log pi(y_r)``, their ``margin`` (= ``h``: the reference is
    uniform) and the ``unseen`` mass on the 48 other responses, after every step."""
    phi = jnp.asarray(displacement_features())
    out = {}
    for name, alpha, tabular in (("dpo", 0.0, False), ("dpo+nll", 1.0, False),
                                 ("tabular", 0.0, True)):
        c, r, u = _displacement(phi, jnp.float32(alpha), jnp.float32(DISPLACEMENT_BETA),
                                jnp.float32(DISPLACEMENT_LR), steps, tabular)
        c, r = np.asarray(c), np.asarray(r)
        out[name] = {"chosen": c, "rejected": r, "margin": c - r, "unseen": np.asarray(u)}
    return out


# ----------------------------------------------------------------------------------------------
# DPO on the synthetic world


def world_pairs():
    """``(train_pairs, heldout_pairs)``: the annotators' pairs on training facts (seed 0) and
    on held-out facts (seed 1)."""
    heldout_questions = data.split_questions()[1]
    return (data.preference_pairs(seed=0, n=N_PAIRS),
            data.preference_pairs(seed=1, n=N_HELDOUT_PAIRS, questions=heldout_questions))


def _seed_params(params, i: int):
    return jax.tree.map(lambda x: x[i], params)


def offline_runs(sft_params=None, n_seeds: int = N_SEEDS) -> dict[str, dict]:
    """``{name: metrics [seeds, steps]}`` of offline DPO on :func:`world_pairs`'s training
    pairs from ``sft_params`` (default chapter 4's SFT model), once per entry of
    :data:`OFFLINE_RUNS` (the NLL coefficient). Each entry also holds ``"params"`` (the final
    policies, a leading seed axis). The reference log-probs of the pairs are computed once
    (book L2796), and every (NLL coefficient, seed) run goes through one compiled ``vmap``:
    ``train``'s ``nll_coef`` is traced."""
    model_config = rl_task()[0]
    sft_params = sft_small() if sft_params is None else sft_params
    batch = ch08.encode_preference_pairs(world_pairs()[0])
    train = ch08.make_dpo_train(OFFLINE_CONFIG, model_config, sft_params, batch)
    names = list(OFFLINE_RUNS)
    keys = jnp.tile(jax.random.split(jax.random.PRNGKey(0), n_seeds), (len(names), 1))
    coefs = jnp.repeat(jnp.asarray([OFFLINE_RUNS[n] for n in names], jnp.float32), n_seeds)
    state, metrics = jax.jit(jax.vmap(train))(keys, None, None, coefs)
    runs = {}
    for i, name in enumerate(names):
        part = slice(i * n_seeds, (i + 1) * n_seeds)
        runs[name] = {**{k: np.asarray(v)[part] for k, v in metrics.items()},
                      "params": jax.tree.map(lambda x: x[part], state.params)}
    return runs


def online_runs(sft_params=None, n_seeds: int = N_SEEDS) -> dict[str, dict]:
    """``{"online dpo": metrics, "grpo": metrics}`` ``[seeds, steps]``: online DPO
    (:data:`ONLINE_CONFIG`) and GRPO (chapter 6's :data:`RL_CONFIG`) on the gold reward of the
    training questions, the same sampling budget, ``n_seeds`` seeds each; ``"params"`` holds
    the final policies. GRPO's sampled reward is ``"score"``, as online DPO's."""
    model_config, questions, prompts = rl_task()
    sft_params = sft_small() if sft_params is None else sft_params
    gold = ch06.text_reward(data.gold_reward, questions)
    keys = jax.random.split(jax.random.PRNGKey(0), n_seeds)
    runs = {}
    train = jax.jit(jax.vmap(ch08.make_dpo_train(ONLINE_CONFIG, model_config, sft_params,
                                                 prompts=prompts, reward=gold)))
    state, metrics = train(keys)
    runs["online dpo"] = {**{k: np.asarray(v) for k, v in metrics.items()},
                          "params": state.params}
    train = jax.jit(jax.vmap(ch06.make_train(RL_CONFIG, model_config, sft_params, prompts,
                                             gold)))
    state, metrics = train(keys)
    runs["grpo"] = {**{k: np.asarray(v) for k, v in metrics.items()},
                    "params": state.params["lm"]}
    return runs


def evaluate_runs(runs: dict, sft_params, heldout_pairs=None) -> dict[str, dict]:
    """What each run's final policies answer (chapter 6's measure,
    :func:`~rlhf_book.textbook.figures.ch06_policy_gradients.answer_breakdown`: 32 training
    questions, one sample per seed at temperature 1, 20 new tokens) and, for the DPO runs,
    the implicit reward's accuracy on ``heldout_pairs`` (seed 0's policy); the SFT model's
    answers (as many samples per question as a run has seeds) under ``"sft"``."""
    model_config = rl_task()[0]
    heldout_pairs = world_pairs()[1] if heldout_pairs is None else heldout_pairs
    ref_logps = ch08.pair_log_probs(sft_params, ch08.encode_preference_pairs(heldout_pairs),
                                    model_config)
    n_seeds = len(jax.tree.leaves(next(iter(runs.values()))["params"])[0])
    out = {"sft": {"answers": ch06_figures.answer_breakdown(sft_params, n_seeds=n_seeds)}}
    for name, run in runs.items():
        entry = {"answers": ch06_figures.answer_breakdown(run["params"])}
        if name != "grpo":
            beta = ONLINE_CONFIG.beta if name == "online dpo" else OFFLINE_CONFIG.beta
            entry["heldout"] = ch08.implicit_reward_accuracy(
                _seed_params(run["params"], 0), sft_params, heldout_pairs, model_config, beta,
                ref_logps=ref_logps)
        out[name] = entry
    return out


@functools.lru_cache(maxsize=1)
def world_runs() -> dict[str, dict]:
    """Every world run of the notebook (:func:`offline_runs`, :func:`online_runs`) and its
    evaluation (:func:`evaluate_runs`) under ``"eval"``, from chapter 4's SFT model."""
    sft_params = sft_small()
    runs = {**offline_runs(sft_params), **online_runs(sft_params)}
    runs["eval"] = evaluate_runs(runs, sft_params)
    return runs


# ----------------------------------------------------------------------------------------------
# Figures


@figure("ch08_dpo_loss", "ch08",
        "DPO's loss -log sigmoid(beta h) (eq. 79, left) and the weight sigmoid(-beta h) its "
        "gradient gives each pair (eqs. 81, 108, right) against the margin h = log pi(y_c) / "
        "pi_ref(y_c) - log pi(y_r) / pi_ref(y_r), for four beta. At h = 0 (policy = reference) "
        "every loss is log 2 and every weight 1/2; the dot is the reference notes' worked pair "
        "(h = 2, beta = 0.1: loss 0.598139, weight 0.450166). A pair ranked the wrong way "
        "round (h < 0) weighs up to 1, one ranked right by a wide margin almost 0.")
def dpo_loss_weight(betas=LOSS_BETAS) -> FigureResult:
    h = np.linspace(-60.0, 60.0, 481)
    zeros = jnp.zeros(len(h), jnp.float32)
    hs = jnp.asarray(h, jnp.float32)
    fig = Figure(figsize=(10.5, 3.6))
    left, right = fig.subplots(1, 2)
    numbers = {}
    for beta, colour in zip(betas, ("tab:cyan", "tab:blue", "tab:purple", "tab:red")):
        per_pair = jax.vmap(lambda x, b=beta: ch08.dpo_loss(x[None], zeros[:1], zeros[:1],
                                                             zeros[:1], b))(hs)
        weight = ch08.dpo_gradient_weight(hs, zeros, zeros, zeros, beta)
        left.plot(h, per_pair, color=colour, label=f"beta = {beta:g}")
        right.plot(h, weight, color=colour, label=f"beta = {beta:g}")
        numbers[f"beta={beta:g}"] = {"loss_at_0": float(per_pair[240]),
                                     "weight_at_0": float(weight[240])}
    worked = worked_pair_losses()
    left.plot(worked["h"], worked["dpo"], "o", color="k", ms=5)
    left.annotate(f"h = 2, beta = 0.1: {worked['dpo']:.6f}", (worked["h"], worked["dpo"]),
                  xytext=(8, 8), textcoords="offset points", fontsize=7)
    right.plot(worked["h"], worked["weight"], "o", color="k", ms=5)
    right.annotate(f"w = {worked['weight']:.6f}", (worked["h"], worked["weight"]), xytext=(8, 6),
                   textcoords="offset points", fontsize=7)
    for ax in (left, right):
        ax.axvline(0, color="0.5", lw=0.6)
    finish_axes(left, xlabel="margin h", ylabel="-log sigmoid(beta h)", ylim=(0, 4),
                title="the DPO loss (eq. 79)")
    finish_axes(right, xlabel="margin h", ylabel="sigmoid(-beta h)", ylim=(0, 1.02),
                title="the gradient weight w (eq. 108)")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.tight_layout()
    numbers["worked_pair"] = worked
    return FigureResult(fig, numbers)


@figure("ch08_loss_family", "ch08",
        "The family of §8.2 on one pair against the margin h at beta = 0.1 (SimPO: h is its "
        "difference of average log-probs, beta = 0.1 and gamma = 0.05 to share the axis). "
        "Left: the losses; right: -dL/dh, how hard each pushes the margin up. DPO and robust "
        "DPO push at every h (towards h = infinity on a certain preference); cDPO (eps = 0.1) "
        "stops at h* = log(9) / beta = 22; IPO pulls h to 1 / (2 beta) = 5 from both sides "
        "(its squared loss and push dwarf the others': both axes turn logarithmic past 1 and 0.01); SLiC's hinge stops at beta h = 1; SimPO "
        "pushes until its margin clears gamma. Dots: the reference notes' worked pair h = 2.")
def loss_family(beta: float = WORKED_BETA, eps: float = FAMILY_EPS) -> FigureResult:
    c = loss_curves(np.linspace(-30.0, 60.0, 721), beta, eps)
    worked = worked_pair_losses(beta, eps)
    labels = {"dpo": "DPO (eq. 79)", "cdpo": f"cDPO (eps = {eps:g})",
              "robust": f"robust DPO (eps = {eps:g})", "ipo": "IPO (h - 1/(2 beta))^2",
              "hinge": "SLiC hinge relu(1 - beta h)", "simpo": "SimPO (margin gamma)"}
    fig = Figure(figsize=(11, 3.8))
    left, right = fig.subplots(1, 2)
    for name, label in labels.items():
        left.plot(c["h"], c[name], color=COLOURS[name], label=label)
        right.plot(c["h"], c[f"{name}_push"], color=COLOURS[name], label=label)
        if name in worked:
            left.plot(worked["h"], worked[name], "o", color=COLOURS[name], ms=4)
    h_cdpo = float(np.log((1 - eps) / eps) / beta)
    for ax in (left, right):
        ax.axvline(0, color="0.5", lw=0.6)
        ax.axvline(h_cdpo, color=COLOURS["cdpo"], lw=0.8, ls=":")
        ax.axvline(1 / (2 * beta), color=COLOURS["ipo"], lw=0.8, ls=":")
    right.axhline(0, color="k", lw=0.6)
    left.set_yscale("symlog", linthresh=1.0)
    right.set_yscale("symlog", linthresh=0.01)
    finish_axes(left, xlabel="margin h", ylabel="loss (linear to 1, then log)", ylim=(0, 2000),
                title=f"losses at beta = {beta:g}")
    finish_axes(right, xlabel="margin h", ylabel="-dL/dh (linear to +-0.01, then log)",
                ylim=(-100, 100), title="push on the margin (0: the loss is satisfied)")
    left.legend(fontsize=7)
    fig.tight_layout()
    numbers = {"worked_pair": worked, "cdpo_optimum": h_cdpo, "ipo_optimum": 1 / (2 * beta),
               "hinge_zero_at": 1 / beta}
    return FigureResult(fig, numbers)


@figure("ch08_derivation", "ch08",
        "The derivation on the reference notes' three responses (pi_ref = [0.5, 0.3, 0.2], "
        "r = [1, 0, 2]). Left: the optimal policy pi* = pi_ref exp(r / beta) / Z (eq. 95) for "
        "each beta, from pi_ref (beta -> infinity) to all mass on the best response "
        "(beta -> 0). Middle: 2,000 random policies at beta = 1: J(pi) = E[r] - beta KL(pi || "
        "pi_ref) equals beta log Z - beta KL(pi || pi*) (eq. 94), so nothing beats pi* (star). "
        "Right: the policy that minimises the population DPO loss (Adam on a tabular policy, "
        "only log-probabilities) against pi* (eqs. 96-105).")
def derivation(betas=TOY_BETAS) -> FigureResult:
    table = toy_table(betas)
    fig = Figure(figsize=(12, 3.7))
    left, middle, right = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.1, 1, 1]})
    labels = ["pi_ref"] + [f"{b:g}" for b in betas]
    stacks = np.array([TOY_REF] + [table[b]["pi"] for b in betas])
    bottom = np.zeros(len(labels))
    for k, colour in enumerate(("tab:blue", "tab:orange", "tab:green")):
        left.bar(labels, stacks[:, k], bottom=bottom, color=colour,
                 label=f"y{k + 1} (r = {TOY_REWARDS[k]:g})")
        bottom += stacks[:, k]
    finish_axes(left, xlabel="beta", ylabel="probability", title="pi* = pi_ref exp(r / beta) / Z")
    left.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)

    beta = 1.0
    rng = np.random.default_rng(0)
    pis = rng.dirichlet(np.ones(3), 2000)
    ref, rewards = np.array(TOY_REF), np.array(TOY_REWARDS)
    star = table[beta]["pi"].astype(np.float64)
    J_all = np.asarray(jax.vmap(lambda p: ch08.regularized_objective(
        p, jnp.asarray(ref, jnp.float32), jnp.asarray(rewards, jnp.float32), beta))(
            jnp.asarray(pis, jnp.float32)), np.float64)
    J_numpy = pis @ rewards - beta * np.sum(pis * np.log(pis / ref), axis=1)
    kl_star = np.sum(pis * np.log(pis / star), axis=1)
    middle.scatter(kl_star, J_all, s=3, alpha=0.4, color="tab:blue", label="random pi")
    grid = np.linspace(0, kl_star.max(), 50)
    middle.plot(grid, beta * table[beta]["log_Z"] - beta * grid, color="k", lw=1,
                label="beta log Z - beta KL(pi || pi*)")
    middle.plot(0, table[beta]["J"], "*", color="tab:red", ms=12, label="pi*")
    finish_axes(middle, xlabel="KL(pi || pi*)", ylabel="J(pi)", title=f"J(pi) at beta = {beta:g}")
    middle.legend(fontsize=7)

    learned = {b: fit_population_dpo(b)[0] for b in betas}
    for b, marker in zip(betas, "osD^v"):
        right.plot(table[b]["pi"], learned[b], marker, ls="none", ms=6, label=f"beta = {b:g}")
    right.plot([0, 1], [0, 1], color="0.5", lw=0.8)
    finish_axes(right, xlabel="pi* (eq. 95)", ylabel="pi minimising the population DPO loss",
                title="DPO recovers pi*")
    right.legend(fontsize=7)
    fig.tight_layout()
    jax_vs_numpy = float(np.max(np.abs(J_all - J_numpy)))
    numbers = {f"beta={b:g}": {"pi": table[b]["pi"].tolist(), "Z": table[b]["Z"],
                               "kl": table[b]["kl"], "reward": table[b]["reward"],
                               "J": table[b]["J"], "dpo_pi": learned[b].tolist(),
                               "dpo_max_error": float(np.max(np.abs(learned[b]
                                                                    - table[b]["pi"])))}
               for b in betas}
    numbers["random_policies_best_J"] = float(J_all.max())
    numbers["max_J_identity_error"] = float(np.max(np.abs(
        J_numpy - (beta * table[beta]["log_Z"] - beta * kl_star))))
    numbers["regularized_objective_vs_numpy"] = jax_vs_numpy
    return FigureResult(fig, numbers)


@figure("ch08_achieved_kl", "ch08",
        "beta is a coefficient, not the KL DPO reaches (reference notes T8.4; erratum on "
        "L2614/L2795): one pair whose label is certain, four responses, pi_ref uniform, a "
        "tabular policy trained by gradient descent. DPO's margin h and KL(pi || pi_ref) keep "
        "growing at every beta; cDPO (eps = 0.1) stops at h* = log(9) / beta and IPO at "
        "h = 1 / (2 beta), each with a finite KL that beta sets.")
def achieved_kl(runs: dict | None = None) -> FigureResult:
    runs = certain_preference_runs() if runs is None else runs
    fig = Figure(figsize=(10.5, 3.6))
    left, right = fig.subplots(1, 2)
    styles = dict(zip(KL_BETAS, ("-", "--", ":")))
    numbers = {}
    for loss, by_beta in runs.items():
        numbers[loss] = {}
        for beta, run in by_beta.items():
            steps = np.arange(1, len(run["kl"]) + 1)
            label = f"{loss}, beta = {beta:g}"
            left.plot(steps, run["h"], color=COLOURS[loss], ls=styles.get(beta, "-"), label=label)
            right.plot(steps, run["kl"], color=COLOURS[loss], ls=styles.get(beta, "-"),
                       label=label)
            numbers[loss][f"beta={beta:g}"] = {
                "h_at_100": float(run["h"][99]), "h_last": float(run["h"][-1]),
                "kl_at_100": float(run["kl"][99]), "kl_last": float(run["kl"][-1])}
    finish_axes(left, xlabel="gradient step", ylabel="margin h", xscale="log", yscale="log",
                title="the margin on a certain preference")
    finish_axes(right, xlabel="gradient step", ylabel="KL(pi || pi_ref) (nats)", xscale="log",
                title="the KL reached")
    right.legend(fontsize=6.5, ncol=3, loc="upper left")
    fig.tight_layout()
    return FigureResult(fig, numbers)


@figure("ch08_displacement", "ch08",
        "Preference displacement (Figure 27; reference notes T8.2): one pair, a log-linear "
        "policy over 50 responses with 8 features, the rejected response's features at "
        "cosine 0.73 to the chosen one's, beta = 0.1, gradient descent. With DPO alone both "
        "log-probabilities fall, the rejected one faster, so the margin grows while almost all "
        "mass leaves for responses no pair mentions. The NLL term on the chosen response "
        "(alpha = 1) keeps it likely; a tabular policy (one logit per response) cannot "
        "displace: its chosen log-probability rises.")
def displacement(runs: dict | None = None) -> FigureResult:
    runs = displacement_runs() if runs is None else runs
    fig = Figure(figsize=(13, 3.6))
    axes = fig.subplots(1, 3)
    labels = {"dpo": "DPO, log-linear", "dpo+nll": "DPO + NLL, log-linear",
              "tabular": "DPO, tabular"}
    numbers = {}
    for name, run in runs.items():
        steps = np.arange(1, len(run["chosen"]) + 1)
        colour = COLOURS[name]
        axes[0].plot(steps, run["chosen"], color=colour, label=f"{labels[name]}: log pi(y_c)")
        axes[0].plot(steps, run["rejected"], color=colour, ls="--",
                     label=f"{labels[name]}: log pi(y_r)")
        axes[1].plot(steps, run["margin"], color=colour, label=labels[name])
        axes[2].plot(steps, run["unseen"], color=colour, label=labels[name])
        numbers[name] = {f"step={s}": {"chosen": float(run["chosen"][s - 1]),
                                       "rejected": float(run["rejected"][s - 1]),
                                       "margin": float(run["margin"][s - 1]),
                                       "unseen": float(run["unseen"][s - 1])}
                         for s in (1000, len(steps))}
    axes[0].axhline(-np.log(DISPLACEMENT_M), color="0.5", lw=0.6)
    finish_axes(axes[0], xlabel="step", ylabel="log-probability", ylim=(-26, 0.5),
                title="chosen (solid) and rejected (dashed)")
    finish_axes(axes[1], xlabel="step", ylabel="log pi(y_c) - log pi(y_r)", title="the margin h")
    finish_axes(axes[2], xlabel="step", ylabel="probability", ylim=(-0.02, 1.02),
                title="mass on the 48 responses no pair mentions")
    axes[0].legend(fontsize=6, loc="lower left")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    return FigureResult(fig, numbers)


@figure("ch08_dpo_world", "ch08",
        "DPO on the synthetic world, from chapter 4's SFT model of the small GPT (4 seeds, mean "
        "+- standard error; curves averaged over 5 steps). Left: the batch's implicit-reward "
        "accuracy during offline DPO on "
        "the annotators' pairs (beta = 0.1), with and without the chosen completions' NLL. "
        "Middle: the chosen and rejected sequence log-probabilities of those batches: without "
        "the NLL both fall (displacement), with it the chosen one rises. Right: what the "
        "final policies answer to 32 training questions at temperature 1 (right, wrong, no "
        "answer; gold reward above the bars): the SFT model, offline DPO, DPO + NLL, online "
        "DPO (best vs worst of 4 samples, gold-labelled) and GRPO on the same budget.")
def dpo_world(runs: dict | None = None) -> FigureResult:
    """``runs``: :func:`world_runs`'s dict (the offline and online runs' metrics and an
    ``"eval"`` entry from :func:`evaluate_runs`); by default computed."""
    runs = world_runs() if runs is None else runs
    fig = Figure(figsize=(14, 3.8))
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 1.2]})
    numbers = {}
    for name in OFFLINE_RUNS:
        m = runs[name]
        steps = np.arange(1, m["loss"].shape[1] + 1)
        colour = COLOURS[name]
        mean, se = mean_se(smooth(m["rewards/accuracies"]))
        axes[0].plot(steps, mean, color=colour, label=name)
        axes[0].fill_between(steps, mean - se, mean + se, color=colour, alpha=0.2, lw=0)
        for key, ls in (("logps/chosen", "-"), ("logps/rejected", "--")):
            mean, se = mean_se(smooth(m[key]))
            axes[1].plot(steps, mean, color=colour, ls=ls,
                         label=f"{name}: {key.split('/')[1]}")
            axes[1].fill_between(steps, mean - se, mean + se, color=colour, alpha=0.15, lw=0)
        numbers[name] = {"accuracy": first_last(m["rewards/accuracies"], 5),
                         "logps/chosen": first_last(m["logps/chosen"], 5),
                         "logps/rejected": first_last(m["logps/rejected"], 5),
                         "loss": first_last(m["loss/preference"], 5)}
    finish_axes(axes[0], xlabel="step", ylabel="fraction of pairs (mean of 5 steps)", ylim=(0, 1),
                title="implicit reward ranks the batch's pairs right")
    axes[0].legend(fontsize=7)
    finish_axes(axes[1], xlabel="step", ylabel="sequence log-prob (nats, mean of 5 steps)",
                title="log pi(y_c) (solid), log pi(y_r) (dashed)")
    axes[1].legend(fontsize=6.5)
    ev = runs["eval"]
    names = [n for n in ("sft", *OFFLINE_RUNS, "online dpo", "grpo") if n in ev]
    kinds = (("right", "tab:green"), ("wrong", "tab:red"), ("none", "0.7"))
    bottom = np.zeros(len(names))
    for kind, colour in kinds:
        values = np.array([ev[n]["answers"][kind] for n in names])
        axes[2].bar(names, values, bottom=bottom, color=colour, label=kind)
        bottom += values
    for k, n in enumerate(names):
        axes[2].text(k, 1.01, f"{ev[n]['answers']['gold']:+.2f}", ha="center", fontsize=7)
    finish_axes(axes[2], ylabel="fraction of answers", ylim=(0, 1.1),
                title="final answers (gold reward above)")
    axes[2].tick_params(axis="x", labelsize=7)
    axes[2].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    for n in names:
        numbers.setdefault(n, {})["answers"] = ev[n]["answers"]
        if "heldout" in ev[n]:
            numbers[n]["heldout"] = {k: ev[n]["heldout"][k]
                                     for k in ("accuracy", "gold_accuracy", "margin",
                                               "logps/chosen", "logps/rejected")}
    for n in ("online dpo", "grpo"):
        if n in runs and "score" in runs[n]:
            numbers.setdefault(n, {})["score"] = first_last(runs[n]["score"])
    return FigureResult(fig, numbers)
