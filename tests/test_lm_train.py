"""Training core: the loss falls, chunks equal single steps, determinism, checkpoints."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_book import data
from rlhf_book.lm import gpt, train


def tree_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(
        x.dtype == y.dtype and x.shape == y.shape and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(la, lb))


@pytest.fixture(scope="module")
def streams():
    docs = data.pretraining_corpus(seed=0, n_documents=600)
    return train.token_stream(docs[30:]), train.token_stream(docs[:30])


QUICK = train.TrainConfig(steps=300, batch_size=16, seq_len=64, learning_rate=3e-3,
                          warmup_steps=30, log_every=100)


@pytest.fixture(scope="module")
def trained(tiny_config, streams):
    return train.pretrain(tiny_config, QUICK, *streams, seed=0, progress=False)


def test_token_stream_layout():
    from rlhf_book.lm import tokenizer as tok
    stream = train.token_stream(["ab", "c"])
    np.testing.assert_array_equal(stream, [tok.BOS, 97, 98, tok.EOT, tok.BOS, 99, tok.EOT])


def test_loss_falls_on_the_synthetic_corpus(trained, tiny_config, streams):
    _, history = trained
    # A random model starts near log |V| (uniform over 263 tokens). A model that learned only
    # byte frequencies would sit at the corpus's unigram entropy (~3.3 nats); using context
    # must take the held-out loss well below it (observed ~2.1 after 300 steps).
    counts = np.bincount(streams[0])
    p = counts[counts > 0] / counts.sum()
    unigram_entropy = -(p * np.log(p)).sum()
    assert abs(history["loss"][0] - np.log(tiny_config.vocab_size)) < 0.3
    assert history["eval_loss"][-1] < unigram_entropy - 0.7
    assert history["loss"][-50:].mean() < history["loss"][:10].mean() - 2.5
    assert np.isfinite(history["loss"]).all()


def test_pretraining_is_deterministic(trained, tiny_config, streams):
    config = train.TrainConfig(steps=20, batch_size=4, seq_len=32, log_every=10)
    a, ha = train.pretrain(tiny_config, config, streams[0], seed=3, progress=False)
    b, hb = train.pretrain(tiny_config, config, streams[0], seed=3, progress=False)
    c, _ = train.pretrain(tiny_config, config, streams[0], seed=4, progress=False)
    assert tree_equal(a, b)
    np.testing.assert_array_equal(ha["loss"], hb["loss"])
    assert not tree_equal(a, c)


def test_a_compiled_chunk_equals_repeated_single_steps(tiny_config, streams):
    config = train.TrainConfig(steps=10, batch_size=4, seq_len=32)
    stream = jnp.asarray(streams[0])

    def loss_fn(params, tokens):
        return train.lm_loss(params, tokens, tiny_config)

    def sample(key):
        return train.sample_windows(key, stream, 4, 32)

    params = gpt.init_params(jax.random.PRNGKey(0), tiny_config)
    state0 = train.create_train_state(params, train.make_optimizer(config))
    key = jax.random.PRNGKey(1)
    step5 = jax.jit(lambda s, k: jax.lax.scan(train.make_supervised_step(loss_fn, sample), s,
                                                jax.random.split(k, 5)))
    chunk_state, metrics = step5(state0, key)
    step = jax.jit(train.make_train_step(loss_fn))
    state = state0
    for k in jax.random.split(key, 5):
        state, m = step(state, sample(k))
    assert int(chunk_state.step) == int(state.step) == 5
    for x, y in zip(jax.tree_util.tree_leaves(chunk_state.params), jax.tree_util.tree_leaves(state.params)):
        np.testing.assert_allclose(x, y, atol=1e-6)
    np.testing.assert_allclose(metrics["loss"][-1], m["loss"], rtol=1e-5)


def test_sample_windows_are_slices_of_the_stream():
    stream = jnp.arange(100, dtype=jnp.int32)
    windows = np.asarray(train.sample_windows(jax.random.PRNGKey(0), stream, 8, 10))
    assert windows.shape == (8, 10)
    assert (np.diff(windows, axis=1) == 1).all() and windows.min() >= 0 and windows.max() < 100


def test_checkpoint_round_trip_is_bit_exact(tmp_path, trained):
    params, _ = trained
    path = train.save_checkpoint(tmp_path / "ck" / "p.msgpack", params, {"note": "hi", "n": 3})
    loaded, meta = train.load_checkpoint(path)
    assert meta == {"note": "hi", "n": 3}
    assert tree_equal(params, loaded)
    assert sorted(os.listdir(tmp_path / "ck")) == ["p.msgpack"]  # no temporary file left
    assert b"pickle" not in path.read_bytes()[:64]


def test_train_state_round_trip_with_optimizer_state(tmp_path, tiny_config):
    config = train.TrainConfig(steps=10)
    params = gpt.init_params(jax.random.PRNGKey(0), tiny_config)
    state = train.create_train_state(params, train.make_optimizer(config))
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    state = state.apply_gradients(grads=grads).apply_gradients(grads=grads)
    train.save_checkpoint(tmp_path / "state.msgpack", state)
    fresh = train.create_train_state(gpt.init_params(jax.random.PRNGKey(9), tiny_config),
                                     train.make_optimizer(config))
    restored, _ = train.load_checkpoint(tmp_path / "state.msgpack", target=fresh)
    assert int(restored.step) == 2
    assert tree_equal(state.params, restored.params)
    assert tree_equal(state.opt_state, restored.opt_state)


def test_a_failed_write_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch, tiny_params):
    path = tmp_path / "p.msgpack"
    train.save_checkpoint(path, {"a": jnp.arange(3)})
    before = path.read_bytes()

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        train.save_checkpoint(path, tiny_params)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["p.msgpack"]


def test_unreadable_checkpoints_raise(tmp_path):
    with pytest.raises(FileNotFoundError):
        train.load_checkpoint(tmp_path / "missing.msgpack")
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(ValueError, match="not a"):
        train.load_checkpoint(bad)


def test_a_corrupted_or_truncated_checkpoint_is_refused(tmp_path, tiny_params):
    """Flipping bytes inside the stored arrays (a checkpoint that still parses) or cutting the
    file short: both raise ValueError naming the file, instead of loading wrong numbers."""
    path = train.save_checkpoint(tmp_path / "p.msgpack", tiny_params, {"stage": "sft"})
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    corrupt = tmp_path / "corrupt.msgpack"
    corrupt.write_bytes(bytes(data[:middle]) + bytes(b ^ 0x55 for b in data[middle:middle + 64])
                        + bytes(data[middle + 64:]))
    with pytest.raises(ValueError, match="corrupt.msgpack.*(corrupt|readable)"):
        train.load_checkpoint(corrupt)
    truncated = tmp_path / "truncated.msgpack"
    truncated.write_bytes(bytes(data[:middle]))
    with pytest.raises(ValueError, match="truncated.msgpack"):
        train.load_checkpoint(truncated)
    train.load_checkpoint(path)  # the intact file still loads


def test_temporary_files_of_killed_writes_are_removed(tmp_path):
    path = tmp_path / "p.msgpack"
    stale = tmp_path / ".p.msgpack.tmp999999999"  # no such process
    stale.write_bytes(b"half a checkpoint")
    train.save_checkpoint(path, {"a": jnp.arange(3)})
    assert sorted(os.listdir(tmp_path)) == ["p.msgpack"]


def test_a_non_finite_loss_stops_training_before_anything_is_saved():
    """One NaN at step 3 of 8: the driver raises, naming the metric and the step."""
    def step(state, key):
        state = state + 1.0
        loss = jnp.where(state == 3.0, jnp.nan, 1.0 / state)
        return state, {"loss": loss}

    with pytest.raises(FloatingPointError, match="loss is nan at step 3"):
        train.run_in_chunks(step, jnp.float32(0.0), steps=8, chunk_size=4,
                            key=jax.random.PRNGKey(0), progress=False)

    def bad_state(state, key):  # finite metrics, but the parameters blow up
        return state * jnp.inf, {"loss": jnp.float32(1.0)}

    with pytest.raises(FloatingPointError, match="parameters"):
        train.run_in_chunks(bad_state, jnp.float32(1.0), steps=4, chunk_size=2,
                            key=jax.random.PRNGKey(0), progress=False)


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "steps"), ({"learning_rate": 0.0}, "learning_rate"), ({"grad_clip": 0}, "grad_clip"),
])
def test_bad_train_configs_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        train.TrainConfig(**kwargs)


def test_pretrain_rejects_windows_longer_than_the_model(tiny_config):
    with pytest.raises(ValueError, match="seq_len=128 exceeds"):
        train.pretrain(tiny_config, train.TrainConfig(seq_len=128), np.zeros(1000, np.int32),
                       progress=False)
