"""``rlhf-book bench``: it runs and reports what it measured (speed itself is never asserted)."""

import json

import pytest

from rlhf_book import ch06_policy_gradients as ch06
from rlhf_book import cli
from rlhf_book.pipeline import PipelineConfig
from rlhf_book.textbook import bench

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
