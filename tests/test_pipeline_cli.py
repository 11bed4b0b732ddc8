"""The ``rlhf-book`` command line and the pipeline's first stage (quick configuration)."""

import subprocess
import sys

import pytest

from rlhf_book import cli


def test_help_lists_the_subcommands():
    out = subprocess.run([sys.executable, "-m", "rlhf_book.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "pipeline" in out and "usage: rlhf-book" in out


def test_quick_pipeline_runs_then_loads_from_cache(tmp_path, capsys):
    out_dir = tmp_path / "runs"
    assert cli.main(["pipeline", "--quick", "--no-progress", "--out", str(out_dir)]) == 0
    first = capsys.readouterr().out
    for stage in ("pretrain", "sft", "reward", "rl", "dpo"):
        assert len(list((out_dir / "checkpoints").glob(f"{stage}-tiny-*.msgpack"))) == 1
    for figure in ("pretrain_loss", "sft_loss", "reward_model", "rl", "dpo"):
        assert (out_dir / "figures" / f"{figure}.png").stat().st_size > 1000
    assert "Results" in first and "before:" in first and "after:" in first
    assert "Held-out questions (8 questions about" in first
    table = first.split("Held-out questions")[1]
    assert "pretrained" in table and "sft" in table and "gold reward" in table
    rm_table = first.split("Reward model on")[1]
    assert "accuracy" in rm_table and "ceiling" in rm_table and "held-out pairs" in rm_table
    rl_table = first.split("SFT vs RL, DPO and best-of-N on the held-out questions")[1]
    for column in ("gold reward", "RM score", "KL to SFT", "answer bytes"):
        assert column in rl_table
    for row in ("sft", "rl", "dpo", "best-of-4"):
        assert f"\n  {row} " in rl_table
    assert "<= 0.64" in rl_table  # best-of-4's KL bound, log 4 - 3/4 = 0.636
    assert "DPO (dpo, beta=" in first and "Best-of-4 (ranked by the reward model)" in first
    assert "loaded cached checkpoint" not in first

    assert cli.main(["pipeline", "--quick", "--no-progress", "--out", str(out_dir)]) == 0
    second = capsys.readouterr().out
    for stage in ("pretrain", "sft", "reward model", "rl", "dpo"):
        assert f"[{stage}] loaded cached checkpoint" in second
    assert second.count("(cached)") == 3
    # The same checkpoints give the same greedy samples and the same held-out scores.
    def section(out, start, end):
        return out.split(start)[1].split(end)[0]

    assert section(first, "Samples", "[sft]") == section(second, "Samples", "[sft]")
    assert section(first, "Answers to held-out", "[reward model]") == section(
        second, "Answers to held-out", "[reward model]")
    assert table.split("checkpoints:")[0] == second.split("Held-out questions")[1].split("checkpoints:")[0]

    # A changed pretraining setting is a different cache entry for every stage, trained afresh.
    assert cli.main(["pipeline", "--quick", "--no-progress", "--out", str(out_dir),
                     "--steps", "20"]) == 0
    assert "loaded cached checkpoint" not in capsys.readouterr().out
    assert len(list((out_dir / "checkpoints").glob("*.msgpack"))) == 10


def test_bad_arguments_give_one_clear_line(tmp_path, capsys):
    assert cli.main(["pipeline", "--quick", "--no-progress", "--out", str(tmp_path),
                     "--steps", "0"]) == 2
    assert "error: TrainConfig.steps must be a positive int, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["pipeline", "--model", "huge"])
