"""``rlhf-book bench``: speed and memory, measured (design §7), never asserted in tests.

``rl-step`` times one whole jitted RL step of chapter 6 at the pipeline's default size (the
``mini`` GPT, GRPO, 16 prompts x 8 completions x 48 new tokens, a reward model of the same shape
as the scorer, the KL to a frozen reference in the loss) and takes it apart:

* **compile**: tracing, lowering and XLA compilation of the step, paid once per shape;
* **step**: one compiled step (generate ``B x G`` completions with the KV cache, score them with
  the reward model, log-probs under the policy and the reference, advantages, one optax update);
* **generate**: the sampling loop alone, and the tokens per second it produces;
* **rollout**: generate + score + policy and reference log-probs (the step without the update).

Where ``torch`` and ``trl`` are importable (here or in the interpreter given by
``--reference-python``) the same step runs through TRL's ``GRPOTrainer`` on a GPT-2 of the same
shape (:mod:`rlhf_book.textbook.trl_reference`), in the same run, on the same machine, and the
two are printed side by side.

Numbers are wall-clock medians over ``repeats`` calls after a warm-up, with ``block_until_ready``;
memory is the process's peak resident set size (and the device's peak on a GPU or TPU).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

from rlhf_book import ch06_policy_gradients as ch06
from rlhf_book import data
from rlhf_book.ch05_reward_models import init_reward_model
from rlhf_book.lm import gpt, sampling
from rlhf_book.pipeline import PipelineConfig
from rlhf_book.textbook.trl_reference import peak_rss_mib


@dataclasses.dataclass(frozen=True)
class RLStepBench:
    """What ``rl-step`` runs: the model size and the RL configuration (the pipeline's by
    default), how many timed calls, and the seed of the random weights (speed does not depend
    on what the weights have learned: every shape is static, every completion runs to
    ``max_new_tokens`` positions whether or not it stopped)."""

    model: str = "mini"
    rl: ch06.RLConfig = PipelineConfig().rl
    repeats: int = 10
    seed: int = 0


def _median_seconds(fn, repeats: int) -> tuple[float, list[float]]:
    """Call ``fn()`` once to warm up, then ``repeats`` times; median wall seconds (blocking)."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times)), times


def peak_memory() -> dict:
    """Peak resident set size of this process in MiB, and each accelerator's peak bytes in use
    where the backend reports it (GPU, TPU)."""
    out = {"peak_rss_mib": peak_rss_mib()}
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        out["device_peak_mib"] = round(stats["peak_bytes_in_use"] / 2**20, 1)
    return out


def machine() -> dict:
    """What the numbers were measured on."""
    device = jax.devices()[0]
    return {"platform": device.platform, "device": device.device_kind,
            "cpu_count": __import__("os").cpu_count(), "python": platform.python_version(),
            "jax": jax.__version__}


def rl_step(bench: RLStepBench = RLStepBench(), progress=print) -> dict:
    """Measure one RL step of :mod:`rlhf_book.ch06_policy_gradients` (see the module
    docstring). Returns a JSON-able dict of settings, seconds and memory."""
    rc, model_config = bench.rl, gpt.get_config(bench.model)
    questions = data.split_questions(seed=0)[0]
    prompts = ch06.encode_prompts([q.prompt for q in questions])
    P, B, G, K = prompts.tokens.shape[1], rc.prompts_per_step, rc.group_size, rc.max_new_tokens
    if P + K > model_config.max_seq_len:
        raise ValueError(f"prompts ({P} tokens) + max_new_tokens {K} exceed the {bench.model} "
                         f"model's context of {model_config.max_seq_len}")
    k_lm, k_rm, k_step = jax.random.split(jax.random.PRNGKey(bench.seed), 3)
    lm_params = gpt.init_params(k_lm, model_config)
    rm_params = init_reward_model(k_rm, gpt.init_params(k_rm, model_config), model_config)
    reward = ch06.reward_model_reward(rm_params, model_config)
    state = ch06.init_rl_state(rc, model_config, lm_params, reward)

    progress(f"compiling one {rc.algorithm} step ({B} prompts x {G} completions x {K} tokens, "
             f"{bench.model} model) ...")
    step = jax.jit(ch06.make_rl_step(rc, model_config, prompts, reward))
    start = time.perf_counter()
    compiled = step.lower(state, k_step).compile()
    compile_s = time.perf_counter() - start

    progress(f"timing {bench.repeats} steps ...")
    holder = {"state": state}

    def run_step():
        holder["state"], metrics = compiled(holder["state"], k_step)
        return metrics

    step_s, step_times = _median_seconds(run_step, bench.repeats)

    N = B * G
    rows = np.repeat(np.arange(B), G)
    gen = jax.jit(lambda params, key: sampling.sample_cached(
        params, prompts.tokens[rows], prompts.lengths[rows], key, rc.temperature, model_config,
        max_new_tokens=K))
    progress("timing generation and rollout ...")
    generate_s, _ = _median_seconds(lambda: gen(lm_params, k_step), bench.repeats)
    roll = jax.jit(lambda s, key: ch06.rollout(s, key, rc, model_config, prompts, reward))
    rollout_s, _ = _median_seconds(lambda: roll(state, k_step), bench.repeats)
    # The sampling scan walks every position of the prompt too (prefill one token at a time):
    # P - 1 + K forward calls of one position for N rows; K of them produce new tokens.
    return {
        "benchmark": "rl-step", "implementation": "rlhf-book (JAX, jitted)", **machine(),
        "model": bench.model, "params": gpt.count_params(lm_params),
        "shape": dataclasses.asdict(model_config), "algorithm": rc.algorithm,
        "prompts": B, "group_size": G, "completions": N, "prompt_tokens": P,
        "new_tokens": K, "beta": rc.beta, "reward": "reward model (same shape)",
        "compile_s": round(compile_s, 2),
        "step_ms": round(1e3 * step_s, 1),
        "step_ms_all": [round(1e3 * t, 1) for t in step_times],
        "generate_ms": round(1e3 * generate_s, 1),
        "generated_tokens_per_s": round(N * K / generate_s),
        "rollout_ms": round(1e3 * rollout_s, 1),
        "update_ms": round(1e3 * (step_s - rollout_s), 1),
        **peak_memory(),
    }


def reference_python(explicit: str | None = None) -> str | None:
    """The interpreter that can run the TRL reference: ``explicit`` if given, else this one when
    ``torch``, ``transformers`` and ``trl`` are importable, else None."""
    if explicit:
        return explicit
    if all(importlib.util.find_spec(m) for m in ("torch", "transformers", "trl", "datasets")):
        return sys.executable
    return None


def trl_rl_step(result: dict, python: str, steps: int = 12, progress=print) -> dict:
    """Run the same step through TRL's ``GRPOTrainer`` in a subprocess of ``python`` (so that
    torch and JAX do not share a process or its thread pools) and return its measurements."""
    script = pathlib.Path(__file__).with_name("trl_reference.py")
    questions = data.split_questions(seed=0)[0]
    shape = result["shape"]
    spec = {"vocab_size": shape["vocab_size"], "d_model": shape["d_model"],
            "n_heads": shape["n_heads"], "n_layers": shape["n_layers"],
            "max_seq_len": shape["max_seq_len"], "d_ff": shape["d_ff"],
            "prompts": [q.prompt for q in questions],
            "prompts_per_step": result["prompts"], "group_size": result["group_size"],
            "new_tokens": result["new_tokens"], "beta": result["beta"], "steps": steps}
    progress(f"running TRL GRPOTrainer for {steps} steps in {python} ...")
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = pathlib.Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        proc = subprocess.run([python, str(script), str(spec_path), tmp], capture_output=True,
                              text=True)
    if proc.returncode:
        raise RuntimeError(f"the TRL reference failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


ROWS = (("implementation", "implementation", "{}"), ("device", "device", "{}"),
        ("parameters (policy)", "params", "{:,}"), ("completions x new tokens", None, None),
        ("prompt tokens (padded)", "prompt_tokens", "{}"),
        ("compile (s)", "compile_s", "{:.1f}"), ("RL step (ms)", "step_ms", "{:.0f}"),
        ("  of which rollout (ms)", "rollout_ms", "{:.0f}"),
        ("  of which update (ms)", "update_ms", "{:.0f}"),
        ("generation alone (ms)", "generate_ms", "{:.0f}"),
        ("generated tokens / s", "generated_tokens_per_s", "{:,}"),
        ("peak RSS (MiB)", "peak_rss_mib", "{:.0f}"), ("device peak (MiB)", "device_peak_mib",
                                                         "{:.0f}"))


def format_table(results: list[dict]) -> str:
    """The measurements side by side, one column per implementation."""
    lines = []
    for label, key, fmt in ROWS:
        cells = []
        for r in results:
            if key is None:
                cells.append(f"{r['completions']} x {r['new_tokens']}")
            elif r.get(key) is None:
                cells.append("-")
            else:
                cells.append(fmt.format(r[key]))
        if any(c != "-" for c in cells):
            lines.append(f"{label:<26}" + "".join(f"{c:>34}" for c in cells))
    return "\n".join(lines)
