"""Many devices with JAX's own sharding: a ``Mesh`` with a data axis and an FSDP axis.

Nothing in the chapters changes to run on several devices. A training run inside
``with sharding.use(mesh):`` (or ``jax.set_mesh(mesh)``) is spread over the mesh by two
things only:

* :func:`shard_batch` is called where a batch is born (:func:`rlhf_book.lm.train.random_rows`,
  :func:`~rlhf_book.lm.train.sample_windows`, the prompts of an RL rollout): it asks XLA to
  split the batch's leading axis over *every* device of the mesh (``("data", "fsdp")``).
  Without a mesh it does nothing, so one device (a laptop) runs the very same function.
* :func:`~rlhf_book.lm.train.run_in_chunks` places the train state with
  :func:`state_shardings`: every array whole on every device along ``"data"`` (data
  parallelism), and split along its largest divisible axis over ``"fsdp"`` (FSDP: parameters,
  gradients and Adam's moments each live on one ``fsdp`` slice).

XLA's SPMD partitioner (GSPMD; Xu et al., 2021) then writes the communication: with a
replicated model, one all-reduce that sums the gradients of the devices' shares of the
batch; with FSDP, an all-gather of each weight before it is used, and a sum of its gradient
that leaves each device its slice (a reduce-scatter; XLA:CPU writes it as an all-reduce and a
slice). :func:`collectives` counts them in a compiled step, so a reader can see them.

GRPO's group statistics need no collective when the groups stay on one device: a rollout's
``B * G`` rows are prompt-major (row ``b * G + g``), so splitting them into contiguous blocks
keeps every group of ``G`` on one device as long as the device count divides ``B``; the
``[B, G]`` reshape and the per-group mean and standard deviation are then local. Where it
does not divide, XLA still computes the right numbers, moving rows between devices to do so.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp")
BATCH = P(AXES)  # the batch's leading axis split over every device of the mesh


def make_mesh(n_devices: int | None = None, *, fsdp: int = 1, devices=None) -> Mesh:
    """A ``(data, fsdp)`` mesh over the first ``n_devices`` devices (default: all of them):
    ``n_devices // fsdp`` data-parallel replicas, each holding the model split ``fsdp`` ways.
    ``fsdp=1`` is plain data parallelism; ``fsdp=n_devices`` is full FSDP (ZeRO-3)."""
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices) if n_devices is None else n_devices
    if not 1 <= n <= len(devices):
        raise ValueError(f"n_devices must be between 1 and the {len(devices)} devices "
                         f"available, got {n_devices}")
    if fsdp < 1 or n % fsdp:
        raise ValueError(f"fsdp must be a positive divisor of n_devices={n}, got {fsdp}")
    # jax.make_mesh orders the devices by the machine's topology (on TPUs and GPUs, so that
    # the fsdp axis, which communicates most, falls on the closest devices). Auto axes:
    # shardings are hints that XLA's partitioner propagates (GSPMD), so the chapters'
    # functions need no sharding annotations of their own.
    return jax.make_mesh((n // fsdp, fsdp), AXES, axis_types=(AxisType.Auto, AxisType.Auto),
                         devices=devices[:n])


@contextlib.contextmanager
def use(mesh: Mesh | None):
    """Run what is inside on ``mesh`` (``jax.set_mesh``); ``None`` or a one-device mesh
    changes nothing."""
    if mesh is None or mesh.size == 1:
        yield mesh
        return
    with jax.set_mesh(mesh):
        yield mesh


def current_mesh() -> Mesh | None:
    """The mesh set by :func:`use` (outside ``jit``), or None when there is none or it has
    one device."""
    mesh = jax.sharding.get_mesh()
    return None if mesh.empty or mesh.size == 1 else mesh


# [guide:shard-batch]
def shard_batch(tree):
    """Split the leading axis of every array of ``tree`` over all the mesh's devices (inside
    ``jit``): a no-op without a mesh. An axis the device count does not divide is left to XLA's
    partitioner, with a warning (once per size): it may then compute the whole batch on every
    device."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return tree

    def constrain(x):
        if x.ndim == 0:
            return x
        if x.shape[0] % mesh.size:
            _warn_unsplit(x.shape[0], mesh.size)
            return x
        return jax.lax.with_sharding_constraint(x, BATCH)

    return jax.tree.map(constrain, tree)
# [/guide]


_UNSPLIT: set[tuple[int, int]] = set()  # (rows, devices) already warned about


def _warn_unsplit(rows: int, devices: int) -> None:
    if (rows, devices) not in _UNSPLIT:
        _UNSPLIT.add((rows, devices))
        warnings.warn(f"a batch of {rows} rows is not split over the mesh's {devices} devices "
                      f"(they do not divide it): XLA's partitioner chooses the layout, possibly "
                      f"the whole batch on every device; a multiple of {devices} rows spreads it",
                      stacklevel=4)


# [guide:param-spec]
def param_spec(shape: tuple[int, ...], fsdp: int) -> P:
    """FSDP's partition of one array: its largest axis that ``fsdp`` divides (the last of
    equals) split over ``"fsdp"``; replicated when none does, or ``fsdp == 1``."""
    axes = [i for i, d in enumerate(shape) if fsdp > 1 and d % fsdp == 0]
    if not axes:
        return P()
    axis = max(axes, key=lambda i: (shape[i], i))
    return P(*[("fsdp" if i == axis else None) for i in range(len(shape))])
# [/guide]


def state_shardings(tree, mesh: Mesh):
    """A ``NamedSharding`` for every array of ``tree`` (parameters, optimizer state, a whole
    train state): :func:`param_spec` over the mesh's ``fsdp`` axis, replicated along
    ``data``. Adam's moments have their parameters' shapes, so they are split alike."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda x: NamedSharding(mesh, param_spec(np.shape(x), fsdp)), tree)


def place(tree, mesh: Mesh | None = None):
    """Put ``tree`` on ``mesh`` (default: :func:`current_mesh`) as :func:`state_shardings`
    says; unchanged without a mesh."""
    mesh = current_mesh() if mesh is None else mesh
    if mesh is None:
        return tree
    return jax.device_put(tree, state_shardings(tree, mesh))


def device_shapes(x: jax.Array) -> list[tuple[int, ...]]:
    """The shape of ``x``'s piece on each of its devices: how it is actually split."""
    return [tuple(s.data.shape) for s in x.addressable_shards]


COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")


def collectives(hlo_text: str) -> dict[str, int]:
    """How many of each collective a compiled HLO module (``jit(f).lower(...).compile()
    .as_text()``) runs: the communication XLA wrote for a sharding."""
    counts = {}
    for name in COLLECTIVES:
        # An op appears as ``= f32[...] all-reduce(`` (or its async ``-start`` half).
        counts[name] = len(re.findall(rf"\s{name}(?:-start)?\(", hlo_text))
    return counts


def describe(tree: Any) -> dict[str, str]:
    """``{path: "global shape -> per-device shape x count"}`` for every array of ``tree``."""
    out = {}
    for path, x in jax.tree_util.tree_leaves_with_path(tree):
        shapes = device_shapes(x)
        out[jax.tree_util.keystr(path)] = f"{tuple(x.shape)} -> {shapes[0]} x {len(shapes)}"
    return out
