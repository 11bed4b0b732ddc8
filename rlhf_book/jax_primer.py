"""The JAX idioms this project is written in, on a problem small enough to see whole.

The book's code snippets are PyTorch; this project is JAX. A reader who knows NumPy or PyTorch
meets here, on logistic regression with a handful of parameters, every idiom the chapters use:
explicit PRNG keys, ``jit``, ``grad`` / ``value_and_grad`` with an auxiliary output, ``vmap``
over examples and over seeds, parameters as a pytree (a dict of arrays) updated with
``tree_map`` or optax, and ``lax.scan`` for a loop that runs inside one compiled program. The
primer notebook ``notebooks/ch00_jax_primer.ipynb`` runs each function beside the PyTorch idiom
it replaces, and three of them are chapter 0's exercises 0.7-0.9:

* :func:`per_example_grads` (0.7): one gradient per example, ``vmap`` of ``grad``;
* :func:`sgd_step` (0.8): plain SGD on any pytree of parameters, with ``tree_map``;
* :func:`exponential_moving_average` (0.9): a loop with a carry, as a ``lax.scan``.

The rest is the tiny problem they work on: :func:`toy_classification` (data drawn from a key),
:func:`init_params`, :func:`example_loss` (one example), :func:`batch_loss` (a batch, with
metrics, the ``(loss, metrics)`` convention of every loss in the project) and
:func:`train_logistic` (optax's Adam, every step in one ``lax.scan``).

Shapes: ``B`` examples, ``D`` features, ``T`` time steps. Parameters are ``{"w": [D], "b": []}``.
"""

from __future__ import annotations

import functools
import numbers

import jax
import jax.numpy as jnp
import optax


def toy_classification(key, n: int, dim: int) -> tuple[jax.Array, jax.Array]:
    """``n`` examples of a logistic-regression problem with ``dim`` features, drawn from ``key``.

    Returns ``(xs [n, dim], ys [n])``: features from a standard normal, labels in ``{0., 1.}``
    drawn with probability ``sigmoid(x . w_true)``, where ``w_true`` is ``1, -1, 1, ...``
    scaled to norm 2 and the bias is 0. The same key gives the same data on any machine.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    key_x, key_y = jax.random.split(key)
    w_true = jnp.where(jnp.arange(dim) % 2 == 0, 1.0, -1.0) * 2.0 / jnp.sqrt(dim)
    xs = jax.random.normal(key_x, (n, dim))
    ys = jax.random.bernoulli(key_y, jax.nn.sigmoid(xs @ w_true)).astype(jnp.float32)
    return xs, ys


def init_params(key, dim: int) -> dict[str, jax.Array]:
    """Logistic-regression parameters ``{"w": [dim], "b": []}``: small normal weights drawn from
    ``key`` (standard deviation 0.1) and a zero bias."""
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    return {"w": 0.1 * jax.random.normal(key, (dim,)), "b": jnp.zeros(())}


def example_loss(params, x, y) -> jax.Array:
    """The logistic loss of ONE example: ``x [D]``, a label ``y`` in ``[0, 1]`` -> a scalar.

    ``-(y log sigmoid(z) + (1 - y) log(1 - sigmoid(z)))`` with the logit
    ``z = x . w + b``, computed as ``softplus(z) - y z`` (the same number, finite for any
    ``z``). Written for one example on purpose: ``jax.vmap`` makes it a batch function, and
    ``jax.grad`` of it is the gradient of one example, ``(sigmoid(z) - y) x`` for ``w``.
    """
    z = jnp.dot(x, params["w"]) + params["b"]
    return jax.nn.softplus(z) - y * z


def batch_loss(params, xs, ys) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``(mean loss, {"accuracy": ...})`` over a batch ``xs [B, D]``, ``ys [B]``.

    The project's losses all return ``(loss, metrics)``, and are differentiated with
    ``jax.value_and_grad(loss_fn, has_aux=True)``: the metrics ride along, undifferentiated.
    The per-example losses are :func:`example_loss` mapped over the batch axis with
    ``jax.vmap`` (``in_axes=(None, 0, 0)``: the parameters are shared, not mapped).
    """
    losses = jax.vmap(example_loss, in_axes=(None, 0, 0))(params, xs, ys)
    logits = xs @ params["w"] + params["b"]
    accuracy = jnp.mean((logits > 0) == (ys > 0.5))
    return jnp.mean(losses), {"accuracy": accuracy}


# [guide:per-example-grads]
def per_example_grads(params, xs, ys):
    """The gradient of :func:`example_loss` for each example of a batch, as a pytree
    (Bradbury et al. 2018, JAX's ``grad`` and ``vmap``).

    ``params = {"w": [D], "b": []}``, ``xs [B, D]``, ``ys [B]`` -> ``{"w": [B, D], "b": [B]}``:
    entry ``i`` of each leaf is the gradient of the loss of example ``i`` alone with respect to
    that parameter, so the mean over the batch axis is the gradient of the batch's mean loss.
    PyTorch has no direct way to get these (``loss.backward()`` accumulates one sum); here the
    per-example gradient is one function, and must also run under ``jax.jit``.

    How: ``jax.grad(example_loss)`` is the gradient of one example with respect to its first
    argument, a dict shaped like ``params``; ``jax.vmap(..., in_axes=(None, 0, 0))`` maps it
    over the rows of ``xs`` and ``ys`` while every call sees the same ``params``, and stacks
    each leaf of the result along a new leading axis.
    """
    xs, ys = jnp.asarray(xs), jnp.asarray(ys)
    if xs.ndim != 2:
        raise ValueError(f"xs must be [B, D], got shape {xs.shape}")
    if ys.shape != xs.shape[:1]:
        raise ValueError(f"ys must be [B] = [{xs.shape[0]}], got shape {ys.shape}")
    if jnp.shape(params["w"]) != xs.shape[1:]:
        raise ValueError(f"params['w'] must be [D] = [{xs.shape[1]}], got shape "
                         f"{jnp.shape(params['w'])}")
    # BEGIN SOLUTION
    return jax.vmap(jax.grad(example_loss), in_axes=(None, 0, 0))(params, xs, ys)
    # END SOLUTION
# [/guide]


# [guide:sgd-step]
def sgd_step(params, grads, learning_rate):
    """One step of plain stochastic gradient descent, ``p - learning_rate * g`` for every array
    of a pytree (Robbins and Monro 1951).

    ``params`` and ``grads`` are pytrees of the same structure (dicts, lists and tuples nested
    in any way, arrays as leaves, e.g. ``{"layer": {"w": [D, H], "b": [H]}, "head": (w, b)}``);
    returns a new pytree of that same structure (a tuple stays a tuple), each leaf
    ``p - learning_rate * g``. ``learning_rate`` is a number or a scalar array (traced under
    ``jax.jit``). The inputs are not modified: JAX arrays cannot be.

    How: ``jax.tree_util.tree_map(lambda p, g: p - learning_rate * g, params, grads)`` walks
    the two trees together and rebuilds the structure around the new leaves; this is what
    ``optax.sgd`` plus ``optax.apply_updates`` does, and what ``torch.optim.SGD.step()`` does
    in place.
    """
    if jax.tree_util.tree_structure(params) != jax.tree_util.tree_structure(grads):
        raise ValueError("grads must have the structure of params, got "
                         f"{jax.tree_util.tree_structure(grads)} for "
                         f"{jax.tree_util.tree_structure(params)}")
    # BEGIN SOLUTION
    return jax.tree_util.tree_map(lambda p, g: p - learning_rate * g, params, grads)
    # END SOLUTION
# [/guide]


# [guide:moving-average]
def exponential_moving_average(xs, decay):
    """The exponential moving average of a sequence ``xs [T, ...]`` along its first axis
    (the running average of Adam's moment estimates, Kingma and Ba 2015, without their bias
    correction).

    ``m_0 = x_0`` and ``m_t = decay * m_(t-1) + (1 - decay) * x_t`` for ``t >= 1``; returns
    every ``m_t``, shape ``[T, ...]`` like ``xs`` (``T >= 1``; each trailing entry is averaged
    on its own). ``decay`` in ``[0, 1]``: 0 returns ``xs``, 1 repeats ``x_0``. It must run
    under ``jax.jit`` with ``decay`` traced, and compile to one loop whatever ``T``.

    How: ``jax.lax.scan(step, xs[0], xs[1:])`` with ``step(m, x)`` returning the new average
    twice, as the carry for the next step and as this step's output; prepend ``xs[0]``. A
    Python ``for`` loop would give the same numbers, but under ``jit`` it is unrolled into
    ``T`` copies of the step, and a Python ``if t == 0`` on a traced value fails.
    """
    xs = jnp.asarray(xs)
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        xs = xs.astype(jnp.float32)  # integers are averaged as floats
    if xs.ndim < 1 or xs.shape[0] < 1:
        raise ValueError(f"xs must be [T, ...] with T >= 1, got shape {xs.shape}")
    if isinstance(decay, numbers.Real) and not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay!r}")
    # BEGIN SOLUTION
    def step(m, x):
        m = decay * m + (1.0 - decay) * x
        return m, m

    _, rest = jax.lax.scan(step, xs[0], xs[1:])
    return jnp.concatenate([xs[:1], rest])
    # END SOLUTION
# [/guide]


@functools.partial(jax.jit, static_argnames=("steps",))
def train_logistic(key, xs, ys, *, steps: int, learning_rate=0.1):
    """Fit :func:`batch_loss` with optax's Adam for ``steps`` full-batch steps, all inside one
    ``lax.scan`` of one jitted program. Returns ``(params, history)`` with ``history =
    {"loss": [steps], "accuracy": [steps]}``, the values before each step.

    ``key`` draws the initial parameters (:func:`init_params`); ``steps`` is static (a new
    value compiles a new program), ``learning_rate`` may be traced, so
    ``jax.vmap(functools.partial(train_logistic, steps=...), in_axes=(0, None, None))(keys,
    xs, ys)`` trains one model per key at once, the pattern chapter 6 uses to run seeds in
    parallel (``steps`` goes in by ``partial``: ``vmap`` would map a keyword argument).
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    optimizer = optax.adam(learning_rate)
    params = init_params(key, xs.shape[1])

    def step(carry, _):
        params, opt_state = carry
        (loss, metrics), grads = jax.value_and_grad(batch_loss, has_aux=True)(params, xs, ys)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), {"loss": loss, **metrics}

    (params, _), history = jax.lax.scan(step, (params, optimizer.init(params)), None,
                                        length=steps)
    return params, history
