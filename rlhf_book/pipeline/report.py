"""What ``rlhf-book pipeline`` measures and prints: samples, every model's answers to the
rephrased questions, the unseen facts and arithmetic, the results tables and the figures.

Answers are sampled at temperature 1 and measured by :func:`rlhf_book.lm.eval.answer_samples`
(gold reward, right / wrong / none, bytes, the reward model's score of the very tokens, the
sampled KL to the SFT model); chapter 16's harness
(:func:`~rlhf_book.ch16_evaluation.harness.summarise`) averages them per question first, so
standard errors are over questions, the unit sampled, and gains over SFT are paired by
question. Plots
are matplotlib ``Figure`` objects (no pyplot), finished with the figure registry's
:func:`~rlhf_book.textbook.figures.finish_axes`.
"""

from __future__ import annotations

import pathlib
from typing import Callable, Sequence

import jax
import numpy as np
from matplotlib.figure import Figure

from rlhf_book import ch09_rejection_sampling as ch09
from rlhf_book import data
from rlhf_book.ch16_evaluation.harness import summarise
from rlhf_book.lm import gpt, sampling, tokenizer
from rlhf_book.lm.eval import answer_samples, mean_se, score_answers
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


def policy_answers(params, sft_params, reward, model_config: gpt.GPTConfig, questions, *,
                   samples: int, seed: int) -> dict:
    """``samples`` answers per question sampled at temperature 1 (what RL optimises and what
    best-of-N draws from), each measured by :func:`rlhf_book.lm.eval.answer_samples`: gold
    reward, right / wrong / none, bytes, the reward model's score (``rm``, reading exactly
    the generated tokens, as in RL) and the sampled KL to the SFT model."""
    prompts = encode_prompts([q.prompt for q in questions])
    a = answer_samples(params, questions, model_config, jax.random.PRNGKey(seed),
                       samples=samples, max_new_tokens=eval_max_new_tokens(model_config, prompts),
                       ref_params=sft_params, reward=reward)
    a["rm"] = a.pop("reward")
    return a


def best_of_n_answers(bon: ch09.BestOfN, questions, question_index=None) -> dict:
    """Best-of-``n`` (:func:`rlhf_book.pipeline.stages.best_of_n_stage`) measured like
    :func:`policy_answers` (one answer per question, the reward model's pick); ``single_gold``
    is the mean gold reward of all ``n`` samples per question, what best-of-``n`` improves on.
    Its KL to the SFT model is the analytic bound ``log n - (n - 1)/n``
    (``ch09.best_of_n_kl``: exact for continuous rewards, an upper bound with ties).
    ``question_index`` says which questions of a larger evaluation these are (for the paired
    comparison of :func:`summarise`)."""
    B, n, T = bon.all_tokens.shape
    texts = sampling.decode_masked(bon.tokens, bon.mask)
    scored = score_answers(questions, texts)
    every = sampling.decode_masked(np.asarray(bon.all_tokens).reshape(B * n, T),
                                   np.asarray(bon.all_mask).reshape(B * n, T))
    single = score_answers([q for q in questions for _ in range(n)], every)["score"]
    col = lambda x: np.asarray(x, np.float64).reshape(B, 1)  # noqa: E731
    return {"gold": col(scored["score"]), "right": col(scored["right"]),
            "wrong": col(scored["kind"] == "wrong"), "none": col(scored["kind"] == "none"),
            "bytes": col(scored["bytes"]), "rm": col(bon.rewards),
            "kl_bound": float(ch09.best_of_n_kl(n)), "texts": np.asarray(texts, object)[:, None],
            "single_gold": single.reshape(B, n).mean(1), "single_rm":
            np.asarray(bon.all_rewards).mean(1), "n_samples": n,
            "question_index": np.arange(B) if question_index is None else np.asarray(question_index)}


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


def plot_overoptimisation(curves: dict[str, dict], path: pathlib.Path) -> pathlib.Path:
    """Gold reward and reward-model score of rephrased questions' answers against the KL to the
    SFT model, along each RL run (book ch. 14, after Gao et al., 2023): the proxy keeps rising
    while the gold reward peaks and falls."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    for (name, c), color in zip(curves.items(), ("C0", "C3")):
        ax.plot(c["kl"], c["rm"], "o--", color=color, ms=3, label=f"{name}: RM score")
        ax.plot(c["kl"], c["gold"], "o-", color=color, ms=3, label=f"{name}: gold reward")
    finish_axes(ax, xlabel="KL to SFT (nats per completion)", ylabel="mean reward",
                title="Optimising the proxy: reward-model score vs gold reward")
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
                  rm: StageResult, rl: StageResult, dpo: StageResult, reward_name: str,
                  rl_pushed: StageResult | None = None) -> dict[str, pathlib.Path]:
    """Every stage's figure as a PNG in ``folder``; returns their paths by stage."""
    curves = {"rl": rl.metrics["curve"]}
    if rl_pushed is not None:
        curves["rl (pushed)"] = rl_pushed.metrics["curve"]
    return {
        "overoptimisation": plot_overoptimisation(curves, folder / "overoptimisation.png"),
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


def show_answers(questions, answers: dict[str, Sequence[str]], log: Log,
                 picks: Sequence[int] = (0, 1, 2)) -> None:
    """The questions at ``picks`` and each model's (first) answer to them, 70 bytes of each."""
    width = max(map(len, answers)) + 1
    for k in picks:
        q = questions[k]
        log(f"  {q.prompt!r} (gold: {q.answer})" + "".join(
            f"\n    {name + ':':<{width}} {texts[k][:70]!r}" for name, texts in answers.items()))


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


def fmt(mean: float, se: float, digits: int = 3, sign: str = "+") -> str:
    return f"{mean:{sign}.{digits}f} +- {se:.{digits}f}"


def reward_model_table(m: dict, log: Log) -> None:
    rows = [("pairs", "n", "accuracy", "ceiling", "vs gold")]
    kinds = [kind for kind in data.PAIR_KINDS if kind in m["by_kind"]]  # (JSON sorts keys)
    for name, k in (("all", m), *((f"{kind} pairs", m["by_kind"][kind]) for kind in kinds)):
        acc = k.get("accuracy", k.get("heldout_accuracy"))
        rows.append((name, str(k.get("pairs", m["eval_pairs"])), f"{acc:.1%}",
                     f"{k['ceiling']:.1%}", f"{k.get('gold_accuracy', m['heldout_gold_accuracy']):.1%}"))
    log(f"\nReward model on {m['eval_pairs']} pairs about rephrased questions (accuracy: against "
        f"the annotators' majority label; ceiling: the best any model can reach on those noisy, "
        f"biased labels; vs gold: against the higher gold reward). Annotator agreement "
        f"{m['agreement']:.1%}; mean r chosen {m['heldout_mean_chosen']:+.2f}, rejected "
        f"{m['heldout_mean_rejected']:+.2f}")
    table(rows, log)


def rl_summary(name: str, config: PipelineConfig, rc, h: dict, log: Log) -> None:
    reward_name = config.rl_reward.replace("_", " ")
    k = max(1, len(h["score"]) // 4)
    log(f"{name} ({rc.algorithm}, beta={rc.beta}, {rc.steps} steps, rewarded by the "
        f"{reward_name}): mean {reward_name} of the sampled completions "
        f"{np.mean(h['score'][:k]):+.3f} (first {k} steps) -> {np.mean(h['score'][-k:]):+.3f} "
        f"(last {k}); KL to SFT {h['kl'][-1]:.2f} nats")


def dpo_summary(config: PipelineConfig, dpo: dict, rm: dict, log: Log) -> None:
    d, h = dpo["heldout"], dpo["history"]
    log(f"DPO ({config.dpo.loss}, beta={config.dpo.beta}): the implicit reward "
        f"beta*log(pi/pi_sft) ranks {d['accuracy']:.1%} +- {d['accuracy_se']:.1%} of the held-out "
        f"pairs as the annotators did (reward model: {rm['heldout_accuracy']:.1%}) and "
        f"{d['gold_accuracy']:.1%} as the gold reward does; mean log-prob of the chosen "
        f"responses {h['logps/chosen'][0]:+.1f} -> {h['logps/chosen'][-1]:+.1f}, rejected "
        f"{h['logps/rejected'][0]:+.1f} -> {h['logps/rejected'][-1]:+.1f} nats (training "
        f"batches)")


def best_of_n_summary(n: int, b: dict, log: Log) -> None:
    log(f"Best-of-{n} (ranked by the reward model): one sample -> the reward model's pick: RM "
        f"score {b['single_rm'].mean():+.3f} -> {b['rm'].mean():+.3f}, gold reward "
        f"{b['single_gold'].mean():+.3f} -> {b['gold'].mean():+.3f}; KL to SFT <= log N - "
        f"(N-1)/N = {b['kl_bound']:.2f} nats")


def policy_table(title: str, answers: dict[str, dict], log: Log, reference: str = "sft") -> None:
    """One row per model: gold reward and its paired gain over ``reference`` (+- SE over
    questions), right / wrong / no answer, reward-model score, KL to SFT, bytes."""
    rows = [("model", "gold reward", "vs SFT", "right", "wrong", "none", "RM score",
             "KL to SFT", "bytes")]
    ref = answers.get(reference)
    for name, a in answers.items():
        m = summarise(a, ref if ref is not None and name != reference else None)
        kl = fmt(m["kl"], m["kl_se"], 2, "") if "kl" in m else f"<= {a['kl_bound']:.2f}"
        rows.append((name, fmt(m["gold"], m["gold_se"]),
                     fmt(m["gain"], m["gain_se"]) if "gain" in m else "",
                     f"{m['right']:.0%}", f"{m['wrong']:.0%}", f"{m['none']:.0%}",
                     f"{m['rm']:+.2f}", kl, f"{m['bytes']:.0f}"))
    log(title)
    table(rows, log)


def arithmetic_line(answers: dict[str, dict], log: Log) -> dict:
    """pass@1 and pass@n (Chen et al., 2021) of each model on the rephrased sums, and each
    model's change in pass@1 from the SFT model's, paired by question (+- SE over questions):
    the RLVR row of chapter 7."""
    out = {}
    ref = answers.get("sft")
    for name, a in answers.items():
        n, c = a["right"].shape[1], a["right"].sum(1)
        m = summarise(a, ks=(1, n))
        out[name] = {f"pass@{k}": (m[f"pass@{k}"], m[f"pass@{k}_se"]) for k in (1, n)}
        if ref is not None and name != "sft":
            out[name]["change"] = mean_se(a["right"].mean(1) - ref["right"].mean(1))
    log(f"\nArithmetic ({len(c)} rephrased sums a + b, {n} answers each at temperature 1, the "
        f"last integer checked; the RLVR of chapter 7 trains on the other phrasings):")
    rows = [("model", "pass@1", f"pass@{n}", "pass@1 vs SFT")]
    for name, m in out.items():
        rows.append((name, fmt(*m["pass@1"], 3, ""), fmt(*m[f"pass@{n}"], 3, ""),
                     fmt(*m["change"], 3) if "change" in m else ""))
    table(rows, log)
    return out


def rlvr_summary(rc, h: dict, log: Log) -> None:
    k = max(1, len(h["score"]) // 4)
    log(f"RLVR ({rc.algorithm}, beta={rc.beta}, {rc.steps} steps, rewarded 1 when the last "
        f"integer is the sum): pass rate of the sampled answers {np.mean(h['score'][:k]):.3f} "
        f"(first {k} steps) -> {np.mean(h['score'][-k:]):.3f} (last {k}); KL to SFT "
        f"{h['kl'][-1]:.2f} nats")


def print_results(config: PipelineConfig, stages: dict[str, StageResult], answers: dict,
                  questions, log: Log) -> None:
    """The results: training, the reward model, RL / DPO / best-of-N summaries, every model on
    the rephrased questions side by side, the unseen facts, arithmetic and sampled answers."""
    training_table(config, [stages[k] for k in ("pretrain", "sft", "reward_model")], log)
    reward_model_table(stages["reward_model"].metrics, log)
    log("")
    rl_summary("RL", config, config.rl, stages["rl"].metrics["history"], log)
    if "rl_pushed" in stages:
        rl_summary("RL pushed", config, config.rl_pushed, stages["rl_pushed"].metrics["history"],
                   log)
    if "rlvr" in stages:
        rlvr_summary(config.rlvr, stages["rlvr"].metrics["history"], log)
    dpo_summary(config, stages["dpo"].metrics, stages["reward_model"].metrics, log)
    best_of_n_summary(config.best_of_n, answers["rephrased"][f"best-of-{config.best_of_n}"], log)
    main, unseen = questions["rephrased"], questions["unseen"]
    n_facts = len({(q.topic, q.subject) for q in main})
    bon = answers["rephrased"][f"best-of-{config.best_of_n}"]
    policy_table(f"\nRephrased questions: {len(main)} questions about {n_facts} trained facts, in "
                 f"phrasings no training data contains; {config.eval_samples} answer(s) each "
                 f"sampled at temperature 1 (best-of-N: the reward model's pick of "
                 f"{config.best_of_n}, on {len(bon['question_index'])} of them). Gold reward in [{data.GOLD_MIN}, {data.GOLD_MAX}]; +- "
                 f"one standard error over questions; KL: sampled, nats per completion",
                 answers["rephrased"], log)
    policy_table(f"\nUnseen facts: {len(unseen)} questions about "
                 f"{len({(q.topic, q.subject) for q in unseen})} facts never asked in training "
                 f"(only stated in the pretraining corpus); one answer each",
                 answers["unseen"], log)
    arithmetic_line(answers["arithmetic"], log)
    log("\nSampled answers to rephrased questions:")
    texts = {}
    for name, a in answers["rephrased"].items():
        texts[name] = np.full(len(main), "", dtype=object)
        texts[name][a.get("question_index", slice(None))] = a["texts"][:, 0]
    shown = bon["question_index"][np.linspace(0, len(bon["question_index"]) - 1, 3).astype(int)]
    show_answers(main, texts, log, picks=shown.tolist())
