"""Chapter 8's experiments: what the notebook runs, with its settings as named constants.

Three kinds:

* **Worked examples** of the book's formulas, computed with the library's functions: a worked
  pair under every loss of the family, the losses and the pushes ``-dL/dh`` against the margin
  ``h`` (eqs. 79, 81, 108; §8.2).
* **Small optimisations** that test the derivation of §8.1.2 on a finite response set (each one
  ``lax.scan``, compiled once): gradient ascent on ``J(pi)`` (eq. 82) ending on ``pi*`` (eq.
  95), the population DPO loss (eq. 105) minimised back to ``pi*``, DPO on pairs that leave a
  response out (coverage), the KL that DPO, cDPO and IPO reach on a certain preference (beta is
  a coefficient, not a KL), and preference displacement on a log-linear policy (§8.2, Figure 27)
  with its NLL fix.
* **DPO on the synthetic world** from chapter 4's SFT model of the small GPT: offline on the
  simulated annotators' pairs with and without the NLL term (:func:`offline_runs`), online DPO
  beside GRPO on chapter 6's sampling budget (:func:`online_runs`), and what the policies then
  answer (:func:`evaluate_runs`). The starting policy is an argument (``sft_params``): a chapter
  does not know where its models are cached; the notebook and the figures pass
  ``rlhf_book.textbook.substrate.sft_small()``.

Change a constant below (say ``OFFLINE_CONFIG``'s ``beta`` or ``N_SEEDS``) and rerun the
notebook to see its effect.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlhf_book import data
from rlhf_book.ch06_policy_gradients import experiments as ch06_experiments
from rlhf_book.ch08_direct_alignment import loop, losses
from rlhf_book.lm import rollout

# ----------------------------------------------------------------------------------------------
# Settings

# A worked pair, h = (pc - pr) - (rc - rr) = 2 at beta 0.1: loss -log sigmoid(0.2) = 0.598139.
WORKED_PAIR = (-10.0, -12.0, -11.0, -11.0)
WORKED_BETA = 0.1
LOSS_BETAS = (0.05, 0.1, 0.5, 1.0)
FAMILY_EPS = 0.1  # cDPO's and robust DPO's flip rate
SIMPO_BETA, SIMPO_GAMMA = 2.0, 1.0  # SimPO at the paper's scale

# Three responses of one prompt: the reference, the rewards, and the betas of the table.
TOY_REF = (0.5, 0.3, 0.2)
TOY_REWARDS = (1.0, 0.0, 2.0)
TOY_BETAS = (0.25, 0.5, 1.0, 2.0, 10.0)
N_RANDOM_POLICIES = 2000

# One certain preference (p* = 1) between two responses of four, pi_ref uniform, tabular
# policy, Adam (plain gradient descent either crawls, DPO's gradient decaying like
# exp(-beta h), or oscillates, IPO's curvature 2 per logit).
KL_LOSSES = ("dpo", "cdpo", "ipo")
KL_BETAS = (0.05, 0.1, 0.5)
KL_STEPS = 2000
KL_LR = 0.02

# Preference displacement: M = 50 responses with d = 8 features, one pair (0 chosen, 1
# rejected), beta = 0.1, gradient descent at lr 0.05 for 3000 steps; DPO alone and DPO + NLL
# (alpha = 1), and a tabular policy.
DISPLACEMENT_M, DISPLACEMENT_D = 50, 8
DISPLACEMENT_BETA, DISPLACEMENT_LR, DISPLACEMENT_STEPS = 0.1, 0.05, 3000

# DPO on the synthetic world, from chapter 4's SFT model. Offline: the pipeline's kind of
# annotated pairs on the training questions (3 annotators, noise 0.5, majority label, the
# documented biases: verbosity, confidence, position; 3 in 4 pairs right-vs-wrong in one style),
# DPO at beta 0.1 with and without the chosen completions' NLL (RPO, alpha = 1), N_SEEDS seeds
# vmapped; the implicit reward is tested on pairs about the rephrased questions. Online: best
# vs worst of G = 4 samples of the current policy, ranked by the gold reward, with chapter 6's
# RL budget (12 steps of 4 training questions x 4 completions, at most 32 new tokens, learning
# rate 3e-4), beside GRPO on the same budget and reward. Every policy then answers chapter 6's
# evaluation questions (rephrased, and unseen facts as a second row).
N_PAIRS = 600
N_HELDOUT_PAIRS = 128
N_SEEDS = 4
PAIR_BIAS = data.AnnotatorBias()
CORRECTNESS_FRACTION = 0.75
N_ANNOTATORS = 3
OFFLINE_CONFIG = loop.DPOConfig(steps=40, batch_size=8, learning_rate=3e-4, beta=0.1,
                                log_every=40)
OFFLINE_RUNS = {"dpo": 0.0, "dpo+nll": 1.0}  # name -> nll_coef
RL_CONFIG = ch06_experiments.RL_CONFIG  # GRPO, 12 steps of 4 x 4, 32 new tokens, lr 3e-4
ONLINE_CONFIG = loop.DPOConfig(on_policy=True, steps=RL_CONFIG.steps,
                               batch_size=RL_CONFIG.prompts_per_step,
                               completions_per_prompt=RL_CONFIG.group_size,
                               max_new_tokens=RL_CONFIG.max_new_tokens,
                               learning_rate=RL_CONFIG.learning_rate, beta=0.1,
                               log_every=RL_CONFIG.steps)


# Chapter 6's summary of a metric over seeds (first and last steps, the change, its standard
# error), used for the world runs here as there.
first_last = ch06_experiments.first_last


def _one(x) -> jax.Array:
    return jnp.asarray([x], jnp.float32)


# ----------------------------------------------------------------------------------------------
# The losses against the margin h


def loss_weight_curves(h, betas=LOSS_BETAS) -> dict[float, dict[str, np.ndarray]]:
    """DPO's per-pair loss (eq. 79) and gradient weight (eq. 108) for margins ``h`` (the
    reference log-probs 0), for each ``beta``: ``{beta: {"loss", "weight"}}``."""
    hs = jnp.asarray(h, jnp.float32)
    zeros = jnp.zeros_like(hs)
    return {beta: {"loss": np.asarray(losses.dpo_loss(hs, zeros, zeros, zeros, beta)),
                   "weight": np.asarray(losses.dpo_gradient_weight(hs, zeros, zeros, zeros,
                                                                   beta))}
            for beta in betas}


def loss_curves(h, beta: float = WORKED_BETA, eps: float = FAMILY_EPS) -> dict[str, np.ndarray]:
    """Each loss of the family for one pair with margin ``h = (pc - pr) - (rc - rr)`` (the
    reference log-probs 0), and ``-dL/dh``, how hard it pushes ``h`` up, by ``jax.grad`` of
    the library's functions. SimPO reads ``h`` as its difference of average log-probs."""
    h = jnp.asarray(h, jnp.float32)
    zero = jnp.zeros((1,))
    family = {
        "dpo": lambda x: losses.dpo_loss(x[None], zero, zero, zero, beta)[0],
        "cdpo": lambda x: losses.dpo_loss(x[None], zero, zero, zero, beta,
                                          label_smoothing=eps)[0],
        "robust": lambda x: losses.robust_dpo_loss(x[None], zero, zero, zero, beta, eps)[0],
        "ipo": lambda x: losses.ipo_loss(x[None], zero, zero, zero, beta)[0],
        "hinge": lambda x: losses.hinge_loss(x[None], zero, zero, zero, beta)[0],
        "simpo": lambda x: losses.simpo_loss(x[None], zero, beta,
                                             SIMPO_GAMMA * beta / SIMPO_BETA)[0],
    }
    out = {"h": np.asarray(h)}
    for name, f in family.items():
        out[name] = np.asarray(jax.vmap(f)(h))
        out[f"{name}_push"] = -np.asarray(jax.vmap(jax.grad(f))(h))
    return out


def worked_pair_losses(beta: float = WORKED_BETA, eps: float = FAMILY_EPS) -> dict[str, float]:
    """The worked pair (h = 2) under every loss, and DPO's gradient weight."""
    pc, pr, rc, rr = (_one(v) for v in WORKED_PAIR)
    return {"h": float(losses.dpo_logits(pc, pr, rc, rr)[0]),
            "dpo": float(losses.dpo_loss(pc, pr, rc, rr, beta)[0]),
            "weight": float(losses.dpo_gradient_weight(pc, pr, rc, rr, beta)[0]),
            "cdpo": float(losses.dpo_loss(pc, pr, rc, rr, beta, label_smoothing=eps)[0]),
            "robust": float(losses.robust_dpo_loss(pc, pr, rc, rr, beta, eps)[0]),
            "ipo": float(losses.ipo_loss(pc, pr, rc, rr, beta)[0]),
            "hinge": float(losses.hinge_loss(pc, pr, rc, rr, beta)[0])}


# ----------------------------------------------------------------------------------------------
# The derivation on a finite response set (§8.1.2)


def toy_table(betas=TOY_BETAS, ref=TOY_REF, rewards=TOY_REWARDS) -> dict[float, dict]:
    """For each ``beta``: ``pi*`` (eq. 95), ``Z`` (eq. 87), ``KL(pi* || pi_ref)``,
    ``E_pi*[r]`` and ``J(pi*)`` (eq. 82), all from the library."""
    ref, rewards = jnp.asarray(ref, jnp.float32), jnp.asarray(rewards, jnp.float32)
    out = {}
    for beta in betas:
        star = losses.optimal_policy(ref, rewards, beta)
        log_z = float(losses.log_partition(ref, rewards, beta))
        kl = float(jnp.sum(star * (jnp.log(star) - jnp.log(ref))))
        out[beta] = {"pi": np.asarray(star, np.float64), "Z": float(np.exp(min(log_z, 700.0))),
                     "log_Z": log_z,
                     "kl": kl, "reward": float(jnp.sum(star * rewards)),
                     "J": float(losses.regularized_objective(star, ref, rewards, beta))}
    return out


def random_policy_objectives(beta: float = 1.0, n: int = N_RANDOM_POLICIES, seed: int = 0,
                             ref=TOY_REF, rewards=TOY_REWARDS) -> tuple[np.ndarray, np.ndarray]:
    """``(policies [n, K], J [n])``: ``n`` policies drawn uniformly from the simplex and the
    objective ``J(pi)`` (eq. 82) of each, by :func:`~.losses.regularized_objective`."""
    pis = np.random.default_rng(seed).dirichlet(np.ones(len(ref)), n)
    J = jax.vmap(lambda p: losses.regularized_objective(
        p, jnp.asarray(ref, jnp.float32), jnp.asarray(rewards, jnp.float32), beta))(
            jnp.asarray(pis, jnp.float32))
    return pis, np.asarray(J, np.float64)


@functools.partial(jax.jit, static_argnames=("steps",))
def _ascend_objective(ref, rewards, beta, steps: int, lr):
    opt = optax.adam(lr)

    def step(carry, _):
        logits, state = carry
        g = jax.grad(lambda l: -losses.regularized_objective(jax.nn.softmax(l), ref, rewards,
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
        loss, g = jax.value_and_grad(losses.population_dpo_loss)(logits, ref, rewards, beta)
        updates, state = opt.update(g, state)
        return (optax.apply_updates(logits, updates), state), loss

    logits = jnp.log(ref)
    (logits, _), history = jax.lax.scan(step, (logits, opt.init(logits)), None, length=steps)
    return jax.nn.softmax(logits), history


def fit_population_dpo(beta: float, ref=TOY_REF, rewards=TOY_REWARDS, steps: int = 3000,
                       lr: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Minimise the population DPO loss (every pair, Bradley-Terry labels of the true reward,
    :func:`~.losses.population_dpo_loss`) by Adam on a tabular policy's logits, from
    ``pi_ref``. No reward model and no sampling: only log-probabilities. Returns ``(pi [K],
    loss per step)``."""
    pi, history = _fit_population(jnp.asarray(ref, jnp.float32),
                                  jnp.asarray(rewards, jnp.float32), beta, steps, lr)
    return np.asarray(pi, np.float64), np.asarray(history, np.float64)


@functools.partial(jax.jit, static_argnames=("steps",))
def _fit_pairs(logits, ref, rewards, pairs, beta, steps: int, lr):
    opt = optax.adam(lr)
    first, second = pairs[:, 0], pairs[:, 1]
    p = jax.nn.sigmoid(rewards[first] - rewards[second])  # Bradley-Terry (eq. 96)

    def loss(logits):
        logp = jax.nn.log_softmax(logits)
        one = lambda i, j, eps: losses.dpo_loss(  # noqa: E731
            logp[i][None], logp[j][None], jnp.log(ref[i])[None], jnp.log(ref[j])[None], beta,
            label_smoothing=eps)[0]
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
    Bradley-Terry probability ``p = sigmoid(r_i - r_j)`` (soft labels: :func:`~.losses.dpo_loss`
    with ``label_smoothing = 1 - p``); Adam on a tabular policy's logits from ``init_logits``
    (default ``log pi_ref``). Returns ``(pi [K], the final gradient [K])``: a response that no
    pair mentions never gets a gradient (the coverage failure)."""
    ref = jnp.asarray(ref, jnp.float32)
    logits = jnp.log(ref) if init_logits is None else jnp.asarray(init_logits, jnp.float32)
    logits, grad = _fit_pairs(logits, ref, jnp.asarray(rewards, jnp.float32),
                              jnp.asarray(pairs, jnp.int32), beta, steps, lr)
    return np.asarray(jax.nn.softmax(logits), np.float64), np.asarray(grad, np.float64)


# ----------------------------------------------------------------------------------------------
# The KL DPO reaches on a certain preference


@functools.partial(jax.jit, static_argnames=("loss", "steps"))
def _certain_pair_run(beta, loss: str, steps: int, lr):
    ref_logp = jnp.log(jnp.full(4, 0.25))
    opt = optax.adam(lr)

    def objective(logits):
        logp = jax.nn.log_softmax(logits)
        args = (logp[0][None], logp[1][None], ref_logp[0][None], ref_logp[1][None])
        if loss == "ipo":
            return losses.ipo_loss(*args, beta)[0]
        eps = FAMILY_EPS if loss == "cdpo" else 0.0
        return losses.dpo_loss(*args, beta, label_smoothing=eps)[0]

    def step(carry, _):
        logits, state = carry
        updates, state = opt.update(jax.grad(objective)(logits), state)
        logits = optax.apply_updates(logits, updates)
        logp = jax.nn.log_softmax(logits)
        kl = jnp.sum(jnp.exp(logp) * (logp - ref_logp))
        return (logits, state), (kl, (logp[0] - logp[1]) - (ref_logp[0] - ref_logp[1]))

    _, (kl, h) = jax.lax.scan(step, (ref_logp, opt.init(ref_logp)), None, length=steps)
    return kl, h


def certain_preference_runs(betas=KL_BETAS, loss_names=KL_LOSSES, steps: int = KL_STEPS,
                            lr: float = KL_LR) -> dict[str, dict[float, dict]]:
    """Four responses, ``pi_ref`` uniform, one pair whose label is certain (response 0 always
    beats response 1), a tabular policy trained by Adam with DPO, cDPO (eps = 0.1) and IPO.
    Returns ``{loss: {beta: {"kl", "h"} per step}}``. On four responses the KL cannot pass
    ``log 4`` (all mass on one response): DPO heads there at every ``beta``."""
    out = {}
    for loss in loss_names:
        out[loss] = {}
        for beta in betas:
            kl, h = _certain_pair_run(jnp.float32(beta), loss, steps, jnp.float32(lr))
            out[loss][beta] = {"kl": np.asarray(kl), "h": np.asarray(h)}
    return out


# ----------------------------------------------------------------------------------------------
# Preference displacement (§8.2, Figure 27)


def displacement_features(m: int = DISPLACEMENT_M, d: int = DISPLACEMENT_D) -> np.ndarray:
    """The features ``phi [M, d]``: ``default_rng(0).standard_normal((M, d))``, then the
    rejected response's ``phi[1] = 0.9 phi[0] + sqrt(0.19) N(0, I)`` (cosine 0.73 with the
    chosen ``phi[0]``)."""
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
        dpo = losses.dpo_loss(logp[0][None], logp[1][None], ref[0][None], ref[1][None], beta)[0]
        return dpo - alpha * logp[0]  # + alpha * NLL of the chosen response

    def step(theta, _):
        theta = theta - lr * jax.grad(loss)(theta)
        logp = logp_of(theta)
        return theta, (logp[0], logp[1], 1.0 - jnp.exp(logp[0]) - jnp.exp(logp[1]))

    _, (chosen, rejected, unseen) = jax.lax.scan(step, theta0, None, length=steps)
    return chosen, rejected, unseen


def displacement_runs(steps: int = DISPLACEMENT_STEPS) -> dict[str, dict[str, np.ndarray]]:
    """One preference pair, three policies, plain gradient descent: ``"dpo"`` and
    ``"dpo+nll"`` (alpha = 1) on the log-linear policy ``pi(y) ∝ exp(theta . phi(y))`` over 50
    responses, and ``"tabular"`` (one logit per response) with DPO alone. Each: ``log
    pi(y_c)``, ``log pi(y_r)``, their ``margin`` (= ``h``: the reference is uniform) and the
    ``unseen`` mass on the 48 other responses, after every step."""
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
    """``(train_pairs, heldout_pairs)``: the biased annotators' pairs (:data:`PAIR_BIAS`,
    :data:`CORRECTNESS_FRACTION` of them right-vs-wrong) on the training questions (data seed 0)
    and on the rephrased questions (data seed 1), as the pipeline draws them."""
    splits = data.question_splits()
    kw = dict(n_annotators=N_ANNOTATORS, bias=PAIR_BIAS,
              correctness_fraction=CORRECTNESS_FRACTION)
    return (data.preference_pairs(seed=0, n=N_PAIRS, questions=splits.train, **kw),
            data.preference_pairs(seed=1, n=N_HELDOUT_PAIRS, questions=splits.rephrased, **kw))


def _seed_params(params, i: int):
    return jax.tree.map(lambda x: x[i], params)


def offline_runs(sft_params, n_seeds: int = N_SEEDS) -> dict[str, dict]:
    """``{name: metrics [seeds, steps]}`` of offline DPO on :func:`world_pairs`'s training
    pairs from ``sft_params``, once per entry of :data:`OFFLINE_RUNS` (the NLL coefficient).
    Each entry also holds ``"params"`` (the final policies, a leading seed axis). The reference
    log-probs of the pairs are computed once (book §8.3), and every (NLL coefficient, seed) run
    goes through one compiled ``vmap``: ``train``'s ``nll_coef`` is traced."""
    model_config = ch06_experiments.rl_task()[0]
    batch = loop.encode_preference_pairs(world_pairs()[0])
    train = loop.make_dpo_train(OFFLINE_CONFIG, model_config, sft_params, batch)
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


def online_runs(sft_params, n_seeds: int = N_SEEDS) -> dict[str, dict]:
    """``{"online dpo": metrics, "grpo": metrics}`` ``[seeds, steps]``: online DPO
    (:data:`ONLINE_CONFIG`) and GRPO (chapter 6's :data:`RL_CONFIG`) on the gold reward of the
    training questions, the same sampling budget, ``n_seeds`` seeds each; ``"params"`` holds
    the final policies. GRPO's sampled reward is ``"score"``, as online DPO's."""
    model_config, questions, prompts = ch06_experiments.rl_task()
    gold = rollout.text_reward(data.gold_reward, questions)
    keys = jax.random.split(jax.random.PRNGKey(0), n_seeds)
    runs = {}
    train = jax.jit(jax.vmap(loop.make_dpo_train(ONLINE_CONFIG, model_config, sft_params,
                                                 prompts=prompts, reward=gold)))
    state, metrics = train(keys)
    runs["online dpo"] = {**{k: np.asarray(v) for k, v in metrics.items()},
                          "params": state.params}
    metrics, state = ch06_experiments.run_seeds(RL_CONFIG, gold, sft_params, n_seeds)
    runs["grpo"] = {**metrics, "params": state.params["lm"]}
    return runs


def evaluate_runs(runs: dict, sft_params, heldout_pairs=None) -> dict[str, dict]:
    """What each run's final policies answer (chapter 6's measure,
    :func:`rlhf_book.ch06_policy_gradients.experiments.answer_breakdown`: 128 rephrased and 32
    unseen-fact questions, one sample per seed at temperature 1, 32 new tokens) and, for the DPO runs,
    the implicit reward's accuracy on ``heldout_pairs`` (the first seed's policy); the SFT
    model's answers (chapter 6's ``N_SEEDS`` samples per question) under ``"sft"``."""
    model_config = ch06_experiments.rl_task()[0]
    heldout_pairs = world_pairs()[1] if heldout_pairs is None else heldout_pairs
    ref_logps = loop.pair_log_probs(sft_params, loop.encode_preference_pairs(heldout_pairs),
                                    model_config)
    out = {"sft": {"answers": ch06_experiments.answer_breakdown(sft_params)}}
    for name, run in runs.items():
        entry = {"answers": ch06_experiments.answer_breakdown(run["params"])}
        if name != "grpo":
            beta = ONLINE_CONFIG.beta if name == "online dpo" else OFFLINE_CONFIG.beta
            entry["heldout"] = loop.implicit_reward_accuracy(
                _seed_params(run["params"], 0), sft_params, heldout_pairs, model_config, beta,
                ref_logps=ref_logps)
        out[name] = entry
    return out


def world_runs(sft_params) -> dict[str, dict]:
    """Every world run of the notebook (:func:`offline_runs`, :func:`online_runs`) from
    ``sft_params``, and its evaluation (:func:`evaluate_runs`) under ``"eval"``."""
    runs = {**offline_runs(sft_params), **online_runs(sft_params)}
    runs["eval"] = evaluate_runs(runs, sft_params)
    return runs
