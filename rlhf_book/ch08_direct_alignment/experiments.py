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
  simulated annotators' pairs (:func:`offline_runs`) and online on pairs of the policy's own
  samples ranked by the gold reward (:func:`online_runs`), each with and without the NLL term, on
  one budget; and what the policies then answer to the rephrased questions, paired by question
  with the SFT model (:func:`evaluate_runs`). The starting policy is an argument (``sft_params``): a chapter
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
from rlhf_book.ch08_direct_alignment import loop, losses
from rlhf_book.lm import eval as eval_lib
from rlhf_book.lm.eval import first_last  # noqa: F401 -- the notebook's experiments.first_last
from rlhf_book.lm import gpt, rollout

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

# DPO on the synthetic world, from chapter 4's SFT model (the small GPT), offline against
# online (book §8.5) on one budget: WORLD_STEPS steps of PAIRS_PER_STEP pairs, Adam at
# WORLD_LR, beta 0.1, with and without the chosen completions' NLL (RPO, coefficient 1), N_SEEDS
# seeds; each kind's (NLL coefficient, seed) runs go through one compiled vmap.
# * Offline: the pipeline's kind of annotated pairs on the training questions (3 annotators,
#   noise 0.5, majority label, the documented biases: verbosity, confidence, position; 3 in 4
#   pairs right-vs-wrong in one style). The implicit reward is tested on pairs about the
#   rephrased questions.
# * Online: per step PAIRS_PER_STEP training questions, ONLINE_G samples of each from the current
#   policy (at most MAX_NEW_TOKENS new tokens), best vs worst by the gold reward.
# Measured (shared 2-core CPU, 2 seeds, 520 rephrased questions, paired by question): online
# DPO + NLL at 1e-4 for 32 steps raised the gold reward by +0.125 +- 0.024; without the NLL
# +0.03 +- 0.02; at 2e-4 +0.08 (with NLL) and -0.01 (without), the answers degrading into
# fragments; 16 steps of 8 x 8 at 1e-4 +0.06 +- 0.024; chapter 6's old budget (12 steps of 4 x 4
# at 3e-4) lowered it by 0.08. Offline DPO lowered it at every rate tried (3e-5: -0.02,
# 1e-4: -0.08, 3e-4: -0.12 +- 0.02, with or without the NLL, beta 0.1 or 0.5).
N_PAIRS = 600
N_HELDOUT_PAIRS = 128
N_SEEDS = 4
PAIR_BIAS = data.AnnotatorBias()
CORRECTNESS_FRACTION = 0.75
N_ANNOTATORS = 3
WORLD_STEPS = 32
PAIRS_PER_STEP = 8
WORLD_LR = 1e-4
WORLD_BETA = 0.1
ONLINE_G = 8
MAX_NEW_TOKENS = 32
OFFLINE_CONFIG = loop.DPOConfig(steps=WORLD_STEPS, batch_size=PAIRS_PER_STEP,
                                learning_rate=WORLD_LR, beta=WORLD_BETA, log_every=WORLD_STEPS)
ONLINE_CONFIG = loop.DPOConfig(on_policy=True, steps=WORLD_STEPS, batch_size=PAIRS_PER_STEP,
                               completions_per_prompt=ONLINE_G, max_new_tokens=MAX_NEW_TOKENS,
                               learning_rate=WORLD_LR, beta=WORLD_BETA, log_every=WORLD_STEPS)
NLL_COEFS = {"": 0.0, "+nll": 1.0}  # suffix of the run's name -> nll_coef
OFFLINE_RUNS = {f"dpo{k}": v for k, v in NLL_COEFS.items()}  # "dpo", "dpo+nll"
ONLINE_RUNS = {f"online dpo{k}": v for k, v in NLL_COEFS.items()}  # "online dpo", "online dpo+nll"
# The evaluation: every rephrased fact question (520: the training facts in the 8 phrasings no
# training data contains; the main evaluation) and N_EVAL_UNSEEN questions about held-out facts
# (a second row), one answer per seed at temperature 1 (the SFT model: N_SEEDS answers), at most
# MAX_NEW_TOKENS new tokens; differences to the SFT model are paired by question.
N_EVAL_UNSEEN = 64
EVAL_SEED = 0


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


def world_task():
    """``(model_config, questions, prompts)``: the small GPT (``gpt.get_config("small")``), the
    training questions (``data.question_splits().train``: training facts in the trained
    phrasings) and their chat-template prompts, the online runs' prompt set."""
    questions = data.question_splits().train
    return (gpt.get_config("small"), questions,
            rollout.encode_prompts([q.prompt for q in questions]))


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


def _vmapped_runs(train, names: dict[str, float], n_seeds: int) -> dict[str, dict]:
    """Every (NLL coefficient, seed) run of ``train`` in one compiled ``vmap`` (``nll_coef``
    traced; the same seeds, so the same batches, for every coefficient)."""
    keys = jnp.tile(jax.random.split(jax.random.PRNGKey(0), n_seeds), (len(names), 1))
    coefs = jnp.repeat(jnp.asarray(list(names.values()), jnp.float32), n_seeds)
    state, metrics = jax.jit(jax.vmap(train))(keys, None, None, coefs)
    runs = {}
    for i, name in enumerate(names):
        part = slice(i * n_seeds, (i + 1) * n_seeds)
        runs[name] = {**{k: np.asarray(v)[part] for k, v in metrics.items()},
                      "params": jax.tree.map(lambda x: x[part], state.params)}
    return runs


def offline_runs(sft_params, n_seeds: int = N_SEEDS) -> dict[str, dict]:
    """``{name: metrics [seeds, steps]}`` of offline DPO (:data:`OFFLINE_CONFIG`) on
    :func:`world_pairs`'s training pairs from ``sft_params``, once per entry of
    :data:`OFFLINE_RUNS` (the NLL coefficient); ``"params"`` holds the final policies (a leading
    seed axis). The reference log-probs of the pairs are computed once (book §8.3)."""
    model_config = world_task()[0]
    batch = loop.encode_preference_pairs(world_pairs()[0])
    train = loop.make_dpo_train(OFFLINE_CONFIG, model_config, sft_params, batch)
    return _vmapped_runs(train, OFFLINE_RUNS, n_seeds)


def online_runs(sft_params, n_seeds: int = N_SEEDS) -> dict[str, dict]:
    """``{name: metrics [seeds, steps]}`` of online DPO (:data:`ONLINE_CONFIG`: pairs of the
    current policy's own samples on the training questions, best vs worst by the gold reward)
    from ``sft_params``, once per entry of :data:`ONLINE_RUNS`; ``"params"`` as in
    :func:`offline_runs`. ``"score"`` is the gold reward of the sampled completions."""
    model_config, questions, prompts = world_task()
    gold = rollout.text_reward(data.gold_reward, questions)
    train = loop.make_dpo_train(ONLINE_CONFIG, model_config, sft_params, prompts=prompts,
                                reward=gold)
    return _vmapped_runs(train, ONLINE_RUNS, n_seeds)


def eval_questions(seed: int = EVAL_SEED) -> dict[str, list]:
    """``{"rephrased": [...], "unseen": [...]}``: every rephrased question about a training fact
    (``data.question_splits().rephrased``, the four fact topics: 520) and :data:`N_EVAL_UNSEEN`
    questions about held-out facts, drawn without replacement with ``seed``."""
    splits = data.question_splits()
    unseen = data.fact_questions(splits.unseen)
    pick = np.random.default_rng(seed).choice(len(unseen), N_EVAL_UNSEEN, replace=False)
    return {"rephrased": data.fact_questions(splits.rephrased),
            "unseen": [unseen[i] for i in pick]}


def answers(params, questions, seed: int = 1, n_seeds: int = N_SEEDS) -> dict[str, np.ndarray]:
    """What a policy answers: :func:`rlhf_book.lm.eval.answer_samples` at temperature 1, at most
    :data:`MAX_NEW_TOKENS` new tokens. ``params`` with a leading seed axis (a vmapped run's
    final policies) answer once per seed; without one (the SFT model) ``n_seeds`` times. Returns
    arrays ``[Q, samples]`` (``gold``, ``right``, ``wrong``, ``none``, ``bytes``, ``texts``,
    ...), one column per seed."""
    model_config = world_task()[0]
    kw = dict(temperature=1.0, max_new_tokens=MAX_NEW_TOKENS)
    if params["tok_emb"].ndim == 2:  # [V, D]: one model
        return eval_lib.answer_samples(params, questions, model_config,
                                       jax.random.PRNGKey(seed), samples=n_seeds, **kw)
    S = jax.tree.leaves(params)[0].shape[0]
    cols = [eval_lib.answer_samples(_seed_params(params, i), questions, model_config,
                                    jax.random.PRNGKey(seed + 1 + i), samples=1, **kw)
            for i in range(S)]
    return {k: np.concatenate([c[k] for c in cols], axis=1) for k in cols[0]}


def summarize(a: dict, base: dict | None = None) -> dict[str, float]:
    """The shares of right, wrong and no answers, the mean gold reward and answer bytes of
    :func:`answers`'s arrays ``a``, with standard errors over questions (each question's mean
    over its samples is one observation); with ``base`` (the SFT model's answers to the same
    questions) the change of each, paired by question: ``d_gold`` and ``d_gold_se``,
    ``d_right``, ... ."""
    out = {}
    for k in ("gold", "right", "wrong", "none", "bytes"):
        per_q = np.asarray(a[k], np.float64).mean(axis=1)
        out[k] = float(per_q.mean())
        out[f"{k}_se"] = float(per_q.std(ddof=1) / np.sqrt(len(per_q)))
        if base is not None:
            d = per_q - np.asarray(base[k], np.float64).mean(axis=1)
            out[f"d_{k}"] = float(d.mean())
            out[f"d_{k}_se"] = float(d.std(ddof=1) / np.sqrt(len(d)))
    out["samples"] = int(np.size(a["gold"]))
    return out


def gain_sources(a: dict, base: dict) -> dict[str, float]:
    """Where a change of the mean gold reward comes from, from :func:`answers`'s arrays of a
    policy ``a`` and of the SFT model ``base``: with ``s_k`` the share of answers of kind ``k``
    (right, wrong, none) and ``g_k`` their mean gold reward, exactly
    ``gold' - gold = sum_k (s'_k - s_k) g_k + sum_k s'_k (g'_k - g_k)``: ``"kinds"``, the part
    from answering right / wrong / not at all in other proportions (valued at the SFT model's
    mean reward of each kind), and ``"style"``, the part from better or worse answers within
    each kind (length, hedging). Also ``"gold_<kind>"`` and ``"sft_gold_<kind>"``, the ``g_k``."""
    out = {"kinds": 0.0, "style": 0.0}
    for k in eval_lib.ANSWER_KINDS:
        new, old = np.asarray(a[k], bool), np.asarray(base[k], bool)
        g_new = float(np.asarray(a["gold"])[new].mean()) if new.any() else 0.0
        g_old = float(np.asarray(base["gold"])[old].mean()) if old.any() else 0.0
        out["kinds"] += (new.mean() - old.mean()) * g_old
        out["style"] += new.mean() * (g_new - g_old)
        out[f"gold_{k}"], out[f"sft_gold_{k}"] = g_new, g_old
    out["kinds"], out["style"] = float(out["kinds"]), float(out["style"])
    return out


def evaluate_runs(runs: dict, sft_params, heldout_pairs=None) -> dict[str, dict]:
    """What the SFT model (``"sft"``) and each run's final policies answer to
    :func:`eval_questions` (:func:`answers`: ``"rephrased"`` and ``"unseen"``, the arrays, and
    their :func:`summarize`, paired with the SFT model's, under ``"summary"``), and each run's
    implicit reward accuracy on ``heldout_pairs`` (the first seed's policy) under
    ``"heldout"``."""
    model_config = world_task()[0]
    heldout_pairs = world_pairs()[1] if heldout_pairs is None else heldout_pairs
    ref_logps = loop.pair_log_probs(sft_params, loop.encode_preference_pairs(heldout_pairs),
                                    model_config)
    sets = eval_questions()
    out = {"sft": {rows: answers(sft_params, qs) for rows, qs in sets.items()}}
    out["sft"]["summary"] = {rows: summarize(out["sft"][rows]) for rows in sets}
    for name, run in runs.items():
        if name == "eval":
            continue
        entry = {rows: answers(run["params"], qs) for rows, qs in sets.items()}
        entry["summary"] = {rows: {**summarize(entry[rows], out["sft"][rows]),
                                   **gain_sources(entry[rows], out["sft"][rows])}
                            for rows in sets}
        entry["heldout"] = loop.implicit_reward_accuracy(
            _seed_params(run["params"], 0), sft_params, heldout_pairs, model_config,
            WORLD_BETA, ref_logps=ref_logps)
        out[name] = entry
    return out


def world_runs(sft_params) -> dict[str, dict]:
    """Every world run of the notebook (:func:`offline_runs`, :func:`online_runs`) from
    ``sft_params``, and its evaluation (:func:`evaluate_runs`) under ``"eval"``."""
    runs = {**offline_runs(sft_params), **online_runs(sft_params)}
    runs["eval"] = evaluate_runs(runs, sft_params)
    return runs
