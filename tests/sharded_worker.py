"""Run by ``tests/test_lm_sharding.py`` in a subprocess started with 8 simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``, which must be set before JAX starts):
trains each stage of the pipeline for a few steps on one device and on meshes of 8, and prints
one JSON object of what the test asserts (largest parameter differences, per-device shapes,
collectives counted in the compiled steps)."""

import json
import os
import sys
import warnings
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_book import ch05_reward_models as ch05
from rlhf_book import ch06_policy_gradients as ch06
from rlhf_book import ch08_direct_alignment as ch08
from rlhf_book.ch06_policy_gradients import losses as L
from rlhf_book.lm import gpt, sharding, train

TINY = gpt.get_config("tiny")
MESHES = {"dp8": dict(fsdp=1), "fsdp8": dict(fsdp=8), "dp2xfsdp4": dict(fsdp=4)}


def max_diff(a, b) -> float:
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# A reward model's score is r = w . LN_f(h) + b, and only r_chosen - r_rejected enters the
# Bradley-Terry loss: the head's bias b and LN_f's bias shift both scores alike, so their
# gradient is zero in exact arithmetic and only float32 round-off in float, whose sign depends
# on the order of the sums (which sharding changes). Adam then moves them by up to its learning
# rate per step either way. They are compared apart.
def zero_gradient(rm):
    return (rm["head"]["b"], rm["lm"]["ln_f"]["bias"])


def split_zero_gradient(rm):
    lm = {**rm["lm"], "ln_f": {"scale": rm["lm"]["ln_f"]["scale"]}}
    return {"lm": lm, "head": rm["head"]["w"]}


def history_diff(a: dict, b: dict) -> dict:
    """The largest relative difference of each per-step metric two runs recorded (losses,
    gradient norms, scores, KL: what Adam's sign-like first steps would not show in the
    parameters)."""
    return {k: float(np.max(np.abs(np.asarray(a[k]) - np.asarray(b[k]))
                            / np.maximum(np.abs(np.asarray(a[k])), 1e-3)))
            for k in a if k != "step" and np.issubdtype(np.asarray(a[k]).dtype, np.floating)}


def on_meshes(run):
    """``run() -> (params, history)`` on one device, then inside each mesh: the largest
    difference of the parameters and of the per-step metrics, and the parameters' per-device
    shapes (``blocks.mlp.w1``, ``tok_emb``)."""
    base, base_history = run()
    out = {}
    for name, kw in MESHES.items():
        with sharding.use(sharding.make_mesh(8, **kw)):
            params, history = run()
        lm = params.get("lm", params)
        zero_grad = {}
        if "head" in params:  # the reward model: see zero_gradient
            params, base_, zero_grad = split_zero_gradient(params), split_zero_gradient(base), {
                "zero_grad_diff": max_diff(zero_gradient(base), zero_gradient(params))}
        else:
            base_ = base
        out[name] = {"max_diff": max_diff(base_, params), **zero_grad,
                     "history_diff": history_diff(base_history, history),
                     "max_abs": max(float(np.max(np.abs(np.asarray(x))))
                                    for x in jax.tree.leaves(base)),
                     "w1": sharding.device_shapes(lm["blocks"]["mlp"]["w1"]),
                     "tok_emb": sharding.device_shapes(lm["tok_emb"])}
    return out


def pretrain():
    stream = np.random.default_rng(0).integers(0, TINY.vocab_size, 4000).astype(np.int32)
    config = train.TrainConfig(steps=4, batch_size=16, seq_len=32, warmup_steps=1, log_every=2)
    return on_meshes(lambda: train.pretrain(TINY, config, stream, seed=0, progress=False))


PAIRS = [SimpleNamespace(prompt=f"Q{i}?", chosen="yes " * (i % 3 + 1), rejected="no " * (i % 4))
         for i in range(16)]


def reward_model():
    lm = gpt.init_params(jax.random.PRNGKey(0), TINY)
    rm = ch05.init_reward_model(jax.random.PRNGKey(1), lm, TINY)
    batch = ch05.encode_pairs(PAIRS, 32)
    config = ch05.RMConfig(steps=4, batch_size=16, seq_len=32, warmup_steps=1, log_every=2)
    return on_meshes(lambda: ch05.train_reward_model(TINY, rm, config, batch, progress=False))


def letter_a(params, tokens, mask, prompt_ids):
    del params, prompt_ids
    return jnp.sum((tokens == ord("a")) * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1)


PROMPTS = [f"Say {c}." for c in "abcdefgh"]
RL = ch06.RLConfig(algorithm="grpo", steps=2, prompts_per_step=8, group_size=4,
                   max_new_tokens=8, log_every=2, beta=0.1)


def rl():
    lm = gpt.init_params(jax.random.PRNGKey(0), TINY)
    prompts = ch06.encode_prompts(PROMPTS)
    return on_meshes(lambda: ch06.train_rl(RL, TINY, lm, prompts, ch06.Reward(letter_a),
                                           progress=False))


def dpo():
    lm = gpt.init_params(jax.random.PRNGKey(0), TINY)
    pairs = ch08.encode_preference_pairs(PAIRS)
    config = ch08.DPOConfig(steps=4, batch_size=8, log_every=2)
    return on_meshes(lambda: ch08.train_dpo(config, TINY, lm, pairs, progress=False))


def collectives():
    """Collectives in one compiled RL step per mesh, and in GRPO's group advantages when the
    device count divides the number of groups (B = 8) and when it does not (B = 4)."""
    lm = gpt.init_params(jax.random.PRNGKey(0), TINY)
    prompts = ch06.encode_prompts(PROMPTS)
    reward = ch06.Reward(letter_a)
    out = {}
    for name, kw in MESHES.items():
        mesh = sharding.make_mesh(8, **kw)
        with sharding.use(mesh):
            state = sharding.place(ch06.init_rl_state(RL, TINY, lm, reward), mesh)
            step = jax.jit(ch06.make_rl_step(RL, TINY, prompts, reward))
            hlo = step.lower(state, jax.random.PRNGKey(0)).compile().as_text()
            out[f"rl_step_{name}"] = sharding.collectives(hlo)
            # the collectives outside the generation loop (its frames are _generate_cached)
            outside = "\n".join(line for line in hlo.splitlines()
                                 if "_generate_cached" not in line)
            out[f"rl_update_{name}"] = sharding.collectives(outside)
    with sharding.use(sharding.make_mesh(8)):
        # where a batch is born it is split: 16 rows drawn inside jit, 2 per device
        rows = {"tokens": jnp.arange(40 * 32).reshape(40, 32)}
        drawn = jax.jit(train.random_rows(rows, 16))(jax.random.PRNGKey(0))
        out["drawn_batch"] = sharding.device_shapes(drawn["tokens"])
        for B in (8, 4):
            def advantages(rewards, B=B):
                return L.grpo_advantages(sharding.shard_batch(rewards).reshape(B, -1))
            hlo = jax.jit(advantages).lower(jnp.zeros(32)).compile().as_text()
            out[f"grpo_advantages_B{B}"] = sharding.collectives(hlo)
        # a batch of 12 rows cannot be split over 8 devices: one warning per size, none for 24
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for rows in (12, 12, 24):
                jax.jit(sharding.shard_batch)(jnp.zeros((rows, 3)))
                jax.jit(sharding.shard_batch)(jnp.ones((rows, 5)))  # a second trace
        out["unsplit_warnings"] = [str(w.message) for w in caught]
    return out


if __name__ == "__main__":
    assert jax.device_count() == 8, (jax.device_count(), os.environ.get("XLA_FLAGS"))
    checks = {"pretrain": pretrain, "reward_model": reward_model, "rl": rl, "dpo": dpo,
              "collectives": collectives}
    names = sys.argv[1:] or list(checks)
    print(json.dumps({name: checks[name]() for name in names}))
