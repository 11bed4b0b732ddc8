"""``rlhf-book bench``: it runs and reports what it measured (speed itself is never asserted)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_book import ch06_policy_gradients as ch06
from rlhf_book import cli
from rlhf_book.lm import gpt
from rlhf_book.pipeline import PipelineConfig
from rlhf_book.textbook import bench, bench_suite

TINY = ["bench", "rl-step", "--model", "tiny", "--prompts", "2", "--group-size", "2",
        "--new-tokens", "8", "--repeats", "2"]


def test_rl_step_bench_reports_its_measurements(tmp_path, capsys):
    out = tmp_path / "rl_step.json"
    assert cli.main([*TINY, "--no-reference", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    for row in ("RL step (ms)", "generated tokens / s", "compile (s)", "peak RSS (MiB)"):
        assert row in printed
    (result,) = json.loads(out.read_text())
    assert result["completions"] == 4 and result["new_tokens"] == 8
    assert len(result["step_ms_all"]) == 2
    assert result["step_ms"] > 0 and result["generate_ms"] > 0 and result["compile_s"] > 0
    # tokens/s is the completions' tokens over the generation time (reported rounded to 0.1 ms)
    tokens, ms = 4 * 8, result["generate_ms"]
    assert tokens / ((ms + 0.05) / 1e3) - 1 <= result["generated_tokens_per_s"]
    assert result["generated_tokens_per_s"] <= tokens / (max(ms - 0.05, 1e-3) / 1e3) + 1


def test_rl_step_bench_times_the_pipelines_rl_step_by_default():
    assert bench.RLStepBench().rl == PipelineConfig().rl
    assert bench.RLStepBench().model == PipelineConfig().model


def test_rl_step_bench_rejects_a_context_overflow(capsys):
    assert cli.main(["bench", "rl-step", "--model", "tiny", "--new-tokens", "60",
                     "--no-reference"]) == 2
    assert "exceed the tiny model's context of 64" in capsys.readouterr().err


@pytest.mark.skipif(bench.reference_python() is None,
                    reason="torch, transformers, trl and datasets are not installed")
def test_trl_reference_runs_the_same_shape(tmp_path):
    config = bench.RLStepBench(model="tiny", repeats=1, rl=ch06.RLConfig(
        prompts_per_step=2, group_size=2, max_new_tokens=8))
    ours = bench.rl_step(config, progress=lambda _: None)
    theirs = bench.trl_rl_step(ours, bench.reference_python(), steps=3, progress=lambda _: None)
    assert theirs["completions"] == 4 and theirs["new_tokens"] == 8
    # the same shape, up to the biases GPT-2 has in its attention projections
    assert abs(theirs["params"] - ours["params"]) / ours["params"] < 0.05
    assert theirs["step_ms"] > 0 and len(theirs["step_ms_all"]) == 3


# ---------------------------------------------------------------------------------------------
# `rlhf-book bench suite`

MATMULS = ("wq", "wk", "wv", "wo", "w1", "w2", "tok_emb")  # tok_emb: the tied unembedding


@pytest.mark.parametrize("name", ["tiny", "mini"])
def test_model_flops_count_the_weights_and_agree_with_xla(name):
    """N is the size of every matrix a token's forward pass multiplies by, counted from the
    parameter tree; and XLA's own count of the compiled forward pass (which adds softmax,
    LayerNorm and GELU) is at most 10% above PaLM's 2N + 4LTd per token."""
    config = gpt.get_config(name)
    params = gpt.init_params(jax.random.PRNGKey(0), config)
    weights = sum(x.size for path, x in jax.tree_util.tree_leaves_with_path(params)
                  if path[-1].key in MATMULS)
    assert bench_suite.matmul_flops(config) == weights
    B, T = 2, config.max_seq_len
    tokens = jnp.zeros((B, T), jnp.int32)
    cost = jax.jit(lambda p, t: gpt.forward(p, t, config)).lower(params, tokens).compile()
    cost = cost.cost_analysis()
    xla = (cost[0] if isinstance(cost, list) else cost)["flops"]
    ours = bench_suite.forward_flops_per_token(config, T) * B * T
    assert ours <= xla <= 1.10 * ours, (xla, ours)


def test_bf16_compute_matches_float32_within_bfloat16_precision():
    """bfloat16 keeps 8 significant bits (relative rounding 2^-9 per operation): the loss of a
    random tiny GPT agrees with float32 to 1%, and the gradient points the same way (cosine >
    0.99); the gradient itself is float32, as the parameters are."""
    config = gpt.get_config("tiny")
    params = gpt.init_params(jax.random.PRNGKey(0), config)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (4, 64), 0, config.vocab_size)
    grad = jax.grad(lambda p, dt: bench_suite.lm_loss(p, tokens, config, dt)[0])
    loss32 = float(bench_suite.lm_loss(params, tokens, config)[0])
    loss16 = float(bench_suite.lm_loss(params, tokens, config, jnp.bfloat16)[0])
    assert abs(loss16 - loss32) <= 0.01 * loss32
    g32 = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grad(params, jnp.float32))])
    g16 = jax.tree.leaves(grad(params, jnp.bfloat16))
    assert all(g.dtype == jnp.float32 for g in g16)
    g16 = np.concatenate([np.ravel(g) for g in g16])
    assert g32 @ g16 / np.linalg.norm(g32) / np.linalg.norm(g16) > 0.99


def test_suite_measurements_are_consistent():
    model = bench_suite.SuiteModel("t", gpt.get_config("tiny"), 2, 2, (2, 8, 8), (2, 8, 8))
    train = bench_suite.train_step_bench(model, peak_tflops=1.0, repeats=2)
    assert train["tokens"] == 2 * 64 and train["step_ms"] > 0 and train["compile_s"] > 0
    flops = 3 * bench_suite.forward_flops_per_token(model.config, 64) * 2 * 64
    # TFLOP/s is the FLOPs over the step's time; the time is reported rounded to 0.1 ms and the
    # rate to 4 significant digits
    ms = train["step_ms"]
    assert flops / ((ms + 0.05) / 1e3) / 1e12 * (1 - 1e-3) <= train["tflops"]
    assert train["tflops"] <= flops / (max(ms - 0.05, 1e-3) / 1e3) / 1e12 * (1 + 1e-3)
    assert train["mfu"] == pytest.approx(train["tflops"], rel=1e-3)  # against a 1 TFLOP/s peak
    gen = bench_suite.generate_bench(model, peak_tflops=1.0, repeats=2)
    assert gen["rows"] == 2 and gen["new_tokens"] == 8 and gen["tokens_per_s"] > 0
    peak = bench_suite.measure_peak(n=256, repeats=2)
    assert peak["dtype"] == "float32" and peak["tflops"] > 0


def test_suite_cli_rejects_unknown_sizes(capsys):
    assert cli.main(["bench", "suite", "--models", "mini,huge"]) == 2
    assert "--models must name sizes among" in capsys.readouterr().err
