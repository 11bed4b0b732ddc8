"""``rlhf-book bench suite``: one JSON of what this device does with the package's models.

For each model size -- the pipeline's ``mini`` GPT (0.84M parameters, context 128) and two
sizes meant for a GPU (``10m``: d 384, 6 layers; ``100m``: d 768, 14 layers; context 512) --
it measures

* **training**: one jitted step of next-token loss, gradient and AdamW on a batch of full
  context windows (``lm/train.py``'s pretraining step): milliseconds, tokens per second, and
  **model FLOPs utilisation** (MFU): the model's FLOPs per step over the time, divided by this
  device's peak;
* **generation**: ``rows`` completions of ``new`` tokens with the KV cache after a prompt
  (``lm/sampling.py``): milliseconds and generated tokens per second for the whole call, and
  MFU over all the FLOPs it needs, the prompt's one parallel prefill pass included (about half
  of them for ``mini``, more for the longer prompts of the larger sizes), so the decode loop
  alone runs at a lower utilisation than this;
* **compile**: seconds to trace, lower and compile each, paid once per shape;
* optionally the same training step with **bfloat16 compute** on float32 parameters (the
  parameters are cast inside the loss, so the gradients and Adam stay float32);

plus the whole RL step of ``rlhf-book bench rl-step`` at the pipeline's size, and the peak
memory of the process (and of the device, where the backend reports it).

**The peak** against which MFU is taken is measured, not looked up: the best FLOP/s of a square
matmul on this device (float32, and bfloat16 where the bfloat16 columns are run). On a GPU a
vendor's datasheet figure is higher; MFU against the measured peak says how close the step
comes to what this device's matmul actually does. On NVIDIA GPUs since Ampere, JAX's default
precision runs float32 matmuls in TF32 (for the peak and for the model alike), so the
"float32" peak there is TF32's.

**Model FLOPs** follow Chowdhery et al. (2022, PaLM, App. B): per token, ``2 N`` for a forward
pass through the ``N`` weights of the matmuls (attention projections, MLP, unembedding; the
embedding lookup is free) plus ``2 * 2 * L * T * d`` for attention's scores and weighted sum
over a context of ``T``; training is 3 forward passes' worth (forward + backward). Causal
attention counts the full ``T`` (as PaLM does): FLOPs the model needs, not what a kernel skips.

Each size gets a batch per device type (``batch_cpu`` on a CPU, ``batch_accel`` on a GPU or
TPU), so the suite stays within about 3 minutes on a 2-core CPU and fills a GPU.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_book.lm import gpt, sampling, train
from rlhf_book.lm.ops import next_token_loss
from rlhf_book.textbook.bench import (RLStepBench, _median_seconds, machine, peak_memory,
                                     rl_step)


@dataclasses.dataclass(frozen=True)
class SuiteModel:
    """One size of the suite: its shape, and how much work a step does on a CPU and on an
    accelerator: training rows of ``max_seq_len`` tokens, and generation as ``(rows, prompt
    tokens, new tokens)``."""

    name: str
    config: gpt.GPTConfig
    batch_cpu: int
    batch_accel: int
    generation_cpu: tuple[int, int, int]
    generation_accel: tuple[int, int, int]


SUITE = (
    SuiteModel("mini", gpt.get_config("mini"), 32, 256, (128, 48, 48), (1024, 48, 48)),
    SuiteModel("10m", gpt.GPTConfig(d_model=384, n_heads=6, n_layers=6, max_seq_len=512,
                                    d_ff=1536), 4, 64, (16, 128, 64), (256, 128, 128)),
    SuiteModel("100m", gpt.GPTConfig(d_model=768, n_heads=12, n_layers=14, max_seq_len=512,
                                     d_ff=3072), 1, 16, (4, 128, 32), (128, 128, 128)),
)
MODELS = {m.name: m for m in SUITE}


def matmul_flops(config: gpt.GPTConfig) -> int:
    """``N``: weights a token's forward pass multiplies by (attention q, k, v, o; the MLP; the
    unembedding): ``2 N`` FLOPs per token, before attention over the context."""
    d, L = config.d_model, config.n_layers
    return L * (4 * d * d + 2 * d * config.d_ff) + d * config.vocab_size


def forward_flops_per_token(config: gpt.GPTConfig, context: int) -> int:
    """PaLM's count (Chowdhery et al. 2022, App. B) of one token's forward pass: ``2 N`` plus
    ``4 L T d`` for attention's ``q k^T`` and its weighted sum over ``T = context`` keys."""
    return 2 * matmul_flops(config) + 4 * config.n_layers * context * config.d_model


def measure_peak(dtype=jnp.float32, n: int | None = None, repeats: int = 5) -> dict:
    """The best FLOP/s of an ``n x n`` by ``n x n`` matmul (``2 n^3`` FLOPs) in ``dtype`` on
    the default device: the peak MFU is taken against. ``n`` defaults to 2048 on a CPU and
    8192 on an accelerator (large enough to reach the matmul units' rate)."""
    accel = jax.devices()[0].platform != "cpu"
    n = n or (8192 if accel else 2048)
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
    mm = jax.jit(lambda a, b: a @ b)
    best = min(_median_seconds(lambda: mm(a, b), repeats)[1])  # the best, not the median
    return {"dtype": jnp.dtype(dtype).name, "n": n, "tflops": _sig(2 * n**3 / best / 1e12)}


def _sig(x: float, digits: int = 4) -> float:
    """``x`` to ``digits`` significant digits (rates and fractions of very different sizes)."""
    return float(f"{x:.{digits}g}")


def _compile(fn, *args):
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - start


def cast_params(params, dtype):
    """The floating-point leaves of ``params`` in ``dtype``: bfloat16 *compute* on float32
    parameters when applied inside the loss (the gradient flows back through the cast, so it
    and Adam's moments stay float32)."""
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
                        else x, params)


def lm_loss(params, tokens, config: gpt.GPTConfig, compute_dtype=jnp.float32):
    """Pretraining's next-token loss with the whole forward pass (matmuls, attention's softmax,
    LayerNorm) in ``compute_dtype``; the logits are cast back to float32 for the output softmax
    and the loss."""
    logits = gpt.forward(cast_params(params, compute_dtype), tokens, config)
    return next_token_loss(logits.astype(jnp.float32), tokens, jnp.ones(tokens.shape)), {}


def train_step_bench(model: SuiteModel, peak_tflops: float, *, compute_dtype=jnp.float32,
                     accel: bool = False, repeats: int = 3) -> dict:
    """Time one AdamW step of next-token loss on ``batch`` rows of ``max_seq_len`` tokens."""
    config, B = model.config, model.batch_accel if accel else model.batch_cpu
    T = config.max_seq_len
    params = gpt.init_params(jax.random.PRNGKey(0), config)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (B, T), 0, config.vocab_size)
    state = train.create_train_state(params, train.make_optimizer(train.TrainConfig()))
    step = train.make_train_step(lambda p, t: lm_loss(p, t, config, compute_dtype))
    compiled, compile_s = _compile(step, state, tokens)
    holder = {"state": state}

    def run():
        holder["state"], metrics = compiled(holder["state"], tokens)
        return metrics["loss"]

    seconds = _median_seconds(run, repeats)[0]
    flops = 3 * forward_flops_per_token(config, T) * B * T
    return {"batch": B, "tokens": B * T, "compile_s": round(compile_s, 2),
            "step_ms": round(1e3 * seconds, 1), "tokens_per_s": round(B * T / seconds),
            "tflops": _sig(flops / seconds / 1e12),
            "mfu": _sig(flops / seconds / 1e12 / peak_tflops)}


def generate_bench(model: SuiteModel, peak_tflops: float, *, accel: bool = False,
                   repeats: int = 2) -> dict:
    """Time ``rows`` completions of ``new`` tokens after a prompt of ``prompt`` tokens
    (``model.generation_cpu`` or ``_accel``) with the KV cache; the loop runs all ``new``
    positions whether or not a row has stopped (static shapes)."""
    config = model.config
    N, P, K = model.generation_accel if accel else model.generation_cpu
    params = gpt.init_params(jax.random.PRNGKey(0), config)
    prompts = jax.random.randint(jax.random.PRNGKey(1), (N, P), 0, 256)
    lengths = jnp.full((N,), P, jnp.int32)

    def gen(params, key):
        return sampling.sample_cached(params, prompts, lengths, key, 1.0, config,
                                      max_new_tokens=K).tokens

    compiled, compile_s = _compile(gen, params, jax.random.PRNGKey(2))
    seconds = _median_seconds(lambda: compiled(params, jax.random.PRNGKey(2)), repeats)[0]
    # the prefill (P tokens per row) and K decoding positions, each over its context so far:
    # the FLOPs the whole call needs, so the MFU is that of prefill and decode together
    flops = N * sum(forward_flops_per_token(config, t) for t in range(1, P + K + 1))
    return {"rows": N, "prompt_tokens": P, "new_tokens": K, "compile_s": round(compile_s, 2),
            "generate_ms": round(1e3 * seconds, 1), "tokens_per_s": round(N * K / seconds),
            "tflops": _sig(flops / seconds / 1e12),
            "mfu": _sig(flops / seconds / 1e12 / peak_tflops)}


def run_suite(models=("mini", "10m", "100m"), *, bf16: bool = False, rl: bool = True,
              progress=print) -> dict:
    """Run the suite on the default device; returns a JSON-able dict."""
    accel = jax.devices()[0].platform != "cpu"
    progress("measuring the matmul peak ...")
    peaks = {"float32": measure_peak(jnp.float32)}
    if bf16:
        peaks["bfloat16"] = measure_peak(jnp.bfloat16)
    out = {"benchmark": "suite", **machine(), "device_count": jax.device_count(),
           "peak": peaks, "models": []}
    for name in models:
        model = MODELS[name]
        progress(f"{name}: training step ...")
        shapes = jax.eval_shape(lambda k: gpt.init_params(k, model.config), jax.random.PRNGKey(0))
        row = {"model": name, "params": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)),
               "shape": dataclasses.asdict(model.config),
               "train": train_step_bench(model, peaks["float32"]["tflops"], accel=accel)}
        if bf16:
            progress(f"{name}: training step, bfloat16 compute ...")
            row["train_bf16"] = train_step_bench(model, peaks["bfloat16"]["tflops"],
                                                 compute_dtype=jnp.bfloat16, accel=accel)
        progress(f"{name}: generation ...")
        row["generate"] = generate_bench(model, peaks["float32"]["tflops"], accel=accel)
        out["models"].append(row)
    if rl:
        progress("the pipeline's RL step ...")
        r = rl_step(RLStepBench(repeats=3), progress=lambda _: None)
        out["rl_step"] = {k: r[k] for k in ("model", "params", "completions", "new_tokens",
                                            "compile_s", "step_ms", "rollout_ms", "update_ms",
                                            "generate_ms", "generated_tokens_per_s")}
    out.update(peak_memory())
    return out


def format_suite(result: dict) -> str:
    """The suite's numbers as a Markdown table (one row per model and measurement)."""
    peaks = ", ".join(f"{v['tflops'] * 1e3:.0f} GFLOP/s ({k})" for k, v in result["peak"].items())
    lines = [f"{result['device']} ({result['platform']}, {result['device_count']} device(s)); "
             f"measured matmul peak {peaks}", "",
             "| model | params | measurement | batch | compile (s) | ms | tokens/s | TFLOP/s "
             "| MFU |", "|---|---|---|---|---|---|---|---|---|"]
    for row in result["models"]:
        for key, label in (("train", "train step, f32"), ("train_bf16", "train step, bf16"),
                           ("generate", "generation")):
            m = row.get(key)
            if m is None:
                continue
            batch = (f"{m['batch']} x {row['shape']['max_seq_len']}" if "batch" in m
                     else f"{m['rows']} x {m['new_tokens']}")
            ms = m.get("step_ms", m.get("generate_ms"))
            lines.append(f"| {row['model']} | {row['params'] / 1e6:.2f}M | {label} | {batch} | "
                         f"{m['compile_s']:.1f} | {ms:,.0f} | {m['tokens_per_s']:,} | "
                         f"{m['tflops']:.3f} | {100 * m['mfu']:.1f}% |")
    if "rl_step" in result:
        r = result["rl_step"]
        lines += ["", f"RL step ({r['model']}, {r['completions']} x {r['new_tokens']}): "
                      f"{r['step_ms']:,.0f} ms (rollout {r['rollout_ms']:,.0f}, update "
                      f"{r['update_ms']:,.0f}); generation {r['generated_tokens_per_s']:,} "
                      f"tokens/s; compile {r['compile_s']:.1f} s"]
    mem = f"peak RSS {result['peak_rss_mib']:,.0f} MiB"
    if "device_peak_mib" in result:
        mem += f", device peak {result['device_peak_mib']:,.0f} MiB"
    return "\n".join(lines + ["", mem])
