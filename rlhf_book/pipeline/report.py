"""What ``rlhf-book pipeline`` measures and prints: samples, evaluations on held-out questions,
the results tables and the training curves.

Greedy answers to held-out questions are scored as chapter 4 scores them
(``ch04.evaluate_answers``); the sampled KL to the SFT model comes from
:func:`rlhf_book.lm.eval.evaluate_policy`. Plots are matplotlib ``Figure`` objects (no pyplot),
finished with the figure registry's :func:`~rlhf_book.textbook.figures.finish_axes`.
"""

from __future__ import annotations

import pathlib
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from rlhf_book import ch04_instruction_tuning as ch04
from rlhf_book import ch05_reward_models as ch05
from rlhf_book import ch09_rejection_sampling as ch09
from rlhf_book import data
from rlhf_book.lm import gpt, sampling, tokenizer
from rlhf_book.lm.eval import evaluate_policy, score_answers
from rlhf_book.lm.rollout import encode_prompts
from rlhf_book.pipeline.stages import PipelineConfig, StageResult, eval_max_new_tokens
from rlhf_book.textbook.figures import finish_axes

Log = Callable[[str], None]

# The prompts the pipeline shows samples for: a fact the corpus states, a Q/A, an arithmetic line.
PRETRAIN_SAMPLE_PROMPTS = (
    "The capital of France is",
    "Q: What sound does a cow make?\nA:",
    "3 + 4 =",
)


# ---------------------------------------------------------------------------------------------
# Evaluations


def sample_texts(params, model_config: gpt.GPTConfig, prompts, *, seed=0, max_new_tokens=40,
                 temperature=0.0, eos_id=tokenizer.EOT) -> list[str]:
    """Continue plain-text ``prompts`` (each starts a document with ``<|bos|>``)."""
    ids = [[tokenizer.BOS, *tokenizer.encode(p)] for p in prompts]
    width = max(map(len, ids))
    max_new_tokens = min(max_new_tokens, model_config.max_seq_len - width)
    tokens, lengths = tokenizer.pad_batch(ids, width)
    gen = sampling.generate(params, tokens, jax.random.PRNGKey(seed), model_config,
                            prompt_lengths=lengths, max_new_tokens=max_new_tokens,
                            temperature=temperature, eos_id=eos_id)
    return sampling.completions(gen)


def evaluate_model(params, model_config: gpt.GPTConfig, questions) -> tuple[dict, list[str]]:
    """Greedy answers to ``questions`` through the chat template, scored (ch. 4 evaluation)."""
    answers, stopped = ch04.generate_answers(params, model_config, questions, max_new_tokens=64)
    return ch04.evaluate_answers(questions, answers, stopped), answers


_reward_scores = jax.jit(ch05.reward_scores, static_argnums=(3, 4))


def policy_report(params, sft_params, rm_params, model_config: gpt.GPTConfig, questions, *,
                  pooling: str = "last", seed: int = 0) -> dict:
    """A policy on ``questions`` (held out): greedy answers scored by the gold reward
    (``ch04.evaluate_answers``) and by the reward model (reading exactly the generated tokens,
    as in RL), their length, and the sampled KL to the SFT model
    (:func:`rlhf_book.lm.eval.evaluate_policy`, 4 samples per question at temperature 1)."""
    prompts = encode_prompts([q.prompt for q in questions])
    max_new = eval_max_new_tokens(model_config, prompts)
    gen = sampling.generate(params, prompts.tokens, jax.random.PRNGKey(seed), model_config,
                            prompt_lengths=prompts.lengths, max_new_tokens=max_new,
                            temperature=0.0)
    answers = sampling.completions(gen)
    metrics = ch04.evaluate_answers(questions, answers, np.asarray(gen.stopped).tolist())
    real = (gen.tokens != tokenizer.PAD).astype(jnp.int32)  # prompt + answer, as in RL
    rm = np.asarray(_reward_scores(rm_params, gen.tokens, real, model_config, pooling))
    kl = evaluate_policy(params, questions, model_config, jax.random.PRNGKey(seed),
                         ref_params=sft_params, samples=4, temperature=1.0,
                         max_new_tokens=max_new)
    return {**metrics, "rm_score": float(rm.mean()), "kl_to_sft": kl["kl"],
            "kl_to_sft_se": kl["kl_se"], "sampled_length": kl["length"], "answers": answers}


def best_of_n_report(bon: ch09.BestOfN, questions) -> dict:
    """Best-of-``n`` (:func:`rlhf_book.pipeline.stages.best_of_n_stage`) on ``questions``,
    measured like a policy: the gold reward, accuracy and length of the reward model's picks;
    the KL to the SFT model is the analytic bound ``log n - (n - 1)/n`` (``ch09.best_of_n_kl``:
    exact for continuous rewards, an upper bound with ties). ``single_*`` are the scores of
    one sample (all ``n`` averaged): what best-of-``n`` improves on."""
    B, n, T = bon.all_tokens.shape
    answers = sampling.decode_masked(bon.tokens, bon.mask)
    chosen_stopped = np.asarray(bon.stopped)[np.arange(B), np.asarray(bon.choice)]
    metrics = ch04.evaluate_answers(questions, answers, chosen_stopped.tolist())
    every = sampling.decode_masked(np.asarray(bon.all_tokens).reshape(B * n, T),
                                   np.asarray(bon.all_mask).reshape(B * n, T))
    single = score_answers([q for q in questions for _ in range(n)], every)["score"]
    return {**metrics, "rm_score": float(np.mean(bon.rewards)),
            "kl_to_sft": float(ch09.best_of_n_kl(n)), "single_gold_reward": float(np.mean(single)),
            "single_rm_score": float(np.mean(bon.all_rewards)), "n_samples": n,
            "answers": answers}


# ---------------------------------------------------------------------------------------------
# Plots


def _save(fig: Figure, ax, path: pathlib.Path) -> pathlib.Path:
    """Legend and layout, then write the figure as a PNG (no pyplot: no global state)."""
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def plot_loss_curve(history: dict, path: pathlib.Path, title: str = "Pretraining the mini GPT"):
    """Save the per-step training loss (and held-out loss per chunk) as a PNG."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot(history["step"], history["loss"], lw=0.8, alpha=0.7, label="train (per step)")
    if len(history.get("eval_loss", [])):
        ax.plot(history["eval_step"], history["eval_loss"], "o-", ms=3, label="held-out")
    finish_axes(ax, xlabel="step", ylabel="next-byte loss (nats)", title=title)
    return _save(fig, ax, path)


def plot_reward_histograms(metrics: dict, path: pathlib.Path) -> pathlib.Path:
    """Histograms of the reward model's scores of chosen and rejected responses (held out)."""
    r = metrics["heldout_rewards"]
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    bins = np.linspace(min(min(r["chosen"]), min(r["rejected"])),
                       max(max(r["chosen"]), max(r["rejected"])), 40)
    ax.hist(r["chosen"], bins=bins, alpha=0.6, label="chosen")
    ax.hist(r["rejected"], bins=bins, alpha=0.6, label="rejected")
    finish_axes(ax, xlabel="reward r(x, y)", ylabel="pairs",
                title=f"Reward model on held-out pairs: accuracy {metrics['heldout_accuracy']:.1%} "
                      f"(ceiling {metrics['ceiling']:.1%})")
    return _save(fig, ax, path)


def plot_rl_curves(history: dict, path: pathlib.Path, reward_name: str) -> pathlib.Path:
    """The RL stage's training curves: mean reward of the sampled completions and their KL to
    the SFT model, per step."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    steps = np.arange(1, len(history["score"]) + 1)
    ax.plot(steps, history["score"], label=f"{reward_name} (mean of samples)")
    ax.plot(steps, history["kl"], label="KL to SFT (nats per completion)")
    finish_axes(ax, xlabel="RL step", title="RL from the SFT model")
    return _save(fig, ax, path)


def plot_dpo_curves(history: dict, path: pathlib.Path) -> pathlib.Path:
    """The DPO stage's training curves: the batch's mean sequence log-probs of the chosen and
    rejected completions (preference displacement: both may fall, the rejected faster) and the
    implicit reward margin."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    steps = np.arange(1, len(history["loss"]) + 1)
    ax.plot(steps, history["logps/chosen"], label="log pi(chosen) (batch mean)")
    ax.plot(steps, history["logps/rejected"], label="log pi(rejected) (batch mean)")
    ax.plot(steps, history["rewards/margins"], label="implicit reward margin")
    finish_axes(ax, xlabel="DPO step", title="DPO from the SFT model")
    return _save(fig, ax, path)


def write_figures(folder: pathlib.Path, pretrained: StageResult, sft: StageResult,
                  rm: StageResult, rl: StageResult, dpo: StageResult,
                  reward_name: str) -> dict[str, pathlib.Path]:
    """Every stage's figure as a PNG in ``folder``; returns their paths by stage."""
    return {
        "pretrain": plot_loss_curve(pretrained.metrics["history"], folder / "pretrain_loss.png"),
        "sft": plot_loss_curve(sft.metrics["history"], folder / "sft_loss.png",
                               title="SFT of the pretrained mini GPT (assistant tokens)"),
        "reward_model": plot_reward_histograms(rm.metrics, folder / "reward_model.png"),
        "rl": plot_rl_curves(rl.metrics["history"], folder / "rl.png", reward_name),
        "dpo": plot_dpo_curves(dpo.metrics["history"], folder / "dpo.png"),
    }


# ---------------------------------------------------------------------------------------------
# Printed report


def table(rows: Sequence[Sequence[str]], log: Log) -> None:
    """``rows`` as left-aligned columns, the first row a header underlined with dashes."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for k, r in enumerate(rows):
        log("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if k == 0:
            log("  " + "  ".join("-" * w for w in widths).rstrip())


def pretraining_samples(before, after, model_config: gpt.GPTConfig, log: Log) -> dict:
    """Greedy continuations of :data:`PRETRAIN_SAMPLE_PROMPTS` by the ``before`` and ``after``
    parameters, printed (60 bytes of each). Returns ``{"before": texts, "after": texts}``."""
    texts = {name: sample_texts(params, model_config, PRETRAIN_SAMPLE_PROMPTS)
             for name, params in (("before", before), ("after", after))}
    log("\nSamples (greedy), before -> after pretraining:")
    for prompt, b, a in zip(PRETRAIN_SAMPLE_PROMPTS, texts["before"], texts["after"]):
        log(f"  {prompt!r}\n    before: {b[:60]!r}\n    after:  {a[:60]!r}")
    return texts


def heldout_answers(pretrained, sft, model_config: gpt.GPTConfig, questions, log: Log) -> dict:
    """The pretrained and SFT models' greedy answers to the held-out ``questions``
    (:func:`evaluate_model`), the first few printed. Returns each model's metrics."""
    evaluation = {name: evaluate_model(params, model_config, questions)
                  for name, params in (("pretrained", pretrained), ("sft", sft))}
    log("\nAnswers to held-out questions (greedy, through the chat template), "
        "pretrained -> SFT:")
    show_answers(questions, {name: answers for name, (_, answers) in evaluation.items()}, log)
    return {name: metrics for name, (metrics, _) in evaluation.items()}


def show_answers(questions, answers: dict[str, list[str]], log: Log, shown: int = 4) -> None:
    """The first ``shown`` questions and each model's answer (60 bytes of it)."""
    width = max(map(len, answers)) + 1
    for k, q in enumerate(questions[:shown]):
        log(f"  {q.prompt!r} (gold: {q.answer})" + "".join(
            f"\n    {name + ':':<{width}} {texts[k][:60]!r}" for name, texts in answers.items()))


def training_table(config: PipelineConfig, results: Sequence[StageResult], log: Log) -> None:
    steps = {"pretrain": config.pretrain.steps, "sft": config.sft.steps,
             "reward model": config.reward_model.steps}
    rows = [("stage", "params", "steps", "loss start", "train loss", "held-out loss", "time", "")]
    for result in results:
        m = result.metrics
        rows.append((result.name, f"{gpt.count_params(result.params):,}",
                     str(steps[result.name]), f"{m['initial_loss']:.3f}",
                     f"{m['final_train_loss']:.3f}", f"{m['final_eval_loss']:.3f}",
                     f"{result.seconds:.1f}s", "(cached)" if result.cached else ""))
    log("\nResults (losses in nats: per predicted token for pretraining and SFT, SFT counting "
        "assistant tokens only; per pair for the reward model)")
    table(rows, log)


def heldout_table(evaluation: dict[str, dict], questions, log: Log) -> None:
    rows = [("model", "gold reward", "accuracy", "answer bytes", "stops by itself")]
    for name, m in evaluation.items():
        rows.append((name, f"{m['gold_reward']:+.3f}", f"{m['accuracy']:.1%}",
                     f"{m['answer_bytes']:.1f}", f"{m['stopped']:.0%}"))
    n_facts = len({(q.topic, q.subject) for q in questions})
    log(f"\nHeld-out questions ({len(questions)} questions about {n_facts} facts never in a "
        f"demonstration; gold reward in [{data.GOLD_MIN}, {data.GOLD_MAX}])")
    table(rows, log)


def reward_model_table(m: dict, log: Log) -> None:
    rows = [("reward model", "accuracy", "vs gold", "ceiling", "annotator agreement",
             "mean r chosen", "mean r rejected"),
            ("held-out pairs", f"{m['heldout_accuracy']:.1%}", f"{m['heldout_gold_accuracy']:.1%}",
             f"{m['ceiling']:.1%}", f"{m['agreement']:.1%}", f"{m['heldout_mean_chosen']:+.2f}",
             f"{m['heldout_mean_rejected']:+.2f}")]
    log(f"\nReward model on {m['eval_pairs']} pairs about held-out facts (accuracy: against "
        f"the annotators' majority label; vs gold: against the higher gold reward; ceiling: the "
        f"best accuracy any model can reach on these labels)")
    table(rows, log)


def rl_summary(config: PipelineConfig, h: dict, log: Log) -> None:
    reward_name = config.rl_reward.replace("_", " ")
    k = max(1, len(h["score"]) // 4)
    log(f"\nRL ({config.rl.algorithm}, rewarded by the {reward_name}): mean {reward_name} of "
        f"the sampled completions {np.mean(h['score'][:k]):+.3f} (first {k} steps) -> "
        f"{np.mean(h['score'][-k:]):+.3f} (last {k}); KL to SFT {h['kl'][-1]:.2f} nats")


def dpo_summary(config: PipelineConfig, dpo: dict, rm: dict, log: Log) -> None:
    d, h = dpo["heldout"], dpo["history"]
    log(f"\nDPO ({config.dpo.loss}, beta={config.dpo.beta}): the implicit reward "
        f"beta*log(pi/pi_sft) ranks {d['accuracy']:.1%} +- {d['accuracy_se']:.1%} of the held-out "
        f"pairs as the annotators did (reward model: {rm['heldout_accuracy']:.1%}) and "
        f"{d['gold_accuracy']:.1%} as the gold reward does; mean log-prob of the chosen "
        f"responses {h['logps/chosen'][0]:+.1f} -> {h['logps/chosen'][-1]:+.1f}, rejected "
        f"{h['logps/rejected'][0]:+.1f} -> {h['logps/rejected'][-1]:+.1f} nats (training "
        f"batches)")


def best_of_n_summary(n: int, b: dict, log: Log) -> None:
    log(f"Best-of-{n} (ranked by the reward model): one sample -> the reward "
        f"model's pick: RM score {b['single_rm_score']:+.3f} -> {b['rm_score']:+.3f}, gold "
        f"reward {b['single_gold_reward']:+.3f} -> {b['gold_reward']:+.3f}; KL to SFT <= "
        f"log N - (N-1)/N = {b['kl_to_sft']:.2f} nats")


def policy_table(config: PipelineConfig, policies: dict[str, dict], questions, log: Log) -> None:
    rows = [("model", "gold reward", "accuracy", "RM score", "KL to SFT", "answer bytes")]
    for name, m in policies.items():
        kl = (f"{m['kl_to_sft']:.2f} +- {m['kl_to_sft_se']:.2f}" if "kl_to_sft_se" in m
              else f"<= {m['kl_to_sft']:.2f}")
        rows.append((name, f"{m['gold_reward']:+.3f}", f"{m['accuracy']:.1%}",
                     f"{m['rm_score']:+.3f}", kl, f"{m['answer_bytes']:.1f}"))
    log(f"\nSFT vs RL, DPO and best-of-N on the held-out questions (greedy answers, except "
        f"best-of-N: {config.best_of_n} samples at temperature 1, the reward model's favourite "
        f"kept; KL: sampled, nats per completion, or best-of-N's analytic bound)")
    table(rows, log)
    show_answers(questions, {name: m["answers"] for name, m in policies.items()}, log)


def print_results(config: PipelineConfig, stages: dict[str, StageResult],
                  evaluation: dict[str, dict], policies: dict[str, dict], questions,
                  log: Log) -> None:
    """The results tables: training, held-out answers of the pretrained and SFT models, the
    reward model, RL, DPO, best-of-N, and every policy side by side."""
    training_table(config, [stages[k] for k in ("pretrain", "sft", "reward_model")], log)
    heldout_table(evaluation, questions, log)
    reward_model_table(stages["reward_model"].metrics, log)
    rl_summary(config, stages["rl"].metrics["history"], log)
    dpo_summary(config, stages["dpo"].metrics, stages["reward_model"].metrics, log)
    best_of_n_summary(config.best_of_n, policies[f"best-of-{config.best_of_n}"], log)
    policy_table(config, policies, questions, log)
