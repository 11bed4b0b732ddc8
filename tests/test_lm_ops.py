"""Masked reductions and log-probabilities, against NumPy loops."""

import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_book.lm import ops


def np_log_softmax(x):
    x = np.asarray(x, np.float64)
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def test_masked_mean_and_sum_match_a_loop():
    rng = np.random.default_rng(0)
    x, mask = rng.normal(size=(4, 7)), rng.random((4, 7)) < 0.5
    mask[2] = False  # an empty row
    expect_rows = [x[n][mask[n]].mean() if mask[n].any() else 0.0 for n in range(4)]
    np.testing.assert_allclose(ops.masked_mean(jnp.asarray(x), jnp.asarray(mask), axis=1),
                               expect_rows, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ops.masked_sum(jnp.asarray(x), jnp.asarray(mask)), x[mask].sum(),
                               rtol=1e-5)
    np.testing.assert_allclose(ops.masked_mean(jnp.asarray(x), jnp.asarray(mask)), x[mask].mean(),
                               rtol=1e-5)


def test_masked_mean_of_nothing_is_zero_and_masked_infs_do_not_leak():
    assert float(ops.masked_mean(jnp.ones(5), jnp.zeros(5))) == 0.0
    x = jnp.array([1.0, jnp.inf, jnp.nan, 3.0])
    assert float(ops.masked_mean(x, jnp.array([1, 0, 0, 1]))) == 2.0


@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_log_probs_from_logits_match_numpy_even_for_extreme_logits(scale):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 5, 11)) * scale
    targets = rng.integers(0, 11, (3, 5))
    expected = np.take_along_axis(np_log_softmax(logits), targets[..., None], -1)[..., 0]
    got = ops.log_probs_from_logits(jnp.asarray(logits, jnp.float32), jnp.asarray(targets))
    assert bool(jnp.isfinite(got).all())
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3 * scale / 1e2 + 1e-5)


def test_next_token_loss_is_the_shifted_masked_nll():
    rng = np.random.default_rng(2)
    N, T, V = 2, 6, 9
    logits, tokens = rng.normal(size=(N, T, V)), rng.integers(0, V, (N, T))
    mask = np.array([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1]], float)
    lp = np_log_softmax(logits)
    terms = [-lp[n, t - 1, tokens[n, t]] for n in range(N) for t in range(1, T) if mask[n, t]]
    got = ops.next_token_loss(jnp.asarray(logits, jnp.float32), jnp.asarray(tokens),
                              jnp.asarray(mask))
    np.testing.assert_allclose(got, np.mean(terms), rtol=1e-5)


def test_as_float_array_promotes_ints_and_rejects_non_numbers():
    from rlhf_book.lm.checks import as_float_array

    assert as_float_array([1, 2], "x").dtype == jnp.float32
    assert as_float_array(np.array([True, False]), "x").tolist() == [1.0, 0.0]
    assert as_float_array(np.float32(2.5), "x").dtype == jnp.float32
    for bad in (["a", "b"], np.array([1 + 2j])):
        with pytest.raises(ValueError, match="x must"):
            as_float_array(bad, "x")
