"""Many devices: the mesh, FSDP's partition rule and the collectives counter on this process's
devices, and every training stage on 8 simulated CPU devices (a subprocess, since the device
count is fixed when JAX starts): sharded runs equal the one-device run, the parameters are
really split, and GRPO's group statistics need no collective when each group is on one device.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from rlhf_book.lm import sharding

ROOT = pathlib.Path(__file__).resolve().parent
# One xdist worker runs the whole module (tests/conftest.py, GROUPS), so the 8-device
# subprocess (a module fixture) starts once.


# ---------------------------------------------------------------------------------------------
# In this process (one device unless the machine has more)


def test_param_spec_splits_the_largest_divisible_axis():
    assert sharding.param_spec((263, 128), 8) == P(None, "fsdp")  # 263 is not divisible by 8
    assert sharding.param_spec((4, 128, 512), 8) == P(None, None, "fsdp")
    assert sharding.param_spec((4, 128, 128), 4) == P(None, None, "fsdp")  # ties: the last axis
    assert sharding.param_spec((4, 128, 128), 1) == P()
    assert sharding.param_spec((), 8) == P()  # Adam's step count
    assert sharding.param_spec((7, 3), 2) == P()  # nothing divides: replicated


def test_make_mesh_checks_its_arguments():
    n = jax.device_count()
    mesh = sharding.make_mesh()
    assert mesh.axis_names == sharding.AXES and mesh.size == n
    assert dict(mesh.shape) == {"data": n, "fsdp": 1}
    with pytest.raises(ValueError, match="n_devices"):
        sharding.make_mesh(n + 1)
    with pytest.raises(ValueError, match="n_devices"):
        sharding.make_mesh(0)
    with pytest.raises(ValueError, match="fsdp"):
        sharding.make_mesh(1, fsdp=2)


def test_one_device_changes_nothing():
    """Without a mesh (or with one device) shard_batch is the identity and no function sees a
    mesh, so a laptop runs exactly the code a pod does."""
    x = jnp.arange(12.0).reshape(4, 3)
    with sharding.use(sharding.make_mesh(1)):
        assert sharding.current_mesh() is None
        y = jax.jit(sharding.shard_batch)(x)
    np.testing.assert_array_equal(y, x)
    assert sharding.place({"w": x}) == {"w": x}


def test_collectives_counts_ops_in_hlo_text():
    text = """
  %all-reduce.1 = f32[4]{0} all-reduce(f32[4]{0} %p), replica_groups={}, to_apply=%add
  %ag = f32[8,2]{1,0} all-gather(f32[1,2]{1,0} %x), dimensions={0}
  %ags = (f32[1]{0}, f32[8]{0}) all-gather-start(f32[1]{0} %y), dimensions={0}
  %agd = f32[8]{0} all-gather-done((f32[1]{0}, f32[8]{0}) %ags)
  %add = f32[4]{0} add(f32[4]{0} %a, f32[4]{0} %b)
"""
    counts = sharding.collectives(text)
    assert counts["all-reduce"] == 1 and counts["all-gather"] == 2
    assert counts["reduce-scatter"] == counts["all-to-all"] == 0


# ---------------------------------------------------------------------------------------------
# On 8 simulated CPU devices


_RESULTS: dict = {}  # kept for this worker process: a module fixture can be set up twice


@pytest.fixture(scope="module")
def eight_devices():
    """The worker's JSON: every stage trained on one device and on three meshes of 8."""
    if "json" not in _RESULTS:
        _RESULTS["json"] = _run_worker()
    return _RESULTS["json"]


def _run_worker() -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, str(ROOT / "sharded_worker.py")], env=env,
                          capture_output=True, text=True, timeout=600, cwd=ROOT.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# Float32 round-off: a sharded step sums the gradient of each device's rows and then the
# devices' sums, in another order than one device does, and Adam passes a gradient's relative
# error into the step it takes (the step is the learning rate times m / sqrt(v)). After 2-4
# steps the parameters agree to well under 1e-6 of their size (measured: at most 4e-7, in DPO,
# at |w| <= 1; a sharding bug moves them by the learning rate, 1e-4 or more). The reward model's two
# biases whose gradient is exactly zero in exact arithmetic (see the worker) are pure round-off
# whose sign the order decides, so Adam may move them by up to its learning rate per step
# either way: bounded by steps x peak learning rate (4 x 3e-4).
TOLERANCE = 1e-6
STAGES = ("pretrain", "reward_model", "rl", "dpo")


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("mesh", ["dp8", "fsdp8", "dp2xfsdp4"])
def test_sharded_training_equals_one_device(eight_devices, stage, mesh):
    result = eight_devices[stage][mesh]
    assert result["max_diff"] <= TOLERANCE * max(1.0, result["max_abs"]), result
    # The per-step losses and gradient norms (and RL's scores and KL) agree too: a gradient off
    # by a constant factor would leave Adam's parameters nearly unchanged, not these. (Counts
    # of exact ties are left out: DPO's first step has policy = reference, every implicit
    # reward 0, and whether round-off makes a pair's reward "won" differs with the order.)
    diffs = result["history_diff"]
    for metric in ("loss", "grad_norm", "score", "kl"):
        assert diffs.get(metric, 0.0) <= 1e-4, (metric, diffs)
    assert "loss" in diffs and "grad_norm" in diffs
    if stage == "reward_model":
        assert result["zero_grad_diff"] <= 4 * 3e-4, result


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_parameters_are_really_split(eight_devices, stage):
    """Tiny GPT: d 32, d_ff 128, 263-token vocabulary, 2 layers. With data parallelism every
    device holds all of w1 [2, 32, 128]; with FSDP over 8 (or 4) devices each holds an eighth
    (a quarter) of its largest axis, and of the embedding's d (263 is not divisible)."""
    shards = eight_devices[stage]
    assert shards["dp8"]["w1"] == [[2, 32, 128]] * 8
    assert shards["dp8"]["tok_emb"] == [[263, 32]] * 8
    assert shards["fsdp8"]["w1"] == [[2, 32, 16]] * 8
    assert shards["fsdp8"]["tok_emb"] == [[263, 4]] * 8
    assert shards["dp2xfsdp4"]["w1"] == [[2, 32, 32]] * 8  # 4 slices, each on 2 replicas
    assert shards["dp2xfsdp4"]["tok_emb"] == [[263, 8]] * 8


@pytest.mark.slow
def test_the_compiled_rl_step_communicates_as_its_sharding_says(eight_devices):
    c = eight_devices["collectives"]
    # Data parallelism: the update's gradients are summed across devices (all-reduce), and
    # with one minibatch per step no row moves to another device for the update.
    assert c["rl_step_dp8"]["all-reduce"] >= 1
    assert c["rl_update_dp8"]["all-gather"] == 0, c["rl_update_dp8"]
    # and a batch drawn inside the compiled step is split, 2 of its 16 rows per device
    assert c["drawn_batch"] == [[2, 32]] * 8
    # FSDP: each weight is gathered before it is used.
    for mesh in ("rl_step_fsdp8", "rl_step_dp2xfsdp4"):
        assert c[mesh]["all-gather"] > c["rl_step_dp8"]["all-gather"], c
    # GRPO's group mean and std: 8 groups of 4 over 8 devices stay local; 4 groups of 8 would
    # straddle two devices each, and XLA has to communicate.
    assert sum(c["grpo_advantages_B8"].values()) == 0, c["grpo_advantages_B8"]
    assert sum(c["grpo_advantages_B4"].values()) > 0, c["grpo_advantages_B4"]
    # a batch the device count does not divide is said so, once per size
    assert len(c["unsplit_warnings"]) == 1, c["unsplit_warnings"]
    assert "12 rows" in c["unsplit_warnings"][0] and "8 devices" in c["unsplit_warnings"][0]


# ---------------------------------------------------------------------------------------------
# Across hosts: two processes of one jax.distributed cluster on this machine


def test_a_checkpoint_of_arrays_split_over_two_hosts_is_whole(tmp_path):
    """FSDP over the 4 devices of 2 processes leaves each process a quarter of each weight on
    each of its 2 devices and no array whole; ``save_checkpoint`` gathers them (a collective
    both processes reach), process 0 writes the file, and both load the parameters exactly."""
    with socket.socket() as s:  # a free port for the cluster's coordinator
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "2"}
    path = tmp_path / "params.msgpack"
    procs = [subprocess.Popen([sys.executable, str(ROOT / "multihost_worker.py"), str(i),
                               str(port), str(path)], env=env, cwd=ROOT.parent, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in (0, 1)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    for r in results:
        assert r["devices"] == [4, 2]
        assert r["w1_whole_here"] is False and r["w1_here"] == [[2, 32, 32]] * 2
        assert r["max_diff"] == 0.0
        assert r["metadata"] == {"written_by": 0}
    assert [f.name for f in tmp_path.iterdir()] == ["params.msgpack"]  # no temporary left
