"""The ``rlhf-book`` command line, the quick pipeline end to end, and its stage cache."""

import dataclasses
import re
import subprocess
import sys

import jax
import pytest

from rlhf_book import cli
from rlhf_book.lm import train
from rlhf_book.pipeline import PipelineConfig, pretrain_stage, stages
from rlhf_book.textbook import substrate


def test_help_lists_the_subcommands():
    out = subprocess.run([sys.executable, "-m", "rlhf_book.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "pipeline" in out and "usage: rlhf-book" in out


def test_quick_pipeline_runs_then_loads_from_cache(tmp_path, capsys):
    out_dir = tmp_path / "runs"
    assert cli.main(["pipeline", "--quick", "--no-progress", "--out", str(out_dir)]) == 0
    first = capsys.readouterr().out
    for stage in ("pretrain", "sft", "reward", "rl", "rl_pushed", "rlvr", "dpo"):
        assert len(list((out_dir / "checkpoints").glob(f"{stage}-tiny-*.msgpack"))) == 1
    for figure in ("pretrain_loss", "sft_loss", "reward_model", "rl", "dpo", "overoptimisation"):
        assert (out_dir / "figures" / f"{figure}.png").stat().st_size > 1000
    assert "Results" in first and "before:" in first and "after:" in first
    rm_table = first.split("Reward model on")[1]
    for word in ("accuracy", "ceiling", "vs gold", "\n  all ", "style pairs", "correctness pairs"):
        assert word in rm_table, word
    table = first.split("Rephrased questions: 8 questions about")[1]
    for column in ("gold reward", "vs SFT", "right", "none", "RM score", "KL to SFT", "bytes"):
        assert column in table.split("\n")[1], column
    for row in ("pretrained", "sft", "rl", "rl (pushed)", "dpo", "rlvr", "best-of-4"):
        assert f"\n  {row} " in table, row
    assert "<= 0.64" in table  # best-of-4's KL bound, log 4 - 3/4 = 0.636
    assert "Unseen facts: 8 questions about" in first
    arithmetic = first.split("Arithmetic (4 rephrased sums")[1]
    assert "pass@1 vs SFT" in arithmetic.split("\n")[1]
    for row in ("sft", "rl", "rlvr"):  # the RLVR row of chapter 7, beside SFT and RL
        assert f"\n  {row} " in arithmetic, row
    assert "RLVR (grpo, beta=" in first
    assert "DPO (dpo, beta=" in first and "Best-of-4 (ranked by the reward model)" in first
    assert "Sampled answers to rephrased questions" in first
    assert "loaded cached checkpoint" not in first

    assert cli.main(["pipeline", "--quick", "--no-progress", "--out", str(out_dir)]) == 0
    second = capsys.readouterr().out
    for stage in ("pretrain", "sft", "reward model", "rl", "rl (pushed)", "dpo"):
        assert f"[{stage}] loaded cached checkpoint" in second
    assert second.count("(cached)") == 3
    # The same checkpoints give the same greedy samples and the same measurements.
    def section(out, start, end):
        return out.split(start)[1].split(end)[0]

    assert section(first, "Samples", "[sft]") == section(second, "Samples", "[sft]")
    assert section(first, "Reward model on", "checkpoints:") == section(
        second, "Reward model on", "checkpoints:")

    # A changed pretraining setting is a different cache entry for every stage, trained afresh.
    assert cli.main(["pipeline", "--quick", "--no-progress", "--out", str(out_dir),
                     "--steps", "20"]) == 0
    assert "loaded cached checkpoint" not in capsys.readouterr().out
    assert len(list((out_dir / "checkpoints").glob("*.msgpack"))) == 14  # 7 stages, twice


def test_bad_arguments_give_one_clear_line(tmp_path, capsys):
    assert cli.main(["pipeline", "--quick", "--no-progress", "--out", str(tmp_path),
                     "--steps", "0"]) == 2
    assert "error: TrainConfig.steps must be a positive int, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["pipeline", "--model", "huge"])
    for seed in ("-1", str(2**64)):  # a huge seed used to crash inside JAX
        assert cli.main(["pipeline", "--quick", "--no-progress", "--out", str(tmp_path),
                         "--seed", seed]) == 2
        assert "error: PipelineConfig.seed must be an int in [0, 2**32)" in capsys.readouterr().err
    n = jax.device_count()
    assert cli.main(["pipeline", "--quick", "--no-progress", "--out", str(tmp_path),
                     "--devices", str(n + 1)]) == 2
    assert f"error: n_devices must be between 1 and the {n} devices" in capsys.readouterr().err
    assert cli.main(["pipeline", "--quick", "--no-progress", "--out", str(tmp_path),
                     "--fsdp", str(n + 1)]) == 2
    assert "error: fsdp must be a positive divisor" in capsys.readouterr().err


def test_an_unwritable_output_folder_stops_the_run_before_any_training(tmp_path, capsys):
    """A folder that cannot be created (it would lie under a file; chmod does not stop root):
    one line, exit 2, and no stage ran (there used to be a traceback after pretraining)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert cli.main(["pipeline", "--quick", "--no-progress", "--out", str(blocker / "runs")]) == 2
    captured = capsys.readouterr()
    assert f"error: the output folder {blocker / 'runs'} is not writable" in captured.err
    assert "[pretrain]" not in captured.out and "Traceback" not in captured.err


def _edited(module: str):
    """``substrate.source_text`` as if ``rlhf_book/<module>`` had been edited."""
    real = substrate.source_text

    def source_text(*names):
        text = real(*names)
        return text + f"\n# an edit to {module}" if module in names else text

    return source_text


@pytest.mark.parametrize("stage, module, retrains", [
    ("pretrain", "lm", True),
    ("pretrain", "data", True),
    ("pretrain", "pipeline/stages", True),
    ("pretrain", "ch04_instruction_tuning/loop", False),
    ("sft", "ch04_instruction_tuning/loop", True),
    ("sft", "ch04_instruction_tuning/losses", True),
    ("sft", "ch04_instruction_tuning/experiments", False),  # what only the notebook runs
    ("sft", "ch06_policy_gradients/loop", False),
    ("reward", "ch05_reward_models/losses", True),
    ("rl", "ch05_reward_models/loop", True),
    ("rl", "ch06_policy_gradients/losses", True),
    ("rl", "ch06_policy_gradients/experiments", False),
    ("rl", "ch08_direct_alignment/loop", False),
    ("rl_pushed", "ch06_policy_gradients/loop", True),
    ("dpo", "ch08_direct_alignment/loop", True),
    ("dpo", "ch06_policy_gradients/loop", True),  # online DPO reads the reward model through ch. 6
    ("dpo", "ch09_rejection_sampling/loop", False),
])
def test_a_stage_key_holds_the_source_of_what_it_depends_on(monkeypatch, stage, module,
                                                             retrains):
    settings = (PipelineConfig.quick(), 0, "upstream-tiny-0123.msgpack")
    key = stages.stage_key(stage, *settings)
    assert stages.stage_key(stage, *settings) == key  # an unchanged setup: the same key
    assert stages.stage_key(stage, *settings[:2], "upstream-tiny-4567.msgpack") != key
    monkeypatch.setattr(substrate, "source_text", _edited(module))
    assert (stages.stage_key(stage, *settings) != key) == retrains


def test_a_source_change_retrains_a_cached_stage(tmp_path, monkeypatch):
    config = dataclasses.replace(
        PipelineConfig.quick(out_dir=str(tmp_path)),
        pretrain=train.TrainConfig(steps=4, batch_size=2, seq_len=32, warmup_steps=1,
                                   log_every=2))
    quiet = dict(progress=False, log=lambda _: None)
    first = pretrain_stage(config, **quiet)
    again = pretrain_stage(config, **quiet)
    assert not first.cached and again.cached and again.path == first.path
    monkeypatch.setattr(substrate, "source_text", _edited("lm"))
    edited = pretrain_stage(config, **quiet)
    assert not edited.cached and edited.path != first.path
    assert edited.path.name.startswith("pretrain-tiny-")


def test_an_unusable_cached_checkpoint_is_reported_and_trained_again(tmp_path):
    """A corrupted, a truncated, and another stage's checkpoint in a stage's slot: each is
    refused with a message naming the problem, and the stage trains again."""
    config = dataclasses.replace(
        PipelineConfig.quick(out_dir=str(tmp_path)),
        pretrain=train.TrainConfig(steps=4, batch_size=2, seq_len=32, warmup_steps=1,
                                   log_every=2))
    quiet = dict(progress=False, log=lambda _: None)
    first = pretrain_stage(config, **quiet)
    good = first.path.read_bytes()
    middle = len(good) // 2
    other = train.save_checkpoint(tmp_path / "other.msgpack", first.params,
                                  {"stage": "sft", "model": {"d_model": 1}, "metrics": {}})
    for bad, why in ((good[:middle] + bytes(b ^ 1 for b in good[middle:middle + 32])
                      + good[middle + 32:], "corrupt|readable"),
                     (good[:middle], "readable"),
                     (other.read_bytes(), "'sft' stage")):
        first.path.write_bytes(bad)
        lines = []
        again = pretrain_stage(config, progress=False, log=lines.append)
        assert not again.cached and again.path == first.path, why
        message = next(line for line in lines if "cannot use the cached checkpoint" in line)
        assert re.search(why, message), message
        train.load_checkpoint(again.path)  # the retrained checkpoint is intact
