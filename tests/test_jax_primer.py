"""The JAX primer (``rlhf_book.jax_primer``, ``notebooks/ch00_jax_primer.ipynb``): its functions
against hand-derived math and NumPy, and the checks of its exercises 0.7-0.9, which pass the
library's solutions and fail the usual wrong ones with a hint that names the mistake."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_book import jax_primer as primer
from rlhf_book.textbook import book, catalog, grading
from rlhf_book.textbook.checks import Mismatch, ch00_mini_gpt as checks

EXERCISES = {"0.7": "per_example_grads", "0.8": "sgd_step", "0.9": "exponential_moving_average"}


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


# ----------------------------------------------------------------------------------------------
# The library functions


def test_toy_data_is_deterministic_with_binary_labels_that_follow_the_features():
    xs, ys = primer.toy_classification(jax.random.PRNGKey(0), 2000, 4)
    again, _ = primer.toy_classification(jax.random.PRNGKey(0), 2000, 4)
    other, _ = primer.toy_classification(jax.random.PRNGKey(1), 2000, 4)
    assert xs.shape == (2000, 4) and ys.shape == (2000,) and xs.dtype == jnp.float32
    assert jnp.array_equal(xs, again) and not jnp.array_equal(xs, other)
    assert set(np.unique(ys).tolist()) == {0.0, 1.0}
    # w_true = (1, -1, 1, -1) * 2 / sqrt(4): the label frequency follows sigmoid(x . w_true)
    logits = np.asarray(xs) @ np.array([1.0, -1.0, 1.0, -1.0])
    high, low = np.asarray(ys)[logits > 1].mean(), np.asarray(ys)[logits < -1].mean()
    assert high > 0.75 and low < 0.25


@pytest.mark.parametrize("n, dim", [(0, 3), (3, 0), (2.0, 3), (3, "4")])
def test_toy_data_refuses_bad_sizes(n, dim):
    with pytest.raises(ValueError, match="n must|dim must"):
        primer.toy_classification(jax.random.PRNGKey(0), n, dim)


def test_init_params_shapes_and_bad_dim():
    params = primer.init_params(jax.random.PRNGKey(0), 5)
    assert params["w"].shape == (5,) and params["b"].shape == () and float(params["b"]) == 0.0
    assert 0.0 < float(jnp.std(params["w"])) < 0.5
    with pytest.raises(ValueError, match="dim"):
        primer.init_params(jax.random.PRNGKey(0), 0)


def test_example_loss_is_the_logistic_log_loss_and_finite_for_extreme_logits():
    params = {"w": jnp.array([0.5, -1.0]), "b": jnp.array(0.2)}
    x = jnp.array([1.0, 0.3])
    z = 0.5 - 0.3 + 0.2
    for y in (0.0, 1.0, 0.3):
        expected = -(y * math.log(sigmoid(z)) + (1 - y) * math.log(1 - sigmoid(z)))
        assert abs(float(primer.example_loss(params, x, y)) - expected) < 1e-6
    big = {"w": jnp.array([1e4, 0.0]), "b": jnp.array(0.0)}
    assert abs(float(primer.example_loss(big, x, 1.0))) < 1e-3        # confident and right
    assert abs(float(primer.example_loss(big, x, 0.0)) - 1e4) < 1.0    # confident and wrong


def test_batch_loss_is_the_mean_with_the_accuracy_as_aux():
    xs, ys = primer.toy_classification(jax.random.PRNGKey(2), 50, 3)
    params = primer.init_params(jax.random.PRNGKey(3), 3)
    loss, metrics = primer.batch_loss(params, xs, ys)
    z = np.asarray(xs, np.float64) @ np.asarray(params["w"], np.float64) + float(params["b"])
    y = np.asarray(ys, np.float64)
    expected = np.mean(-(y * np.log(sigmoid(z)) + (1 - y) * np.log(1 - sigmoid(z))))
    assert abs(float(loss) - expected) < 1e-5
    assert abs(float(metrics["accuracy"]) - np.mean((z > 0) == (y > 0.5))) < 1e-6


def test_per_example_grads_average_to_the_batch_gradient():
    xs, ys = primer.toy_classification(jax.random.PRNGKey(4), 16, 3)
    params = primer.init_params(jax.random.PRNGKey(5), 3)
    per_example = primer.per_example_grads(params, xs, ys)
    batch = jax.grad(lambda p: primer.batch_loss(p, xs, ys)[0])(params)
    assert np.allclose(per_example["w"].mean(0), batch["w"], atol=1e-6)
    assert np.allclose(per_example["b"].mean(0), batch["b"], atol=1e-6)


@pytest.mark.parametrize("xs, ys, match", [
    (np.zeros(3), np.zeros(3), "xs must be"), (np.zeros((3, 2)), np.zeros(2), "ys must be"),
    (np.zeros((3, 5)), np.zeros(3), r"params\['w'\]")])
def test_per_example_grads_refuses_bad_shapes(xs, ys, match):
    with pytest.raises(ValueError, match=match):
        primer.per_example_grads({"w": jnp.zeros(2), "b": jnp.zeros(())}, xs, ys)


def test_sgd_step_refuses_mismatched_trees():
    with pytest.raises(ValueError, match="grads must have the structure of params"):
        primer.sgd_step({"w": jnp.ones(2)}, {"v": jnp.ones(2)}, 0.1)


def test_moving_average_by_hand_and_its_argument_checks():
    # m_0 = 4, m_1 = 0.5 * 4 + 0.5 * 0 = 2, m_2 = 0.5 * 2 + 0.5 * 2 = 2, m_3 = 1 + 4 = 5
    out = primer.exponential_moving_average(jnp.array([4, 0, 2, 8]), 0.5)  # ints averaged as floats
    assert out.dtype == jnp.float32 and out.tolist() == [4.0, 2.0, 2.0, 5.0]
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="decay"):
            primer.exponential_moving_average(jnp.ones(3), bad)
    for xs in (jnp.ones(()), jnp.ones((0, 2))):
        with pytest.raises(ValueError, match="xs must be"):
            primer.exponential_moving_average(xs, 0.5)


def _newton_logistic(xs, ys, iterations=30):
    """The exact optimum of the mean logistic loss, by Newton's method in float64."""
    X = np.hstack([np.asarray(xs, np.float64), np.ones((len(xs), 1))])
    y = np.asarray(ys, np.float64)
    theta = np.zeros(X.shape[1])
    for _ in range(iterations):
        p = sigmoid(X @ theta)
        hessian = (X * (p * (1 - p))[:, None]).T @ X / len(y)
        theta -= np.linalg.solve(hessian, X.T @ (p - y) / len(y))
    z = X @ theta
    return theta, float(np.mean(np.logaddexp(0.0, z) - y * z))


def test_train_logistic_reaches_the_newton_optimum_and_vmaps_over_seeds():
    xs, ys = primer.toy_classification(jax.random.PRNGKey(0), 256, 4)
    theta, best = _newton_logistic(xs, ys)
    train = functools.partial(primer.train_logistic, steps=400)
    params, history = train(jax.random.PRNGKey(1), xs, ys)
    assert history["loss"].shape == (400,) and history["accuracy"].shape == (400,)
    assert float(history["loss"][0]) > best + 0.1
    assert abs(float(primer.batch_loss(params, xs, ys)[0]) - best) < 1e-4
    assert np.allclose(np.append(params["w"], params["b"]), theta, atol=2e-2)
    keys = jax.random.split(jax.random.PRNGKey(2), 3)
    fits, histories = jax.vmap(train, in_axes=(0, None, None))(keys, xs, ys)
    assert fits["w"].shape == (3, 4) and histories["loss"].shape == (3, 400)
    assert np.allclose(histories["loss"][:, -1], best, atol=1e-4)
    with pytest.raises(ValueError, match="steps"):
        primer.train_logistic(jax.random.PRNGKey(0), xs, ys, steps=0)


# ----------------------------------------------------------------------------------------------
# The catalogue, the checks, and their hints


def test_the_primer_is_chapter_0s_companion_and_sets_exercises_0_7_to_0_9():
    chapter = catalog.get_chapter("ch00")
    assert chapter.companions == ("ch00_jax_primer",)
    assert chapter.notebooks()[0] == catalog.project_root() / "notebooks" / "ch00_jax_primer.ipynb"
    assert chapter.notebooks()[0].exists()
    for exercise_id, function in EXERCISES.items():
        exercise = catalog.get_exercise(exercise_id)
        assert exercise.target == f"rlhf_book.jax_primer:{function}"
        assert exercise.difficulty in (1, 2, 3) and exercise.chapter == chapter
    assert [e.id for e in chapter.exercises][-3:] == list(EXERCISES)


@pytest.mark.parametrize("exercise_id", list(EXERCISES))
def test_the_reference_solutions_pass(exercise_id):
    exercise = catalog.get_exercise(exercise_id)
    exercise.checker()(exercise.reference())


def _fails(exercise_id: str, fn, *hint_parts: str) -> str:
    """Run the check through the grader (in this process) and return its one-line verdict,
    asserting that it fails with every one of ``hint_parts`` in it."""
    result = grading.run_check(catalog.get_exercise(exercise_id), fn, timeout=120)
    assert result.status == grading.FAILING, str(result)
    for part in hint_parts:
        assert part in result.message, result.message
    return result.message


def test_0_7_a_batch_gradient_is_named_as_such():
    def batch_gradient(params, xs, ys):
        return jax.grad(lambda p: primer.batch_loss(p, xs, ys)[0])(params)
    _fails("0.7", batch_gradient, "one gradient for the whole batch", "jax.vmap")


def test_0_7_mapping_the_parameters_too_is_named():
    def mapped_params(params, xs, ys):
        return jax.vmap(jax.grad(primer.example_loss))(params, xs, ys)
    _fails("0.7", mapped_params, "must not map them", "in_axes None for params")


def test_0_7_a_wrong_sign_fails_on_values():
    def wrong_sign(params, xs, ys):
        grads = primer.per_example_grads(params, xs, ys)
        return {"w": -grads["w"], "b": grads["b"]}
    _fails("0.7", wrong_sign, "['w']", "entries differ")


def test_0_8_a_dict_comprehension_gets_the_tree_map_hint():
    def one_level(params, grads, learning_rate):
        return {k: params[k] - learning_rate * grads[k] for k in params}
    _fails("0.8", one_level, "jax.tree_util.tree_map")


def test_0_8_a_tuple_turned_into_a_list_is_a_structure_mismatch():
    def lists(params, grads, learning_rate):
        flat, tree = jax.tree_util.tree_flatten(params)
        new = [p - learning_rate * g for p, g in zip(flat, jax.tree_util.tree_leaves(grads))]
        out = jax.tree_util.tree_unflatten(tree, new)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()} \
            if isinstance(out, dict) else out
    _fails("0.8", lists, "['head'] is a list of 2", "a tuple stays a tuple")


def test_0_8_ascending_the_gradient_is_named():
    def uphill(params, grads, learning_rate):
        return jax.tree_util.tree_map(lambda p, g: p + learning_rate * g, params, grads)
    _fails("0.8", uphill, "UP the gradient")


@pytest.mark.parametrize("wrong, hint", [
    (lambda xs, decay: jax.lax.scan(lambda m, x: ((decay * m + (1 - decay) * x),) * 2,
                                    jnp.zeros_like(jnp.asarray(xs, jnp.float32)[0]),
                                    jnp.asarray(xs, jnp.float32))[1],
     "started from 0"),
    (lambda xs, decay: primer.exponential_moving_average(xs, 1 - decay), "swapped"),
    (lambda xs, decay: jnp.concatenate([jnp.asarray(xs, jnp.float32)[:1], jax.lax.scan(
        lambda m, x: (decay * m + (1 - decay) * x, m), jnp.asarray(xs, jnp.float32)[0],
        jnp.asarray(xs, jnp.float32)[1:])[1]]), "one step late"),
], ids=["from-zero", "swapped", "late"])
def test_0_9_the_usual_mistakes_are_named(wrong, hint):
    _fails("0.9", wrong, hint)


def _python_loop_average(xs, decay):
    xs = jnp.asarray(xs, jnp.float32)
    m, out = xs[0], [xs[0]]
    for t in range(1, xs.shape[0]):
        m = decay * m + (1 - decay) * xs[t]
        out.append(m)
    return jnp.stack(out)


def test_0_9_a_python_loop_gives_the_right_numbers_but_is_unrolled():
    message = _fails("0.9", _python_loop_average, "unrolled", "jax.lax.scan")
    assert "[1 of the " in message  # every value sub-check passed: only the program size fails


def test_0_9_a_python_if_on_the_traced_decay_gets_the_jit_hint():
    def with_if(xs, decay):
        if decay == 0:
            return jnp.asarray(xs, jnp.float32)
        return primer.exponential_moving_average(xs, decay)
    _fails("0.9", with_if, "traced by jit")


def test_the_probe_of_0_9_runs_in_the_worker_process():
    # check() sends the function to a fresh process; the program-size probe must run there
    result = grading.check("0.9", _python_loop_average, quiet=True)
    assert result.status == grading.FAILING and "unrolled" in result.message, str(result)
    assert "could not be sent" not in (result.note or "")
    assert grading.check("0.9", primer.exponential_moving_average, quiet=True).status in (
        grading.PASSED, grading.USES_REFERENCE)


def test_checks_expect_values_from_their_own_loops_not_the_library():
    # the NumPy oracles agree with hand-computed numbers
    assert checks._ema_loop([4.0, 0.0, 2.0, 8.0], 0.5).tolist() == [4.0, 2.0, 2.0, 5.0]
    out = checks._sgd_loop({"a": (np.ones(2), 1.0)}, {"a": (np.ones(2), 2.0)}, 0.5)
    assert isinstance(out["a"], tuple) and out["a"][0].tolist() == [0.5, 0.5] and out["a"][1] == 0.0
    grad_w, grad_b = checks._logistic_grads_loop({"w": np.zeros(2), "b": 0.0},
                                                 np.array([[1.0, 2.0]]), np.array([1.0]))
    assert grad_w.tolist() == [[-0.5, -1.0]] and grad_b.tolist() == [-0.5]  # sigmoid(0) - 1
    with pytest.raises(Mismatch):
        checks.exponential_moving_average(lambda xs, decay: jnp.asarray(xs) * 0)


# ----------------------------------------------------------------------------------------------
# The book's home page lists the primer first


def test_home_page_lists_the_primer_before_chapter_0s_guide(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "chapters").mkdir()
    for name in ("notebooks/ch00_mini_gpt.ipynb", "notebooks/ch00_jax_primer.ipynb"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "chapters" / "ch00_mini_gpt.md").write_text("# Chapter 0\n")
    sections = book.home_page_sections(tmp_path)
    toc = sections.index(":caption: Chapter 0")
    assert (sections.index("JAX primer </notebooks/ch00_jax_primer>", toc)
            < sections.index("Guide </chapters/ch00_mini_gpt>", toc)
            < sections.index("Notebook </notebooks/ch00_mini_gpt>", toc))
    row = next(line for line in sections.splitlines() if line.startswith("| **0."))
    assert "[JAX primer](/notebooks/ch00_jax_primer.ipynb), then [notebook]" in row
    assert "* **[JAX primer](/notebooks/ch00_jax_primer.ipynb)** (chapter 0): the JAX idioms" \
        in sections
    # without the primer's file, no mention of it
    (tmp_path / "notebooks" / "ch00_jax_primer.ipynb").unlink()
    assert "jax_primer" not in book.home_page_sections(tmp_path)
