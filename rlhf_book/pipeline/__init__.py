"""``rlhf-book pipeline``: the whole RLHF recipe on the synthetic world, stage by stage.

Stage 1 (book ch. 3): pretrain the mini GPT on the world's corpus. Stage 2 (book ch. 4):
supervised fine-tuning on chat demonstrations, then answers to held-out questions scored by
the gold reward, next to the pretrained model's. Stage 3 (book ch. 5): a Bradley-Terry reward
model, started from the SFT checkpoint and trained on the simulated annotators' preference
pairs; its accuracy on pairs about held-out facts is compared with the best any model can reach
on those noisy labels. Stage 4 (book ch. 6): reinforcement learning from the SFT model against
the reward model (GRPO by default) on prompts about training facts; the policy is compared with
the SFT model on held-out questions in gold reward, reward-model score, KL to the SFT model and
length. Stage 5 (book ch. 8): DPO from the SFT model on the reward model's training pairs; and
best-of-N sampling from the SFT model ranked by the reward model (book ch. 9). Both join the
RL policy in the final table. Later stages (evaluation) are added by their chapters.

:mod:`~rlhf_book.pipeline.stages` holds the stages, each a cached call of its chapter's
training function: a second run loads every checkpoint in a second, and a change to a setting,
to the data or to the source of a module the stage depends on trains it again.
:mod:`~rlhf_book.pipeline.report` measures the models and prints the tables.
"""

from __future__ import annotations

import pathlib
import time

import jax

from rlhf_book.lm import gpt
from rlhf_book.pipeline import report, stages
from rlhf_book.pipeline.report import best_of_n_report, policy_report, sample_texts
from rlhf_book.pipeline.stages import (PipelineConfig, StageResult, best_of_n_stage,
                                       dpo_stage, heldout_questions, pretrain_stage,
                                       reward_model_stage, rl_stage, sft_stage)

__all__ = ["PipelineConfig", "StageResult", "run_pipeline", "pretrain_stage", "sft_stage",
           "reward_model_stage", "rl_stage", "dpo_stage", "best_of_n_stage",
           "heldout_questions", "policy_report", "best_of_n_report", "sample_texts", "report",
           "stages"]


def run_pipeline(config: PipelineConfig, *, fresh: bool = False, progress: bool = True,
                 log=print) -> dict:
    """Run every stage in order and print the results. Returns the stages' results."""
    t0, out = time.perf_counter(), pathlib.Path(config.out_dir)
    model_config = gpt.get_config(config.model)
    log(f"rlhf-book pipeline: model={config.model}, out_dir={out}, JAX devices={jax.devices()}")
    kw = dict(fresh=fresh, progress=progress, log=log)

    init = gpt.init_params(jax.random.PRNGKey(config.seed), model_config)
    pretrained = pretrain_stage(config, **kw)
    samples = report.pretraining_samples(init, pretrained.params, model_config, log)
    sft = sft_stage(config, pretrained, **kw)
    questions = heldout_questions(config)
    evaluation = report.heldout_answers(pretrained.params, sft.params, model_config, questions,
                                        log)
    rm = reward_model_stage(config, sft, **kw)
    rl = rl_stage(config, sft, rm, **kw)
    dpo = dpo_stage(config, sft, **kw)
    policies = {name: policy_report(stage.params, sft.params, rm.params, model_config, questions,
                                    pooling=config.reward_model.pooling, seed=config.seed)
                for name, stage in (("sft", sft), ("rl", rl), ("dpo", dpo))}
    policies[f"best-of-{config.best_of_n}"] = best_of_n_report(
        best_of_n_stage(config, sft, rm, questions), questions)

    results = {"pretrain": pretrained, "sft": sft, "reward_model": rm, "rl": rl, "dpo": dpo}
    figures = report.write_figures(out / "figures", *results.values(),
                                   reward_name=config.rl_reward.replace("_", " "))
    report.print_results(config, results, evaluation, policies, questions, log)
    log(f"\ncheckpoints: {', '.join(str(r.path) for r in results.values())}"
        f"\nfigures: {', '.join(map(str, figures.values()))}"
        f"\ntotal: {time.perf_counter() - t0:.1f}s")
    return {**results, "samples": samples, "evaluation": evaluation, "figures": figures,
            "policies": {name: {k: v for k, v in m.items() if k != "answers"}
                         for name, m in policies.items()}}
