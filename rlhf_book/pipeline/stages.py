"""The stages of ``rlhf-book pipeline``: each a cached call of a chapter's training function.

* pretrain (book ch. 3): :func:`rlhf_book.lm.train.pretrain`, cached as ``pretrain-<model>-<key>``;
* SFT (book ch. 4): ``ch04.train_sft``, cached as ``sft-<model>-<key>``;
* reward model (book ch. 5): ``ch05.train_reward_model``, cached as ``reward-<model>-<key>``;
* RL (book ch. 6): ``ch06.train_rl``, cached as ``rl-<model>-<key>``;
* DPO (book ch. 8): ``ch08.train_dpo``, cached as ``dpo-<model>-<key>``;
* best-of-N (book ch. 9): ``ch09.best_of_n_sample``; not cached, as it trains nothing.

A stage's checkpoint lies in ``<out_dir>/checkpoints/`` with its metrics beside the parameters.
Its key is :func:`rlhf_book.textbook.substrate.fingerprint` of everything that determines the
result: the settings, the seed, the exact tokens it trains on, the checkpoint it starts from
(whose name holds that checkpoint's own key), and the source of ``rlhf_book/lm``,
``rlhf_book/data``, of the chapter modules the stage calls (their ``losses`` and ``loop``,
:data:`STAGE_SOURCES`) and of this module. Change any of them and the stage trains again; otherwise a second run loads it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import time
from typing import Any, Callable

import jax
import numpy as np

from rlhf_book import ch04_instruction_tuning as ch04
from rlhf_book import ch05_reward_models as ch05
from rlhf_book import ch06_policy_gradients as ch06
from rlhf_book.ch07_reasoning import loop as ch07
from rlhf_book import ch08_direct_alignment as ch08
from rlhf_book import ch09_rejection_sampling as ch09
from rlhf_book import data
from rlhf_book.lm import gpt, train
from rlhf_book.lm.checks import check_choice, check_positive_ints
from rlhf_book.lm.eval import answer_samples
from rlhf_book.lm.rollout import encode_prompts
from rlhf_book.textbook import substrate

Log = Callable[[str], None]

# The modules under rlhf_book whose source is part of each stage's key, besides lm and data
# (in every fingerprint) and this module: the math and the loop of each chapter the stage calls
# (not its experiments, which only the notebooks run). Upstream stages enter through their
# checkpoint names.
def _math_and_loop(chapter: str) -> tuple[str, str]:
    return f"{chapter}/losses", f"{chapter}/loop"


STAGE_SOURCES = {
    "pretrain": (),
    "sft": _math_and_loop("ch04_instruction_tuning"),
    "reward": _math_and_loop("ch05_reward_models"),
    "rl": (*_math_and_loop("ch05_reward_models"), *_math_and_loop("ch06_policy_gradients")),
    "dpo": (*_math_and_loop("ch05_reward_models"), *_math_and_loop("ch06_policy_gradients"),
            *_math_and_loop("ch08_direct_alignment")),
}
STAGE_SOURCES["rl_pushed"] = STAGE_SOURCES["rl"]
STAGE_SOURCES["rlvr"] = (*_math_and_loop("ch06_policy_gradients"), "ch07_reasoning/rlvr",
                         "ch07_reasoning/loop")
THIS_MODULE = "pipeline/stages"


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """What the pipeline trains. ``quick()`` is a seconds-long version for tests and smoke runs."""

    model: str = "mini"
    # 2000 steps of 16 x 128 tokens (4.1M tokens, ~5 passes over the corpus): under 2 minutes
    # on a 2-core CPU. With 1200 the SFT model rarely answers a rephrased question about a fact
    # it can complete as a statement (greedy accuracy 29%, against 67% after 2400 steps).
    pretrain: train.TrainConfig = train.TrainConfig(steps=2000, batch_size=16)
    corpus_documents: int = 6000
    eval_fraction: float = 0.05
    # SFT: 300 steps of 16 packed rows (~1.5 conversations each, ~2.4 passes over the 2,000
    # demonstrations), ~20 s on a 2-core CPU.
    sft: ch04.SFTConfig = ch04.SFTConfig(steps=300, learning_rate=2e-4)
    # The evaluation: every rephrased question about the four fact topics (520: 65 trained
    # facts x 8 new phrasings; None: all), ``eval_samples`` answers each at temperature 1; the
    # unseen-fact questions (one answer each); arithmetic pass@k with ``arithmetic_samples``
    # answers to ``arithmetic_questions`` rephrased sums.
    eval_questions: int | None = None
    eval_samples: int = 1
    arithmetic_questions: int = 96
    arithmetic_samples: int = 16
    best_of_n_questions: int = 160  # the rephrased questions best-of-N answers (n samples each)
    # Reward model: pairs labelled by the majority of 3 Bradley-Terry annotators (ch. 11), three
    # in four of them right-vs-wrong pairs. Correctness is the slow part to learn. The SFT
    # model it starts from knows the facts: its own log-probabilities rank 94% of the held-out
    # correctness pairs right. A reward model read at the last token learns to check them
    # slowly: it ranks 72% of them right after 200 steps of 32 pairs (one pass over the 6,400
    # pairs, ~50 s), 77% after 400, 85% after 800 (four passes; style pairs 75%, 76%, 79%,
    # against a ceiling of 91%). A rate of 1e-4 or 1e-3 instead of 3e-4 (65%, 52% after 200
    # steps), mean pooling (67%) or 16 pairs a step (no correctness at all) are worse. One
    # pass keeps the main job within its five minutes.
    reward_model: ch05.RMConfig = ch05.RMConfig(steps=200, n_pairs=6400)
    annotators: int = 3
    annotator_noise: float = 0.5
    annotator_bias: data.AnnotatorBias = data.AnnotatorBias()
    correctness_pairs: float = 0.75  # the share of right-vs-wrong pairs in one style
    eval_pairs: int = 1000  # pairs about rephrased questions the reward model is tested on
    # RL (ch. 6): GRPO on prompts about training facts, rewarded by the reward model
    # ("reward_model") or, as an oracle, by the gold reward itself ("gold"). 32 steps: the gold
    # reward of the rephrased questions rises +0.39 +- 0.05 over SFT (40 steps: +0.41).
    rl: ch06.RLConfig = ch06.RLConfig(algorithm="grpo", steps=32, learning_rate=3e-5, beta=0.1,
                                      max_new_tokens=64, log_every=8)
    rl_reward: str = "reward_model"
    # The same RL pushed further against the same reward model (book ch. 14): from the default
    # run's policy, 10 more steps with no KL penalty and a ten times larger step size. Its
    # reward-model score rises above the default run's while its gold reward falls 0.4 below
    # it. (Measured on the 520 rephrased questions: at 2e-4, 10 steps lower the gold reward by
    # 0.19 +- 0.04 and 20 steps by 0.49, where the policy has found one answer, "It is
    # definitely dow.", that the reward model scores above any real one; at 1e-4 the fall after
    # 20 steps is 0.08, within 2 SE.) None skips it.
    rl_pushed: ch06.RLConfig | None = ch06.RLConfig(algorithm="grpo", steps=10, learning_rate=3e-4,
                                                    beta=0.0, max_new_tokens=64)
    curve_questions: int = 64  # rephrased questions measured after every RL chunk
    # RLVR (ch. 7): GRPO from the SFT model on the training sums, rewarded 1 when the last
    # integer of the answer is the sum, else 0 (no reward model). A 0/1 reward needs a step
    # size ten times RL's: about a third of the groups of 8 carry no signal at the SFT
    # model's pass rate of about 0.1. None skips it.
    rlvr: ch06.RLConfig | None = ch06.RLConfig(algorithm="grpo", steps=40, prompts_per_step=16,
                                               group_size=8, max_new_tokens=32,
                                               learning_rate=3e-4, beta=0.02, log_every=10)
    # DPO (ch. 8) from the SFT model, online: pairs of its own samples ranked by the reward
    # model. (Offline DPO on the annotators' pairs, on_policy=False, lowers the gold reward
    # here: the pairs' texts are not the policy's, and it learns the annotators' verbosity.)
    # Best-of-N sampling (ch. 9) from the SFT model, ranked by the reward model.
    dpo: ch08.DPOConfig = ch08.DPOConfig(beta=0.1, learning_rate=3e-5, steps=32, batch_size=16,
                                         on_policy=True, completions_per_prompt=4,
                                         max_new_tokens=64, log_every=8)
    best_of_n: int = 8
    seed: int = 0
    out_dir: str = "runs"

    def __post_init__(self):
        check_positive_ints(self, "best_of_n")
        check_choice(self.rl_reward, "PipelineConfig.rl_reward", ("reward_model", "gold"))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not (
                0 <= self.seed < 2**32):
            raise ValueError(f"PipelineConfig.seed must be an int in [0, 2**32), got {self.seed!r}")

    @classmethod
    def quick(cls, out_dir: str = "runs/quick") -> "PipelineConfig":
        return cls(
            model="tiny",
            pretrain=train.TrainConfig(steps=60, batch_size=8, seq_len=64, warmup_steps=10,
                                       log_every=20),
            corpus_documents=400,
            sft=ch04.SFTConfig(steps=20, batch_size=8, seq_len=64, warmup_steps=4,
                               n_demonstrations=200, log_every=10),
            eval_questions=8, eval_samples=1, arithmetic_questions=4, arithmetic_samples=4,
            best_of_n_questions=8,
            curve_questions=4,
            reward_model=ch05.RMConfig(steps=20, batch_size=8, seq_len=64, warmup_steps=4,
                                       n_pairs=200, log_every=10),
            eval_pairs=64,
            rl=ch06.RLConfig(steps=4, prompts_per_step=4, group_size=4, max_new_tokens=16,
                             log_every=2),
            rl_pushed=ch06.RLConfig(steps=4, prompts_per_step=4, group_size=4, beta=0.0,
                                    max_new_tokens=16, log_every=2),
            rlvr=ch06.RLConfig(steps=4, prompts_per_step=4, group_size=4, max_new_tokens=16,
                               learning_rate=3e-4, log_every=2),
            dpo=ch08.DPOConfig(steps=4, batch_size=4, on_policy=True, completions_per_prompt=2,
                               max_new_tokens=16, log_every=2),
            best_of_n=4,
            out_dir=out_dir,
        )


@dataclasses.dataclass
class StageResult:
    """What a stage hands to the next stage and to the report."""

    name: str
    params: dict
    metrics: dict
    path: pathlib.Path
    cached: bool
    seconds: float


# ---------------------------------------------------------------------------------------------
# The cache


def stage_key(stage: str, *settings) -> str:
    """The fingerprint a ``stage``'s checkpoint is stored under: its ``settings`` (configs,
    numbers, token arrays, upstream checkpoint names) and the source of the modules it depends
    on (:data:`STAGE_SOURCES`, this module, ``lm`` and ``data``)."""
    return substrate.fingerprint(stage, *settings, sources=(*STAGE_SOURCES[stage], THIS_MODULE))


def check_writable(folder) -> pathlib.Path:
    """Create ``folder`` and write a file in it, before any training starts: a run whose
    results could not be saved stops now with a ``ValueError``, not after minutes of work."""
    folder = pathlib.Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"the output folder {folder} is not writable "
                         f"({err.strerror or err})") from None
    return folder


def checkpoint_path(config: PipelineConfig, stage: str, key: str) -> pathlib.Path:
    return pathlib.Path(config.out_dir) / "checkpoints" / f"{stage}-{config.model}-{key}.msgpack"


def cached_stage(config: PipelineConfig, stage: str, name: str, settings: tuple,
                 run: Callable[[], tuple[Any, dict]], *, fresh: bool, log: Log,
                 **upstream: StageResult) -> StageResult:
    """Load ``stage``'s checkpoint stored under :func:`stage_key` of ``settings``, or (when
    there is none, or ``fresh``) call ``run() -> (params, metrics)`` and store its result, with
    the metrics and the names of the ``upstream`` checkpoints it started from. A cached file
    that cannot be used (corrupt, truncated: :func:`rlhf_book.lm.train.load_checkpoint` checks
    its hash; or holding another stage or model size) is reported and trained again."""
    path = checkpoint_path(config, stage, stage_key(stage, *settings))
    start = time.perf_counter()
    model = dataclasses.asdict(gpt.get_config(config.model))
    if path.exists() and not fresh:
        try:
            params, meta = train.load_checkpoint(path)
            if meta.get("stage") != name or meta.get("model") != model:
                raise ValueError(f"{path} holds the {meta.get('stage')!r} stage of a "
                                 f"{meta.get('model')} model, not {name!r} of {model}")
        except ValueError as err:  # corrupt, truncated, or another stage's checkpoint
            log(f"[{name}] cannot use the cached checkpoint ({err}); training it again")
        else:
            log(f"[{name}] loaded cached checkpoint {path}")
            return StageResult(name, params, meta["metrics"], path, True,
                               time.perf_counter() - start)
    params, metrics = run()
    metrics["train_seconds"] = time.perf_counter() - start
    meta = {"model": model, "stage": name,
            "metrics": metrics, **{k: result.path.name for k, result in upstream.items()}}
    train.save_checkpoint(path, params, meta)
    return StageResult(name, params, metrics, path, False, time.perf_counter() - start)


def _lists(history: dict) -> dict:
    """A training history as JSON lists (stored in the checkpoint's metadata)."""
    return {k: np.asarray(v).tolist() for k, v in history.items()}


# ---------------------------------------------------------------------------------------------
# The data each stage trains or is tested on


def corpus_streams(config: PipelineConfig) -> tuple[np.ndarray, np.ndarray]:
    """The pretraining corpus as train and held-out token streams (split by document)."""
    docs = data.pretraining_corpus(seed=config.seed, n_documents=config.corpus_documents)
    n_eval = max(1, int(len(docs) * config.eval_fraction))
    return train.token_stream(docs[n_eval:]), train.token_stream(docs[:n_eval])


def _subset(questions: list, n: int | None, seed: int) -> list:
    """``n`` of ``questions`` drawn without replacement, in their order (all when ``n`` is None)."""
    if n is None or n >= len(questions):
        return questions
    pick = np.random.default_rng(seed).choice(len(questions), size=n, replace=False)
    return [questions[i] for i in sorted(pick)]


def spread(n_items: int, n: int) -> np.ndarray:
    """``n`` indices spread evenly over ``range(n_items)`` (all of them when ``n >= n_items``):
    a subset of the rephrased questions that covers every topic (they are listed topic by
    topic)."""
    return np.unique(np.linspace(0, n_items - 1, min(n, n_items)).astype(int))


def heldout_questions(config: PipelineConfig) -> list:
    """The main evaluation: rephrased questions about the four fact topics (trained facts,
    phrasings no training data contains)."""
    rephrased = data.fact_questions(data.question_splits(seed=config.seed).rephrased)
    return _subset(rephrased, config.eval_questions, config.seed + 1)


def unseen_questions(config: PipelineConfig) -> list:
    """The second row: questions about held-out facts of the four fact topics, never asked in
    training (stated only in the pretraining corpus)."""
    unseen = data.fact_questions(data.question_splits(seed=config.seed).unseen)
    return _subset(unseen, config.eval_questions, config.seed + 2)


def arithmetic_questions(config: PipelineConfig) -> list:
    """Rephrased sums (trained facts, new phrasings) for pass@k."""
    rephrased = data.question_splits(seed=config.seed).rephrased
    return _subset([q for q in rephrased if q.topic == "arithmetic"],
                   config.arithmetic_questions, config.seed + 3)


def preference_data(config: PipelineConfig):
    """``(train_pairs, heldout_pairs)``: annotated pairs about the training questions, and
    pairs about the rephrased ones (never in a demonstration or a training pair) to test the
    reward model on."""
    kw = dict(n_annotators=config.annotators, noise=config.annotator_noise,
              bias=config.annotator_bias, correctness_fraction=config.correctness_pairs)
    splits = data.question_splits(seed=config.seed)
    train_pairs = data.preference_pairs(seed=config.seed, n=config.reward_model.n_pairs,
                                        questions=splits.train, **kw)
    heldout_pairs = data.preference_pairs(seed=config.seed + 1, n=config.eval_pairs,
                                          questions=splits.rephrased, **kw)
    return train_pairs, heldout_pairs


def fitting(pairs, length: int) -> list:
    """The pairs whose chosen and rejected conversations both fit ``length`` tokens (all of
    them for the mini GPT's 128; the quick run's 64-token tiny model drops the longer ones)."""
    return [p for p in pairs if max(len(ch05.encode_conversation(p.prompt, p.chosen)),
                                    len(ch05.encode_conversation(p.prompt, p.rejected))) <= length]


# ---------------------------------------------------------------------------------------------
# The stages


def pretrain_stage(config: PipelineConfig, *, fresh: bool = False, progress: bool = True,
                   log: Log = print) -> StageResult:
    """Stage 1 (book ch. 3): pretrain the GPT on the corpus, or load the cached checkpoint."""
    model_config = gpt.get_config(config.model)
    pc = config.pretrain
    train_stream, eval_stream = corpus_streams(config)

    def run():
        # eval_shape counts the parameters from their shapes without initialising them.
        shapes = jax.eval_shape(functools.partial(gpt.init_params, config=model_config),
                                jax.random.PRNGKey(0))
        log(f"[pretrain] {config.model} GPT, {gpt.count_params(shapes):,} parameters; corpus "
            f"{len(train_stream):,} train / {len(eval_stream):,} held-out tokens")
        params, history = train.pretrain(model_config, pc, train_stream, eval_stream,
                                         seed=config.seed, progress=progress)
        return params, {"final_train_loss": float(np.mean(history["loss"][-pc.log_every:])),
                        "final_eval_loss": float(history["eval_loss"][-1]),
                        "initial_loss": float(history["loss"][0]),
                        "tokens_seen": pc.steps * pc.batch_size * pc.seq_len,
                        "history": _lists(history)}

    return cached_stage(config, "pretrain", "pretrain",
                        (model_config, pc, config.seed, train_stream, eval_stream), run,
                        fresh=fresh, log=log)


def sft_stage(config: PipelineConfig, pretrained: StageResult, *, fresh: bool = False,
              progress: bool = True, log: Log = print) -> StageResult:
    """Stage 2 (book ch. 4): fine-tune the pretrained model on chat demonstrations, or load the
    cached checkpoint. Conversations longer than the SFT rows are left out (and counted)."""
    model_config = gpt.get_config(config.model)
    sc = config.sft
    conversations = data.sft_demonstrations(seed=config.seed, n=sc.n_demonstrations)
    examples = [e for e in ch04.sft_examples(conversations, mask_prompt=sc.mask_prompt)
                if len(e[0]) <= sc.seq_len]
    n_eval = max(1, len(examples) // 20)
    make = ch04.pack_examples if sc.packing else ch04.pad_examples
    batch, eval_batch = make(examples[n_eval:], sc.seq_len), make(examples[:n_eval], sc.seq_len)

    def run():
        log(f"[sft] {len(examples):,} of {len(conversations):,} demonstrations fit {sc.seq_len} "
            f"tokens; {'packed' if sc.packing else 'padded'} into {batch.tokens.shape[0]:,} rows "
            f"(+{eval_batch.tokens.shape[0]} held-out rows)")
        params, history = ch04.train_sft(model_config, pretrained.params, sc, batch,
                                         eval_batch=eval_batch, seed=config.seed,
                                         progress=progress)
        return params, {"initial_loss": float(history["loss"][0]),
                        "final_train_loss": float(np.mean(history["loss"][-sc.log_every:])),
                        "final_eval_loss": float(history["eval_loss"][-1]),
                        "history": _lists(history)}

    return cached_stage(config, "sft", "sft",
                        (pretrained.path.name, sc, config.seed, np.asarray(batch.tokens),
                         np.asarray(batch.loss_mask)), run,
                        fresh=fresh, log=log, pretrained=pretrained)


def reward_model_stage(config: PipelineConfig, sft: StageResult, *, fresh: bool = False,
                       progress: bool = True, log: Log = print) -> StageResult:
    """Stage 3 (book ch. 5): a Bradley-Terry reward model on the SFT model, or the cached one.

    Its metrics compare the accuracy on held-out pairs with two references from the annotator
    model: the ceiling (the best accuracy any model can reach on those labels) and the
    annotators' agreement with each other."""
    model_config = gpt.get_config(config.model)
    rc = config.reward_model
    train_pairs, heldout_pairs = (fitting(pairs, rc.seq_len) for pairs in preference_data(config))
    batch = ch05.encode_pairs(train_pairs, rc.seq_len)
    eval_batch = ch05.encode_pairs(heldout_pairs, rc.seq_len)

    def run():
        log(f"[reward model] {len(train_pairs):,} training pairs, {len(heldout_pairs):,} "
            f"held-out pairs; {config.annotators} annotators per pair, noise "
            f"{config.annotator_noise}")
        params = ch05.init_reward_model(jax.random.PRNGKey(config.seed), sft.params, model_config)
        # (the held-out pairs are scored once, at the end: scoring them after every chunk
        # would cost more than a tenth of the stage)
        params, history = ch05.train_reward_model(model_config, params, rc, batch,
                                                  seed=config.seed, progress=progress)
        r_c, r_r = ch05.score_pairs(params, model_config, eval_batch, rc.pooling)
        r_c, r_r = np.asarray(r_c), np.asarray(r_r)
        history["eval_loss"] = [float(ch05.bradley_terry_loss(r_c, r_r))]
        kinds = np.asarray([p.kind for p in heldout_pairs])
        by_kind = {}
        for kind in data.PAIR_KINDS:  # style pairs and correctness pairs, reported apart
            sel = np.flatnonzero(kinds == kind)
            if len(sel):
                by_kind[kind] = {
                    "pairs": len(sel), "accuracy": float(np.mean(r_c[sel] > r_r[sel])),
                    "gold_accuracy": ch05.gold_pair_accuracy([heldout_pairs[i] for i in sel],
                                                             r_c[sel], r_r[sel]),
                    "ceiling": data.label_accuracy_ceiling(
                        [heldout_pairs[i].p_true for i in sel], config.annotators)}
        return params, {
            "initial_loss": float(np.mean(history["loss"][:rc.log_every])),
            "final_train_loss": float(np.mean(history["loss"][-rc.log_every:])),
            "final_eval_loss": float(history["eval_loss"][-1]),
            "history": _lists(history),
            **{f"heldout_{k}": v for k, v in ch05.reward_margins(r_c, r_r).items()},
            "heldout_gold_accuracy": ch05.gold_pair_accuracy(heldout_pairs, r_c, r_r),
            "ceiling": data.label_accuracy_ceiling([p.p_true for p in heldout_pairs],
                                                   config.annotators),
            "by_kind": by_kind,
            "agreement": data.inter_annotator_agreement([p.votes for p in heldout_pairs])
            if config.annotators > 1 else float("nan"),
            "heldout_rewards": {"chosen": r_c.tolist(), "rejected": r_r.tolist()},
            "train_pairs": len(train_pairs),
            "eval_pairs": len(heldout_pairs),
        }

    return cached_stage(config, "reward", "reward model",
                        (sft.path.name, rc, config.seed, config.annotators,
                         config.annotator_noise, np.asarray(batch.chosen),
                         np.asarray(batch.rejected)), run,
                        fresh=fresh, log=log, sft=sft)


def rl_stage(config: PipelineConfig, sft: StageResult, rm: StageResult, *,
             pushed_from: StageResult | None = None, fresh: bool = False, progress: bool = True,
             log: Log = print) -> StageResult:
    """Stage 4 (book ch. 6): RL from the SFT model, rewarded by the reward model (or the gold
    reward), on the training questions; or the cached policy. With ``pushed_from`` (the
    default run's result), ``config.rl_pushed`` continues from that policy instead (book ch.
    14: the same proxy, optimised further, with no KL penalty). After every chunk of steps the
    policy answers ``config.curve_questions`` rephrased questions once at temperature 1: their
    mean gold reward, reward-model score and KL to the SFT model are the metrics' ``curve``
    (the over-optimisation plot)."""
    model_config = gpt.get_config(config.model)
    pushed = pushed_from is not None
    rc = config.rl_pushed if pushed else config.rl
    stage, name = ("rl_pushed", "rl (pushed)") if pushed else ("rl", "rl")
    start_params = pushed_from.params if pushed else sft.params
    questions = data.split_questions(seed=config.seed)[0]
    prompts = encode_prompts([q.prompt for q in questions])
    if prompts.tokens.shape[1] + rc.max_new_tokens > model_config.max_seq_len:
        raise ValueError(f"RL prompts ({prompts.tokens.shape[1]} tokens) + max_new_tokens "
                         f"{rc.max_new_tokens} exceed the model's {model_config.max_seq_len}")
    rephrased = heldout_questions(config)
    curve_questions = [rephrased[i] for i in spread(len(rephrased), config.curve_questions)]
    rm_reward = ch06.reward_model_reward(rm.params, model_config, config.reward_model.pooling)

    def run():
        if config.rl_reward == "gold":
            reward = ch06.text_reward(data.gold_reward, questions)
        else:
            reward = rm_reward
        log(f"[{name}] {rc.algorithm} on {len(questions)} training questions, rewarded by "
            f"the {config.rl_reward.replace('_', ' ')}: {rc.steps} steps x "
            f"{rc.prompts_per_step} prompts x {rc.group_size} completions, beta={rc.beta}, "
            f"lr={rc.learning_rate}")
        def measure(lm_params) -> dict:
            # the same key at every point: differences along the curve are the policy's
            a = answer_samples(lm_params, curve_questions, model_config,
                               jax.random.PRNGKey(config.seed),
                               max_new_tokens=eval_max_new_tokens(model_config, prompts),
                               ref_params=sft.params, reward=rm_reward)
            return {"gold": float(a["gold"].mean()), "rm": float(a["reward"].mean()),
                    "kl": float(a["kl"].mean())}

        start = measure(start_params)
        params, history = ch06.train_rl(rc, model_config, start_params, prompts, reward,
                                        ref_params=sft.params, seed=config.seed,
                                        progress=progress,
                                        evaluate=lambda state: measure(state.params["lm"]))
        first = config.rl.steps if pushed else 0
        curve = {"step": [first, *(first + int(k) for k in history["eval_step"])],
                 **{k: [start[k], *map(float, history[f"eval_{k}"])] for k in start}}
        return params, {"history": _lists(history), "curve": curve}

    upstream = {"start": pushed_from} if pushed else {}
    return cached_stage(config, stage, name,
                        (sft.path.name, rm.path.name, pushed_from.path.name if pushed else None,
                         rc, config.rl_reward, config.seed, config.curve_questions,
                         np.asarray(prompts.tokens)), run,
                        fresh=fresh, log=log, sft=sft, reward_model=rm, **upstream)


def arithmetic_training_questions(config: PipelineConfig) -> list:
    """The training sums under the training phrasings (what SFT demonstrated): RLVR's prompts."""
    return [q for q in data.question_splits(seed=config.seed).train if q.topic == "arithmetic"]


def rlvr_stage(config: PipelineConfig, sft: StageResult, *, fresh: bool = False,
               progress: bool = True, log: Log = print) -> StageResult:
    """Stage 4b (book ch. 7): RL with a verifiable reward from the SFT model -- GRPO on the
    training sums, each answer rewarded 1 when its last integer is the sum, else 0
    (:func:`rlhf_book.ch07_reasoning.loop.last_integer_verifier`); or the cached policy."""
    model_config = gpt.get_config(config.model)
    rc = config.rlvr
    questions = arithmetic_training_questions(config)
    prompts = encode_prompts([q.prompt for q in questions])

    def run():
        log(f"[rlvr] {rc.algorithm} on {len(questions)} training sums, rewarded 1 when the last "
            f"integer is the sum: {rc.steps} steps x {rc.prompts_per_step} prompts x "
            f"{rc.group_size} completions, beta={rc.beta}, lr={rc.learning_rate}")
        params, history = ch07.train_rlvr(rc, model_config, sft.params, prompts,
                                          ch07.verifier_reward(questions, "last_integer"),
                                          advantage="grpo", online_filter=False,
                                          seed=config.seed, progress=progress)
        return params, {"history": _lists(history)}

    return cached_stage(config, "rlvr", "rlvr",
                        (sft.path.name, rc, config.seed, np.asarray(prompts.tokens)), run,
                        fresh=fresh, log=log, sft=sft)


def dpo_stage(config: PipelineConfig, sft: StageResult, rm: StageResult, *, fresh: bool = False,
              progress: bool = True, log: Log = print) -> StageResult:
    """Stage 5 (book ch. 8): DPO from the SFT model, with the SFT model as the reference; or
    the cached policy. With ``config.dpo.on_policy`` (the default) its pairs are the policy's
    own samples for the training questions, the reward model's favourite and least favourite
    of each group (online DPO; Guo et al., 2024); otherwise the annotators' pairs the reward
    model was trained on (offline). Its metrics include the implicit reward's accuracy on the
    held-out pairs (book eq. 80: the policy read as a reward model), next to the reward
    model's."""
    model_config = gpt.get_config(config.model)
    dc = config.dpo
    train_pairs, heldout_pairs = (fitting(pairs, model_config.max_seq_len)
                                  for pairs in preference_data(config))
    questions = data.split_questions(seed=config.seed)[0]
    prompts = encode_prompts([q.prompt for q in questions])
    batch = None if dc.on_policy else ch08.encode_preference_pairs(train_pairs)

    def run():
        if dc.on_policy:
            log(f"[dpo] online {dc.loss} on {len(questions)} training questions: {dc.steps} steps "
                f"x {dc.batch_size} prompts x {dc.completions_per_prompt} samples, the reward "
                f"model's best vs worst; beta={dc.beta}, lr={dc.learning_rate}")
            reward = ch06.reward_model_reward(rm.params, model_config, config.reward_model.pooling)
            params, history = ch08.train_dpo(dc, model_config, sft.params, prompts=prompts,
                                             reward=reward, seed=config.seed, progress=progress)
        else:
            log(f"[dpo] {dc.loss} on {len(train_pairs):,} annotated pairs (offline), "
                f"beta={dc.beta}, lr={dc.learning_rate}, {dc.steps} steps x {dc.batch_size} pairs")
            params, history = ch08.train_dpo(dc, model_config, sft.params, batch,
                                             seed=config.seed, progress=progress)
        heldout = ch08.implicit_reward_accuracy(params, sft.params, heldout_pairs, model_config,
                                                beta=dc.beta)
        return params, {"history": _lists(history), "heldout": heldout}

    data_key = (rm.path.name, np.asarray(prompts.tokens)) if dc.on_policy else (
        config.annotators, config.annotator_noise, config.annotator_bias,
        config.correctness_pairs, np.asarray(batch.chosen), np.asarray(batch.rejected))
    return cached_stage(config, "dpo", "dpo", (sft.path.name, dc, config.seed, *data_key), run,
                        fresh=fresh, log=log, sft=sft, reward_model=rm)


def best_of_n_stage(config: PipelineConfig, sft: StageResult, rm: StageResult,
                    questions) -> ch09.BestOfN:
    """Stage 6 (book ch. 9): best-of-``config.best_of_n`` sampling from the SFT model on
    ``questions``, at temperature 1, ranked by the reward model. It trains nothing (a second of
    sampling), so nothing is cached."""
    model_config = gpt.get_config(config.model)
    prompts = encode_prompts([q.prompt for q in questions])
    reward = ch06.reward_model_reward(rm.params, model_config, config.reward_model.pooling)
    return ch09.best_of_n_sample(sft.params, model_config, prompts, reward, config.best_of_n,
                                 jax.random.PRNGKey(config.seed),
                                 max_new_tokens=eval_max_new_tokens(model_config, prompts))


def eval_max_new_tokens(model_config: gpt.GPTConfig, prompts) -> int:
    """64 new tokens per answer (room for a padded answer), or what the context leaves."""
    return min(64, model_config.max_seq_len - prompts.tokens.shape[1])
