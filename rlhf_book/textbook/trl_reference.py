"""The reference side of ``rlhf-book bench rl-step``: the same GRPO step with TRL's
``GRPOTrainer`` on a GPT-2 of the mini GPT's shape, on the CPU, offline.

Run by :mod:`rlhf_book.textbook.bench` as ``python trl_reference.py SPEC.json WORKDIR`` in an
interpreter that has ``torch``, ``transformers``, ``trl`` and ``datasets`` (it imports nothing
from ``rlhf_book``, so it also runs in a separate virtual environment). Prints one JSON line.

The recipe, chosen so that both sides compute the same step: a character-level
tokenizer (one token per character, like the mini GPT's bytes), a randomly initialised
``GPT2LMHeadModel`` with the policy's vocabulary, width, depth, heads, MLP width and context,
dropout off (the mini GPT has none), saved to disk and passed by path (TRL reloads the reference
model from it when ``beta > 0``); a ``GPT2ForSequenceClassification`` of the same shape as the
reward model; prompts of the same lengths as the chat-template prompts (the question plus four
characters standing in for the four special tokens); ``min_new_tokens = max_completion_length``
so that every completion has the same length as in the JAX step; gradient checkpointing off.
One TRL step is then what one JAX step is: generate ``B x G`` completions with the KV cache
(HF ``generate``, eager), score them with the reward model, log-probs under the policy and the
reference, and one optimizer step.
"""

import json
import pathlib
import resource
import statistics
import sys
import time


def main(spec_path: str, workdir: str) -> None:
    import datasets
    import tokenizers
    import torch
    import transformers
    import trl
    from tokenizers import decoders, models, pre_tokenizers

    spec = json.loads(pathlib.Path(spec_path).read_text())
    work = pathlib.Path(workdir)
    torch.manual_seed(0)

    # A character-level tokenizer with exactly the policy's vocabulary size.
    prompts = [f"Q:{p}\nA" for p in spec["prompts"]]
    # Every non-special token is one character, so that decoded completions re-encode to the
    # same number of tokens when the reward model reads them.
    chars = sorted(set("".join(prompts)) | set(map(chr, range(32, 127))) | {"\n", "\ufffd"})
    vocab = {"<pad>": 0, "<eos>": 1}
    for ch in chars:
        vocab.setdefault(ch, len(vocab))
    extra = 0x100
    while len(vocab) < spec["vocab_size"]:
        vocab[chr(extra)] = len(vocab)
        extra += 1
    core = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="\ufffd"))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>",
                                               eos_token="<eos>", unk_token="\ufffd",
                                               padding_side="left")

    config = transformers.GPT2Config(
        vocab_size=len(vocab), n_positions=spec["max_seq_len"], n_embd=spec["d_model"],
        n_layer=spec["n_layers"], n_head=spec["n_heads"], n_inner=spec["d_ff"],
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=1, eos_token_id=1,
        pad_token_id=0)
    policy_dir, reward_dir = work / "policy", work / "reward"
    policy = transformers.GPT2LMHeadModel(config)
    policy.save_pretrained(policy_dir)
    tok.save_pretrained(policy_dir)
    reward_config = transformers.GPT2Config(**{**config.to_dict(), "num_labels": 1})
    transformers.GPT2ForSequenceClassification(reward_config).save_pretrained(reward_dir)
    tok.save_pretrained(reward_dir)

    B, G, K = spec["prompts_per_step"], spec["group_size"], spec["new_tokens"]
    steps = spec["steps"]
    train_set = datasets.Dataset.from_dict({"prompt": (prompts * (1 + B * steps // len(prompts)))})
    args = trl.GRPOConfig(
        output_dir=str(work / "out"), use_cpu=True, report_to="none", bf16=False,
        save_strategy="no", logging_steps=10_000, per_device_train_batch_size=B * G,
        num_generations=G, max_completion_length=K, max_steps=steps,
        learning_rate=3e-5, beta=spec["beta"], loss_type="grpo", temperature=1.0, seed=0,
        gradient_checkpointing=False, disable_dropout=True,
        generation_kwargs={"min_new_tokens": K})

    class Timer(transformers.TrainerCallback):
        def __init__(self):
            self.times, self.start = [], None

        def on_step_begin(self, *_, **__):
            self.start = time.perf_counter()

        def on_step_end(self, *_, **__):
            self.times.append(time.perf_counter() - self.start)

    timer = Timer()
    trainer = trl.GRPOTrainer(model=str(policy_dir), reward_funcs=str(reward_dir), args=args,
                              train_dataset=train_set, processing_class=tok, callbacks=[timer])
    trainer.train()

    # Generation alone: B x G completions of K tokens from the same prompts, HF generate.
    model = trainer.model.eval()
    batch = tok([prompts[i % len(prompts)] for i in range(B) for _ in range(G)],
                return_tensors="pt", padding=True)
    gen_times = []
    with torch.no_grad():
        for _ in range(4):
            start = time.perf_counter()
            model.generate(**batch, do_sample=True, max_new_tokens=K, min_new_tokens=K,
                           pad_token_id=0)
            gen_times.append(time.perf_counter() - start)
    gen_s = statistics.median(gen_times[1:])
    warm = timer.times[2:] or timer.times
    step_s = statistics.median(warm)
    print(json.dumps({
        "benchmark": "rl-step", "implementation": "TRL GRPOTrainer (PyTorch eager)",
        "platform": "cpu", "device": "cpu", "torch": torch.__version__, "trl": trl.__version__,
        "transformers": transformers.__version__, "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in policy.parameters()),
        "completions": B * G, "new_tokens": K, "prompt_tokens": int(batch["input_ids"].shape[1]),
        "beta": spec["beta"], "compile_s": None,
        "step_ms": round(1e3 * step_s, 1), "step_ms_all": [round(1e3 * t, 1) for t in timer.times],
        "generate_ms": round(1e3 * gen_s, 1), "generated_tokens_per_s": round(B * G * K / gen_s),
        "peak_rss_mib": peak_rss_mib(),
    }))


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB: Linux's ``VmHWM``, which starts afresh
    when the process execs (``getrusage``'s ``ru_maxrss`` carries over the parent's peak from
    before the fork, so a small child of a large parent would report the parent's)."""
    try:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 2**10, 1)  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
