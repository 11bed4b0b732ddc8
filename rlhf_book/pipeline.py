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

Every stage is cached under ``out_dir`` by a key that hashes everything that determines its
result (model shape, optimisation settings, seed and the exact token stream), so a second run
loads the checkpoint in a second instead of training again, and any change retrains.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import pathlib
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.figure import Figure

from rlhf_book import ch04_instruction_tuning as ch04
from rlhf_book import ch05_reward_models as ch05
from rlhf_book import ch06_policy_gradients as ch06
from rlhf_book import ch08_direct_alignment as ch08
from rlhf_book import ch09_rejection_sampling as ch09
from rlhf_book import data
from rlhf_book.lm import gpt, sampling, tokenizer, train
from rlhf_book.lm.eval import evaluate_policy

# The prompts the pipeline shows samples for: a fact the corpus states, a Q/A, an arithmetic line.
PRETRAIN_SAMPLE_PROMPTS = (
    "The capital of France is",
    "Q: What sound does a cow make?\nA:",
    "3 + 4 =",
)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """What the pipeline trains. ``quick()`` is a seconds-long version for tests and smoke runs."""

    model: str = "mini"
    # 1200 steps of 16 x 128 tokens (2.5M tokens, ~3 passes over the corpus): about 2-3 minutes
    # on a 2-core CPU; enough for capitals and animal sounds, not yet for arithmetic.
    pretrain: train.TrainConfig = train.TrainConfig(steps=1200, batch_size=16)
    corpus_documents: int = 6000
    eval_fraction: float = 0.05
    # SFT: 150 steps of 16 packed rows (~2 conversations each), ~25 s on a 2-core CPU.
    sft: ch04.SFTConfig = ch04.SFTConfig()
    # Held-out questions answered by each model; None: all 126 (every template of the 42
    # held-out facts). Greedy answers to all of them take a few seconds.
    eval_questions: int | None = None
    # Reward model: pairs labelled by the majority of 3 Bradley-Terry annotators (ch. 11).
    reward_model: ch05.RMConfig = ch05.RMConfig()
    annotators: int = 3
    annotator_noise: float = 0.5
    eval_pairs: int = 1000  # pairs about held-out facts the reward model is tested on
    # RL (ch. 6): GRPO on prompts about training facts, rewarded by the reward model
    # ("reward_model") or, as an oracle, by the gold reward itself ("gold").
    rl: ch06.RLConfig = ch06.RLConfig(algorithm="grpo", steps=40, learning_rate=3e-5, beta=0.1,
                                      max_new_tokens=48)
    rl_reward: str = "reward_model"
    # DPO (ch. 8) from the SFT model on the reward model's training pairs (offline), and
    # best-of-N sampling (ch. 9) from the SFT model, ranked by the reward model.
    dpo: ch08.DPOConfig = ch08.DPOConfig(beta=0.5, learning_rate=3e-5, steps=100, batch_size=16,
                                         log_every=20)
    best_of_n: int = 8
    seed: int = 0
    out_dir: str = "runs"

    @classmethod
    def quick(cls, out_dir: str = "runs/quick") -> "PipelineConfig":
        return cls(
            model="tiny",
            pretrain=train.TrainConfig(steps=60, batch_size=8, seq_len=64, warmup_steps=10,
                                       log_every=20),
            corpus_documents=400,
            sft=ch04.SFTConfig(steps=20, batch_size=8, seq_len=64, warmup_steps=4,
                               n_demonstrations=200, log_every=10),
            eval_questions=8,
            reward_model=ch05.RMConfig(steps=20, batch_size=8, seq_len=64, warmup_steps=4,
                                       n_pairs=200, log_every=10),
            eval_pairs=64,
            rl=ch06.RLConfig(steps=4, prompts_per_step=4, group_size=4, max_new_tokens=16,
                             log_every=2),
            dpo=ch08.DPOConfig(steps=4, batch_size=8, log_every=2),
            best_of_n=4,
            out_dir=out_dir,
        )


    def __post_init__(self):
        if not isinstance(self.best_of_n, int) or self.best_of_n < 1:
            raise ValueError(f"PipelineConfig.best_of_n must be an int >= 1, got "
                             f"{self.best_of_n!r}")
        if self.rl_reward not in ("reward_model", "gold"):
            raise ValueError(f"PipelineConfig.rl_reward must be 'reward_model' or 'gold', "
                             f"got {self.rl_reward!r}")


@dataclasses.dataclass
class StageResult:
    """What a stage hands to the next stage and to the results table."""

    name: str
    params: dict
    metrics: dict
    path: pathlib.Path
    cached: bool
    seconds: float


def corpus_streams(config: PipelineConfig) -> tuple[np.ndarray, np.ndarray]:
    """The pretraining corpus as train and held-out token streams (split by document)."""
    docs = data.pretraining_corpus(seed=config.seed, n_documents=config.corpus_documents)
    n_eval = max(1, int(len(docs) * config.eval_fraction))
    return train.token_stream(docs[n_eval:]), train.token_stream(docs[:n_eval])


def _cache_key(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.tobytes() if isinstance(part, np.ndarray) else json.dumps(part, sort_keys=True,
                                                                                default=str).encode())
    return h.hexdigest()[:12]


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


def load_stage(name: str, path: pathlib.Path, log: Callable[[str], None]) -> StageResult:
    """A stage's cached checkpoint, with the metrics stored beside its parameters."""
    start = time.perf_counter()
    params, meta = train.load_checkpoint(path)
    log(f"[{name}] loaded cached checkpoint {path}")
    return StageResult(name, params, meta["metrics"], path, True, time.perf_counter() - start)


def pretrain_stage(config: PipelineConfig, *, fresh: bool = False, progress: bool = True,
                   log: Callable[[str], None] = print) -> StageResult:
    """Stage 1: pretrain the mini GPT on the corpus, or load the cached checkpoint."""
    model_config = gpt.get_config(config.model)
    train_stream, eval_stream = corpus_streams(config)
    key = _cache_key(dataclasses.asdict(model_config), dataclasses.asdict(config.pretrain),
                     config.seed, train_stream, eval_stream)
    path = pathlib.Path(config.out_dir) / "checkpoints" / f"pretrain-{config.model}-{key}.msgpack"
    start = time.perf_counter()
    if path.exists() and not fresh:
        return load_stage("pretrain", path, log)

    # eval_shape counts the parameters from their shapes without initialising them.
    shapes = jax.eval_shape(functools.partial(gpt.init_params, config=model_config),
                            jax.random.PRNGKey(0))
    log(f"[pretrain] {config.model} GPT, {gpt.count_params(shapes):,} parameters; corpus {len(train_stream):,} train / {len(eval_stream):,} held-out tokens")
    params, history = train.pretrain(model_config, config.pretrain, train_stream, eval_stream,
                                     seed=config.seed, progress=progress)
    metrics = {
        "final_train_loss": float(np.mean(history["loss"][-config.pretrain.log_every:])),
        "final_eval_loss": float(history["eval_loss"][-1]),
        "initial_loss": float(history["loss"][0]),
        "tokens_seen": config.pretrain.steps * config.pretrain.batch_size * config.pretrain.seq_len,
        "history": {k: np.asarray(v).tolist() for k, v in history.items()},
        "train_seconds": time.perf_counter() - start,
    }
    train.save_checkpoint(path, params, {"model": dataclasses.asdict(model_config),
                                         "stage": "pretrain", "metrics": metrics})
    return StageResult("pretrain", params, metrics, path, False, time.perf_counter() - start)


def heldout_questions(config: PipelineConfig) -> list:
    """The held-out questions every stage is evaluated on: facts no demonstration contains."""
    heldout = data.split_questions(seed=config.seed)[1]
    if config.eval_questions is None or config.eval_questions >= len(heldout):
        return heldout
    rng = np.random.default_rng(config.seed + 1)
    pick = rng.choice(len(heldout), size=config.eval_questions, replace=False)
    return [heldout[i] for i in sorted(pick)]


def evaluate_model(params, model_config: gpt.GPTConfig, questions) -> tuple[dict, list[str]]:
    """Greedy answers to ``questions`` through the chat template, scored (ch. 4 evaluation)."""
    answers, stopped = ch04.generate_answers(params, model_config, questions, max_new_tokens=64)
    return ch04.evaluate_answers(questions, answers, stopped), answers


def sft_stage(config: PipelineConfig, pretrained: StageResult, *, fresh: bool = False,
              progress: bool = True, log: Callable[[str], None] = print) -> StageResult:
    """Stage 2: fine-tune the pretrained model on chat demonstrations (book ch. 4), or load the
    cached checkpoint. Conversations longer than the SFT rows are left out (and counted)."""
    model_config = gpt.get_config(config.model)
    sc = config.sft
    conversations = data.sft_demonstrations(seed=config.seed, n=sc.n_demonstrations)
    examples = [e for e in ch04.sft_examples(conversations, mask_prompt=sc.mask_prompt)
                if len(e[0]) <= sc.seq_len]
    n_eval = max(1, len(examples) // 20)
    make = ch04.pack_examples if sc.packing else ch04.pad_examples
    batch, eval_batch = make(examples[n_eval:], sc.seq_len), make(examples[:n_eval], sc.seq_len)
    key = _cache_key(pretrained.path.name, dataclasses.asdict(sc), config.seed, batch.tokens,
                     batch.loss_mask)
    path = pathlib.Path(config.out_dir) / "checkpoints" / f"sft-{config.model}-{key}.msgpack"
    start = time.perf_counter()
    if path.exists() and not fresh:
        return load_stage("sft", path, log)
    log(f"[sft] {len(examples):,} of {len(conversations):,} demonstrations fit {sc.seq_len} "
        f"tokens; {'packed' if sc.packing else 'padded'} into {batch.tokens.shape[0]:,} rows "
        f"(+{eval_batch.tokens.shape[0]} held-out rows)")
    params, history = ch04.train_sft(model_config, pretrained.params, sc, batch,
                                     eval_batch=eval_batch, seed=config.seed, progress=progress)
    metrics = {
        "initial_loss": float(history["loss"][0]),
        "final_train_loss": float(np.mean(history["loss"][-sc.log_every:])),
        "final_eval_loss": float(history["eval_loss"][-1]),
        "history": {k: np.asarray(v).tolist() for k, v in history.items()},
        "train_seconds": time.perf_counter() - start,
    }
    train.save_checkpoint(path, params, {"model": dataclasses.asdict(model_config),
                                         "stage": "sft", "metrics": metrics,
                                         "pretrained": pretrained.path.name})
    return StageResult("sft", params, metrics, path, False, time.perf_counter() - start)


def preference_data(config: PipelineConfig):
    """``(train_pairs, heldout_pairs)``: annotated pairs about training facts, and pairs about
    held-out facts (never in a demonstration or a training pair) to test the reward model on."""
    kw = dict(n_annotators=config.annotators, noise=config.annotator_noise)
    train_pairs = data.preference_pairs(seed=config.seed, n=config.reward_model.n_pairs, **kw)
    heldout = data.split_questions(seed=config.seed)[1]
    heldout_pairs = data.preference_pairs(seed=config.seed + 1, n=config.eval_pairs,
                                          questions=heldout, **kw)
    return train_pairs, heldout_pairs


def _fitting(pairs, length: int) -> list:
    """The pairs whose chosen and rejected conversations both fit ``length`` tokens (all of
    them for the mini GPT's 128; the quick run's 64-token tiny model drops the longer ones)."""
    return [p for p in pairs if max(len(ch05.encode_conversation(p.prompt, p.chosen)),
                                    len(ch05.encode_conversation(p.prompt, p.rejected))) <= length]


def reward_model_stage(config: PipelineConfig, sft: StageResult, *, fresh: bool = False,
                       progress: bool = True, log: Callable[[str], None] = print) -> StageResult:
    """Stage 3: a Bradley-Terry reward model on the SFT model (book ch. 5), or the cached one.

    Its metrics compare the accuracy on held-out pairs with two references from the annotator
    model: the ceiling (the best accuracy any model can reach on those labels) and the
    annotators' agreement with each other."""
    model_config = gpt.get_config(config.model)
    rc = config.reward_model
    train_pairs, heldout_pairs = (_fitting(pairs, rc.seq_len) for pairs in preference_data(config))
    batch = ch05.encode_pairs(train_pairs, rc.seq_len)
    eval_batch = ch05.encode_pairs(heldout_pairs, rc.seq_len)
    key = _cache_key(sft.path.name, dataclasses.asdict(rc), config.seed, config.annotators,
                     config.annotator_noise, batch.chosen, batch.rejected)
    path = pathlib.Path(config.out_dir) / "checkpoints" / f"reward-{config.model}-{key}.msgpack"
    start = time.perf_counter()
    if path.exists() and not fresh:
        return load_stage("reward model", path, log)
    log(f"[reward model] {len(train_pairs):,} training pairs, {len(heldout_pairs):,} held-out "
        f"pairs; {config.annotators} annotators per pair, noise {config.annotator_noise}")
    params = ch05.init_reward_model(jax.random.PRNGKey(config.seed), sft.params, model_config)
    params, history = ch05.train_reward_model(model_config, params, rc, batch,
                                              eval_batch=eval_batch, seed=config.seed,
                                              progress=progress)
    r_c, r_r = ch05.score_pairs(params, model_config, eval_batch, rc.pooling)
    gold_c = [p.gold_chosen for p in heldout_pairs]
    gold_r = [p.gold_rejected for p in heldout_pairs]
    metrics = {
        "initial_loss": float(np.mean(history["loss"][:rc.log_every])),
        "final_train_loss": float(np.mean(history["loss"][-rc.log_every:])),
        "final_eval_loss": float(history["eval_loss"][-1]),
        "history": {k: np.asarray(v).tolist() for k, v in history.items()},
        **{f"heldout_{k}": v for k, v in ch05.reward_margins(r_c, r_r).items()},
        "heldout_gold_accuracy": ch05.gold_pair_accuracy(heldout_pairs, r_c, r_r),
        "ceiling": data.bt_accuracy_ceiling(gold_c, gold_r, config.annotator_noise,
                                            config.annotators),
        "agreement": data.inter_annotator_agreement([p.votes for p in heldout_pairs])
        if config.annotators > 1 else float("nan"),
        "heldout_rewards": {"chosen": r_c.tolist(), "rejected": r_r.tolist()},
        "train_pairs": len(train_pairs),
        "eval_pairs": len(heldout_pairs),
        "train_seconds": time.perf_counter() - start,
    }
    train.save_checkpoint(path, params, {"model": dataclasses.asdict(model_config),
                                         "stage": "reward model", "metrics": metrics,
                                         "sft": sft.path.name})
    return StageResult("reward model", params, metrics, path, False, time.perf_counter() - start)


_reward_scores = jax.jit(ch05.reward_scores, static_argnums=(3, 4))


def policy_report(params, sft_params, rm_params, model_config: gpt.GPTConfig, questions, *,
                  pooling: str = "last", seed: int = 0) -> dict:
    """What the RL stage reports for a policy on ``questions`` (held out): greedy answers
    scored by the gold reward and by the reward model (reading exactly the generated tokens, as
    in RL), their length, and the sampled KL to the SFT model (``lm.eval.evaluate_policy``, 4 samples
    per question at temperature 1)."""
    prompts = ch06.encode_prompts([q.prompt for q in questions])
    max_new = min(48, model_config.max_seq_len - prompts.tokens.shape[1])
    gen = sampling.generate(params, prompts.tokens, jax.random.PRNGKey(seed), model_config,
                            prompt_lengths=prompts.lengths, max_new_tokens=max_new,
                            temperature=0.0)
    answers = sampling.completions(gen)
    stopped = np.any((np.asarray(gen.tokens) == tokenizer.END) & np.asarray(gen.mask, bool), 1)
    metrics = ch04.evaluate_answers(questions, answers, stopped.tolist())
    real = (gen.tokens != tokenizer.PAD).astype(jnp.int32)  # prompt + answer, as in RL
    rm = np.asarray(_reward_scores(rm_params, gen.tokens, real, model_config, pooling))
    kl = evaluate_policy(params, questions, model_config, jax.random.PRNGKey(seed),
                         ref_params=sft_params, samples=4, temperature=1.0,
                         max_new_tokens=max_new)
    return {**metrics, "rm_score": float(rm.mean()), "kl_to_sft": kl["kl"],
            "kl_to_sft_se": kl["kl_se"], "sampled_length": kl["length"], "answers": answers}


def best_of_n_report(sft_params, rm_params, model_config: gpt.GPTConfig, questions, n: int, *,
                     pooling: str = "last", seed: int = 0) -> dict:
    """Best-of-``n`` from the SFT model (book ch. 9) on ``questions`` (held out): ``n``
    completions per question sampled at temperature 1, the reward model's favourite kept. Its
    gold reward, accuracy and length are measured like a policy's; the KL to the SFT model is
    the analytic bound ``log n - (n - 1)/n`` (``ch09.best_of_n_kl``: exact for continuous
    rewards, an upper bound with ties). ``single`` is the gold reward of one sample (all ``n``
    averaged): what best-of-``n`` improves on."""
    prompts = ch06.encode_prompts([q.prompt for q in questions])
    max_new = min(48, model_config.max_seq_len - prompts.tokens.shape[1])
    reward = ch06.reward_model_reward(rm_params, model_config, pooling)
    bon = ch09.best_of_n_sample(sft_params, model_config, prompts, reward, n,
                                jax.random.PRNGKey(seed), max_new_tokens=max_new)
    answers = sampling.decode_masked(bon.tokens, bon.mask)
    chosen_stopped = np.asarray(bon.stopped)[np.arange(len(questions)), np.asarray(bon.choice)]
    metrics = ch04.evaluate_answers(questions, answers, chosen_stopped.tolist())
    B, _, T = bon.all_tokens.shape
    every = sampling.decode_masked(np.asarray(bon.all_tokens).reshape(B * n, T),
                                   np.asarray(bon.all_mask).reshape(B * n, T))
    single = data.gold_reward_batch([q for q in questions for _ in range(n)], every)
    return {**metrics, "rm_score": float(np.mean(bon.rewards)),
            "kl_to_sft": float(ch09.best_of_n_kl(n)), "single_gold_reward": float(np.mean(single)),
            "single_rm_score": float(np.mean(bon.all_rewards)), "n_samples": n,
            "answers": answers}


def rl_stage(config: PipelineConfig, sft: StageResult, rm: StageResult, *, fresh: bool = False,
             progress: bool = True, log: Callable[[str], None] = print) -> StageResult:
    """Stage 4: RL from the SFT model (book ch. 6), rewarded by the reward model (or the gold
    reward), on prompts about training facts; or the cached policy."""
    model_config = gpt.get_config(config.model)
    rc = config.rl
    questions = data.split_questions(seed=config.seed)[0]
    prompts = ch06.encode_prompts([q.prompt for q in questions])
    if prompts.tokens.shape[1] + rc.max_new_tokens > model_config.max_seq_len:
        raise ValueError(f"RL prompts ({prompts.tokens.shape[1]} tokens) + max_new_tokens "
                         f"{rc.max_new_tokens} exceed the model's {model_config.max_seq_len}")
    key = _cache_key(sft.path.name, rm.path.name, dataclasses.asdict(rc), config.rl_reward,
                     config.seed, np.asarray(prompts.tokens))
    path = pathlib.Path(config.out_dir) / "checkpoints" / f"rl-{config.model}-{key}.msgpack"
    if path.exists() and not fresh:
        return load_stage("rl", path, log)
    start = time.perf_counter()
    if config.rl_reward == "gold":
        reward = ch06.text_reward(data.gold_reward, questions)
    else:
        reward = ch06.reward_model_reward(rm.params, model_config, config.reward_model.pooling)
    log(f"[rl] {rc.algorithm} on {len(questions)} prompts about training facts, rewarded by "
        f"the {config.rl_reward.replace('_', ' ')}: {rc.steps} steps x {rc.prompts_per_step} "
        f"prompts x {rc.group_size} completions, beta={rc.beta}, lr={rc.learning_rate}")
    params, history = ch06.train_rl(rc, model_config, sft.params, prompts, reward,
                                    seed=config.seed, progress=progress)
    metrics = {"history": {k: v for k, v in history.items() if k != "eval"},
               "train_seconds": time.perf_counter() - start}
    train.save_checkpoint(path, params, {"model": dataclasses.asdict(model_config), "stage": "rl",
                                         "metrics": metrics, "sft": sft.path.name,
                                         "reward_model": rm.path.name})
    return StageResult("rl", params, metrics, path, False, time.perf_counter() - start)


def dpo_stage(config: PipelineConfig, sft: StageResult, *, fresh: bool = False,
              progress: bool = True, log: Callable[[str], None] = print) -> StageResult:
    """Stage 5: DPO from the SFT model (book ch. 8) on the annotators' pairs the reward model
    was trained on (offline), with the SFT model as the reference; or the cached policy. Its
    metrics include the implicit reward's accuracy on the held-out pairs (book eq. 80: the
    policy read as a reward model), next to the reward model's."""
    model_config = gpt.get_config(config.model)
    dc = config.dpo
    train_pairs, heldout_pairs = (_fitting(pairs, model_config.max_seq_len)
                                  for pairs in preference_data(config))
    batch = ch08.encode_preference_pairs(train_pairs)
    key = _cache_key(sft.path.name, dataclasses.asdict(dc), config.seed, config.annotators,
                     config.annotator_noise, np.asarray(batch.chosen), np.asarray(batch.rejected))
    path = pathlib.Path(config.out_dir) / "checkpoints" / f"dpo-{config.model}-{key}.msgpack"
    if path.exists() and not fresh:
        return load_stage("dpo", path, log)
    start = time.perf_counter()
    log(f"[dpo] {dc.loss} on {len(train_pairs):,} annotated pairs (offline), beta={dc.beta}, "
        f"lr={dc.learning_rate}, {dc.steps} steps x {dc.batch_size} pairs")
    params, history = ch08.train_dpo(dc, model_config, sft.params, batch, seed=config.seed,
                                     progress=progress)
    heldout = ch08.implicit_reward_accuracy(params, sft.params, heldout_pairs, model_config,
                                            beta=dc.beta)
    metrics = {"history": {k: v for k, v in history.items() if k != "eval"},
               "heldout": heldout, "train_seconds": time.perf_counter() - start}
    train.save_checkpoint(path, params, {"model": dataclasses.asdict(model_config),
                                         "stage": "dpo", "metrics": metrics,
                                         "sft": sft.path.name})
    return StageResult("dpo", params, metrics, path, False, time.perf_counter() - start)


def plot_rl_curves(history: dict, path: pathlib.Path, reward_name: str) -> pathlib.Path:
    """The RL stage's training curves: mean reward of the sampled completions and their KL to
    the SFT model, per step."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    steps = np.arange(1, len(history["score"]) + 1)
    ax.plot(steps, history["score"], label=f"{reward_name} (mean of samples)")
    ax.plot(steps, history["kl"], label="KL to SFT (nats per completion)")
    ax.set(xlabel="RL step", title="RL from the SFT model")
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
    ax.set(xlabel="DPO step", title="DPO from the SFT model")
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
    ax.set(xlabel="reward r(x, y)", ylabel="pairs",
           title=f"Reward model on held-out pairs: accuracy {metrics['heldout_accuracy']:.1%} "
                 f"(ceiling {metrics['ceiling']:.1%})")
    return _save(fig, ax, path)


def _save(fig: Figure, ax, path: pathlib.Path) -> pathlib.Path:
    """Grid, legend and layout, then write the figure as a PNG (no pyplot: no global state)."""
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def _table(rows, log):
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for k, r in enumerate(rows):
        log("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if k == 0:
            log("  " + "  ".join("-" * w for w in widths).rstrip())


def plot_loss_curve(history: dict, path: pathlib.Path, title: str = "Pretraining the mini GPT"):
    """Save the per-step training loss (and held-out loss per chunk) as a PNG."""
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot(history["step"], history["loss"], lw=0.8, alpha=0.7, label="train (per step)")
    if len(history.get("eval_loss", [])):
        ax.plot(history["eval_step"], history["eval_loss"], "o-", ms=3, label="held-out")
    ax.set(xlabel="step", ylabel="next-byte loss (nats)", title=title)
    return _save(fig, ax, path)


def run_pipeline(config: PipelineConfig, *, fresh: bool = False, progress: bool = True,
                 log: Callable[[str], None] = print) -> dict:
    """Run every stage in order and print a results table. Returns the stages' results."""
    model_config = gpt.get_config(config.model)
    out = pathlib.Path(config.out_dir)
    t0 = time.perf_counter()
    log(f"rlhf-book pipeline: model={config.model}, out_dir={out}, JAX devices={jax.devices()}")

    init = gpt.init_params(jax.random.PRNGKey(config.seed), model_config)
    before = sample_texts(init, model_config, PRETRAIN_SAMPLE_PROMPTS)
    stage = pretrain_stage(config, fresh=fresh, progress=progress, log=log)
    after = sample_texts(stage.params, model_config, PRETRAIN_SAMPLE_PROMPTS)
    figure = plot_loss_curve(stage.metrics["history"], out / "figures" / "pretrain_loss.png")

    log("\nSamples (greedy), before -> after pretraining:")
    for prompt, b, a in zip(PRETRAIN_SAMPLE_PROMPTS, before, after):
        log(f"  {prompt!r}\n    before: {b[:60]!r}\n    after:  {a[:60]!r}")

    sft = sft_stage(config, stage, fresh=fresh, progress=progress, log=log)
    sft_figure = plot_loss_curve(sft.metrics["history"], out / "figures" / "sft_loss.png",
                                 title="SFT of the pretrained mini GPT (assistant tokens)")
    questions = heldout_questions(config)
    evaluation = {"pretrained": evaluate_model(stage.params, model_config, questions),
                  "sft": evaluate_model(sft.params, model_config, questions)}
    log("\nAnswers to held-out questions (greedy, through the chat template), "
        "pretrained -> SFT:")
    for k, q in enumerate(questions[:4]):
        log(f"  {q.prompt!r} (gold: {q.answer})\n"
            f"    pretrained: {evaluation['pretrained'][1][k][:60]!r}\n"
            f"    sft:        {evaluation['sft'][1][k][:60]!r}")

    rm = reward_model_stage(config, sft, fresh=fresh, progress=progress, log=log)
    rm_figure = plot_reward_histograms(rm.metrics, out / "figures" / "reward_model.png")

    rl = rl_stage(config, sft, rm, fresh=fresh, progress=progress, log=log)
    reward_name = config.rl_reward.replace("_", " ")
    rl_figure = plot_rl_curves(rl.metrics["history"], out / "figures" / "rl.png", reward_name)
    dpo = dpo_stage(config, sft, fresh=fresh, progress=progress, log=log)
    dpo_figure = plot_dpo_curves(dpo.metrics["history"], out / "figures" / "dpo.png")
    pooling = config.reward_model.pooling
    report = {name: policy_report(params, sft.params, rm.params, model_config, questions,
                                  pooling=pooling, seed=config.seed)
              for name, params in (("sft", sft.params), ("rl", rl.params),
                                   ("dpo", dpo.params))}
    bon_name = f"best-of-{config.best_of_n}"
    report[bon_name] = best_of_n_report(sft.params, rm.params, model_config, questions,
                                        config.best_of_n, pooling=pooling, seed=config.seed)

    rows = [("stage", "params", "steps", "loss start", "train loss", "held-out loss", "time", "")]
    for result, steps in ((stage, config.pretrain.steps), (sft, config.sft.steps),
                          (rm, config.reward_model.steps)):
        m = result.metrics
        rows.append((result.name, f"{gpt.count_params(result.params):,}", str(steps),
                     f"{m['initial_loss']:.3f}", f"{m['final_train_loss']:.3f}",
                     f"{m['final_eval_loss']:.3f}", f"{result.seconds:.1f}s",
                     "(cached)" if result.cached else ""))
    log("\nResults (losses in nats: per predicted token for pretraining and SFT, SFT counting "
        "assistant tokens only; per pair for the reward model)")
    _table(rows, log)

    rows = [("model", "gold reward", "accuracy", "answer bytes", "stops by itself")]
    for name, (m, _) in evaluation.items():
        rows.append((name, f"{m['gold_reward']:+.3f}", f"{m['accuracy']:.1%}",
                     f"{m['answer_bytes']:.1f}", f"{m['stopped']:.0%}"))
    n_facts = len({(q.topic, q.subject) for q in questions})
    log(f"\nHeld-out questions ({len(questions)} questions about {n_facts} facts never in a "
        f"demonstration; gold reward in [{data.GOLD_MIN}, {data.GOLD_MAX}])")
    _table(rows, log)
    m = rm.metrics
    rows = [("reward model", "accuracy", "vs gold", "ceiling", "annotator agreement",
             "mean r chosen", "mean r rejected"),
            ("held-out pairs", f"{m['heldout_accuracy']:.1%}", f"{m['heldout_gold_accuracy']:.1%}",
             f"{m['ceiling']:.1%}", f"{m['agreement']:.1%}", f"{m['heldout_mean_chosen']:+.2f}",
             f"{m['heldout_mean_rejected']:+.2f}")]
    log(f"\nReward model on {m['eval_pairs']} pairs about held-out facts (accuracy: against "
        f"the annotators' majority label; vs gold: against the higher gold reward; ceiling: the "
        f"best accuracy any model can reach on these labels)")
    _table(rows, log)
    h = rl.metrics["history"]
    k = max(1, len(h["score"]) // 4)
    log(f"\nRL ({config.rl.algorithm}, rewarded by the {reward_name}): mean {reward_name} of "
        f"the sampled completions {np.mean(h['score'][:k]):+.3f} (first {k} steps) -> "
        f"{np.mean(h['score'][-k:]):+.3f} (last {k}); KL to SFT {h['kl'][-1]:.2f} nats")
    d = dpo.metrics["heldout"]
    log(f"\nDPO ({config.dpo.loss}, beta={config.dpo.beta}): the implicit reward "
        f"beta*log(pi/pi_sft) ranks {d['accuracy']:.1%} +- {d['accuracy_se']:.1%} of the held-out "
        f"pairs as the annotators did (reward model: {rm.metrics['heldout_accuracy']:.1%}) and "
        f"{d['gold_accuracy']:.1%} as the gold reward does; mean log-prob of the chosen "
        f"responses {dpo.metrics['history']['logps/chosen'][0]:+.1f} -> "
        f"{dpo.metrics['history']['logps/chosen'][-1]:+.1f}, rejected "
        f"{dpo.metrics['history']['logps/rejected'][0]:+.1f} -> "
        f"{dpo.metrics['history']['logps/rejected'][-1]:+.1f} nats (training batches)")
    b = report[bon_name]
    log(f"Best-of-{config.best_of_n} (ranked by the reward model): one sample -> the reward "
        f"model's pick: RM score {b['single_rm_score']:+.3f} -> {b['rm_score']:+.3f}, gold "
        f"reward {b['single_gold_reward']:+.3f} -> {b['gold_reward']:+.3f}; KL to SFT <= "
        f"log N - (N-1)/N = {b['kl_to_sft']:.2f} nats")
    rows = [("model", "gold reward", "accuracy", "RM score", "KL to SFT", "answer bytes")]
    for name, m in report.items():
        kl = (f"{m['kl_to_sft']:.2f} +- {m['kl_to_sft_se']:.2f}" if "kl_to_sft_se" in m
              else f"<= {m['kl_to_sft']:.2f}")
        rows.append((name, f"{m['gold_reward']:+.3f}", f"{m['accuracy']:.1%}",
                     f"{m['rm_score']:+.3f}", kl, f"{m['answer_bytes']:.1f}"))
    log(f"\nSFT vs RL, DPO and best-of-N on the held-out questions (greedy answers, except "
        f"best-of-N: {config.best_of_n} samples at temperature 1, the reward model's favourite "
        f"kept; KL: sampled, nats per completion, or best-of-N's analytic bound)")
    _table(rows, log)
    for k, q in enumerate(questions[:4]):
        log(f"  {q.prompt!r} (gold: {q.answer})" + "".join(
            f"\n    {name + ':':<{len(bon_name) + 1}} {report[name]['answers'][k][:60]!r}"
            for name in report))
    log(f"\ncheckpoints: {stage.path}, {sft.path}, {rm.path}, {rl.path}, {dpo.path}"
        f"\nfigures: {figure}, {sft_figure}, {rm_figure}, {rl_figure}, {dpo_figure}"
        f"\ntotal: {time.perf_counter() - t0:.1f}s")
    return {"pretrain": stage, "sft": sft, "reward_model": rm, "rl": rl, "dpo": dpo,
            "rl_report": {k: {m: v for m, v in r.items() if m != "answers"}
                          for k, r in report.items()}, "rl_figure": rl_figure,
            "dpo_figure": dpo_figure,
            "samples_before": before, "samples_after": after,
            "evaluation": {k: v[0] for k, v in evaluation.items()},
            "figure": figure, "sft_figure": sft_figure, "rm_figure": rm_figure}
