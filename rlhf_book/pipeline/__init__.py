"""``rlhf-book pipeline``: the whole RLHF recipe on the synthetic world, stage by stage.

Stage 1 (book ch. 3): pretrain the mini GPT on the world's corpus. Stage 2 (book ch. 4):
supervised fine-tuning on demonstrations by demonstrators of mixed quality. Stage 3 (book ch.
5): a Bradley-Terry reward model, started from the SFT checkpoint and trained on pairs labelled
by biased, noisy simulated annotators (ch. 11); its accuracy on pairs about rephrased questions
is compared with the best any model can reach on those labels, for style pairs and for
right-vs-wrong pairs apart. Stage 4 (book ch. 6): GRPO from the SFT model against the reward
model, then the same run pushed further with no KL penalty (ch. 14, over-optimisation); and
RLVR (book ch. 7): GRPO from the SFT model on the training sums with a 0/1 verifier, no reward
model. Stage 5
(book ch. 8): online DPO from the SFT model on pairs of its own samples ranked by the reward
model. Stage 6 (book ch. 9): best-of-N sampling from the SFT model, ranked by the reward model.

Every model then answers the rephrased questions (trained facts, phrasings no training data
contains) at temperature 1, measured by the gold reward, right / wrong / no answer, the reward
model's score and the KL to the SFT model, each with its standard error over questions; the
unseen facts and arithmetic pass@k (with the RLVR row: pass@1 and pass@16 before and after)
are reported apart, and sampled answers are printed.

:mod:`~rlhf_book.pipeline.stages` holds the stages, each a cached call of its chapter's
training function: a second run loads every checkpoint in a second, and a change to a setting,
to the data or to the source of a module the stage depends on trains it again.
:mod:`~rlhf_book.pipeline.report` measures the models and prints the tables.
"""

from __future__ import annotations

import time

import jax

from rlhf_book import ch06_policy_gradients as ch06
from rlhf_book.lm import gpt, sharding
from rlhf_book.pipeline import report, stages
from rlhf_book.pipeline.report import (best_of_n_answers, policy_answers, sample_texts,
                                       summarise)
from rlhf_book.pipeline.stages import (PipelineConfig, StageResult, arithmetic_questions,
                                       best_of_n_stage, dpo_stage, heldout_questions,
                                       pretrain_stage, reward_model_stage, rl_stage,
                                       rlvr_stage, sft_stage, unseen_questions)

__all__ = ["PipelineConfig", "StageResult", "run_pipeline", "pretrain_stage", "sft_stage",
           "reward_model_stage", "rl_stage", "rlvr_stage", "dpo_stage", "best_of_n_stage",
           "heldout_questions", "unseen_questions", "arithmetic_questions", "policy_answers",
           "best_of_n_answers", "summarise", "sample_texts", "report", "stages"]


def run_pipeline(config: PipelineConfig, *, fresh: bool = False, progress: bool = True,
                 log=print, devices: int | None = None, fsdp: int = 1) -> dict:
    """Run every stage in order and print the results. Returns the stages' results.

    The training runs use ``devices`` devices (default: all JAX sees) as a mesh of
    ``devices // fsdp`` data-parallel replicas of a model split ``fsdp`` ways
    (:mod:`rlhf_book.lm.sharding`). Each step equals one device's up to float round-off (a
    sampled token may eventually flip over a long run, so runs agree statistically), and the
    cached checkpoints serve any device count."""
    mesh = sharding.make_mesh(devices, fsdp=fsdp)
    with sharding.use(mesh):
        return _run(config, fresh=fresh, progress=progress, log=log, mesh=mesh)


def _run(config: PipelineConfig, *, fresh: bool, progress: bool, log, mesh) -> dict:
    t0, out = time.perf_counter(), stages.check_writable(config.out_dir)
    model_config = gpt.get_config(config.model)
    log(f"rlhf-book pipeline: model={config.model}, out_dir={out}, JAX devices: "
        f"{mesh.size} x {mesh.devices.flat[0].platform} (mesh data={mesh.shape['data']}, "
        f"fsdp={mesh.shape['fsdp']})")
    kw = dict(fresh=fresh, progress=progress, log=log)

    init = gpt.init_params(jax.random.PRNGKey(config.seed), model_config)
    pretrained = pretrain_stage(config, **kw)
    samples = report.pretraining_samples(init, pretrained.params, model_config, log)
    sft = sft_stage(config, pretrained, **kw)
    rm = reward_model_stage(config, sft, **kw)
    results = {"pretrain": pretrained, "sft": sft, "reward_model": rm,
               "rl": rl_stage(config, sft, rm, **kw)}
    if config.rl_pushed is not None:
        results["rl_pushed"] = rl_stage(config, sft, rm, pushed_from=results["rl"], **kw)
    if config.rlvr is not None:
        results["rlvr"] = rlvr_stage(config, sft, **kw)
    results["dpo"] = dpo_stage(config, sft, rm, **kw)

    t_eval = time.perf_counter()
    questions = {"rephrased": heldout_questions(config), "unseen": unseen_questions(config),
                 "arithmetic": arithmetic_questions(config)}
    reward = ch06.reward_model_reward(rm.params, model_config, config.reward_model.pooling)
    models = {"pretrained": pretrained, "sft": sft, "rl": results["rl"],
              "rl (pushed)": results.get("rl_pushed"), "dpo": results["dpo"],
              "rlvr": results.get("rlvr")}
    models = {name: stage for name, stage in models.items() if stage is not None}
    answers = {split: {name: report.policy_answers(
        models[name].params, sft.params, reward, model_config, questions[split],
        samples=samples, seed=config.seed) for name in names} for split, names, samples in (
            ("rephrased", models, config.eval_samples), ("unseen", ("sft", "rl", "dpo"), 1))}
    main = questions["rephrased"]
    picks = stages.spread(len(main), config.best_of_n_questions)
    bon_questions = [main[i] for i in picks]
    answers["rephrased"][f"best-of-{config.best_of_n}"] = report.best_of_n_answers(
        best_of_n_stage(config, sft, rm, bon_questions), bon_questions, picks)
    answers["arithmetic"] = {name: report.policy_answers(
        models[name].params, sft.params, reward, model_config, questions["arithmetic"],
        samples=config.arithmetic_samples, seed=config.seed)
        for name in ("sft", "rl", "rlvr") if name in models}

    figures = report.write_figures(out / "figures", pretrained, sft, rm, results["rl"],
                                   results["dpo"], config.rl_reward.replace("_", " "),
                                   rl_pushed=results.get("rl_pushed"))
    t_eval = time.perf_counter() - t_eval
    report.print_results(config, results, answers, questions, log)
    times = ", ".join(f"{r.name} {r.seconds:.0f}s" for r in results.values())
    log(f"\ncheckpoints: {', '.join(str(r.path) for r in results.values())}"
        f"\nfigures: {', '.join(map(str, figures.values()))}"
        f"\ntime: {times}, evaluation and figures {t_eval:.0f}s; total {time.perf_counter() - t0:.1f}s")
    summary = {split: {name: report.summarise(a, by_model.get("sft") if name != "sft" else None)
                       for name, a in by_model.items()}
               for split, by_model in answers.items()}
    return {**results, "samples": samples, "figures": figures, "summary": summary,
            "answers": answers}
