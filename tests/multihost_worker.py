"""Run twice by ``tests/test_lm_sharding.py``, as processes 0 and 1 of a two-host JAX cluster on
this machine (``jax.distributed`` over CPU devices, 2 per process, gloo collectives): puts the
tiny GPT's parameters FSDP-split over all 4 devices, so that no process holds any array whole,
saves them with ``save_checkpoint`` and loads them back. Prints one JSON line."""

import json
import sys

import jax

jax.config.update("jax_cpu_collectives_implementation", "gloo")
process, port, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                           process_id=process)

import numpy as np  # noqa: E402

from rlhf_book.lm import gpt, sharding, train  # noqa: E402

params = gpt.init_params(jax.random.PRNGKey(0), gpt.get_config("tiny"))
placed = sharding.place(params, sharding.make_mesh(fsdp=4))
train.save_checkpoint(path, placed, {"written_by": process})
loaded, metadata = train.load_checkpoint(path)
print(json.dumps({
    "devices": [jax.device_count(), jax.local_device_count()],
    "w1_whole_here": placed["blocks"]["mlp"]["w1"].is_fully_addressable,
    "w1_here": sharding.device_shapes(placed["blocks"]["mlp"]["w1"]),
    "max_diff": max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params))),
    "metadata": metadata,
}))
