"""One-line argument checks, shared by every chapter, and the conventions they enforce.

The math functions of the chapters carry at most one or two of these lines; everything else
(data-dependent checks of a whole dataset) happens at the API boundaries -- generation,
encoding, an eager forward pass -- not inside per-step math. Every check raises ``ValueError``
naming the argument and what was expected, and every check that looks at *values* skips
traced arrays (inside ``jit``, ``vmap`` or ``grad`` a value is not known; the caller checked
it before tracing, and the training driver checks every step's loss and reward, see
:func:`rlhf_book.lm.train.check_finite`).

The conventions, the same in every chapter:

* **Values are finite.** A NaN or an infinity in an array argument raises, masked positions
  included (pad with 0, not with ``-inf``): one NaN reward would otherwise turn every
  parameter into NaN without a word. The one exception is documented where it applies:
  logits and log-probabilities of a *distribution* may be ``-inf`` (a probability of 0).
* **Batches are not empty.** The leading (batch) axis of an array argument must hold at least
  one item: a mean over no pairs or sequences is NaN, not a loss.
* **Hyperparameters are checked where they are used**, each against its range, finite unless
  the range says otherwise: a temperature ``beta`` that divides must be ``> 0`` (DPO's
  family), a penalty weight ``>= 0`` (a KL coefficient), clip ranges ``>= 0``, discounts in
  ``[0, 1]``. Configs check theirs in ``__post_init__`` with the same function.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp


def is_traced(x: Any) -> bool:
    """True inside ``jit``/``vmap``/``grad``, where ``x`` has a shape but no value."""
    return isinstance(x, jax.core.Tracer)


VALUES = ("finite", "logits", "any")


def as_float_array(x, name: str, dims: str | None = None, *, values: str = "finite") -> jax.Array:
    """``x`` as a real floating-point array: ints and bools become float32, floats keep their
    precision. Anything else (strings, objects, complex numbers) raises ``ValueError`` naming
    ``name``; so does a rank other than that of ``dims`` when given (e.g. ``"[N, T]"``: 2 axes,
    ``"[]"``: a scalar), an empty leading (batch) axis, and, when ``x`` is not traced, values
    that break the module's convention: ``values="finite"`` (the default) rejects NaN and
    +-inf, ``"logits"`` rejects NaN and +inf (``-inf`` is a probability of 0), ``"any"`` checks
    nothing."""
    try:
        x = jnp.asarray(x)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be an array of numbers ({err})") from None
    real = jnp.issubdtype(x.dtype, jnp.bool_) or (jnp.issubdtype(x.dtype, jnp.number)
                                                  and not jnp.issubdtype(x.dtype, jnp.complexfloating))
    if not real:
        raise ValueError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if dims is not None:
        check_rank(x, dims.count(",") + 1 if dims.strip("[] ") else 0, name, dims)
    if x.ndim and x.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {x.shape}): a batch needs at least one item")
    check_finite(x, name, values)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


@jax.jit
def _count_bad(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    return jnp.sum(jnp.isnan(x)), jnp.sum(x == jnp.inf), jnp.sum(x == -jnp.inf)


def check_finite(x, name: str, values: str = "finite") -> None:
    """Raise ``ValueError`` naming ``name`` and counting the offending entries when ``x``
    holds NaN or an infinity (``values="finite"``), NaN or ``+inf`` (``"logits"``); ``"any"``
    and a traced ``x`` are not checked."""
    check_choice(values, "values", VALUES)
    if values == "any" or is_traced(x):
        return
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return
    with jax.ensure_compile_time_eval():  # a constant seen inside another function's trace
        nan, pos, neg = (int(c) for c in _count_bad(x))
    bad = {"NaN": nan, "+inf": pos, "-inf": neg if values == "finite" else 0}
    if any(bad.values()):
        found = ", ".join(f"{count} {kind}" for kind, count in bad.items() if count)
        allowed = "finite numbers" if values == "finite" else "numbers or -inf"
        raise ValueError(f"{name} must hold {allowed}, got {found} (of {x.size} entries)")


def check_rank(x: jax.Array, rank: int, name: str, dims: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``x`` has ``rank`` axes (``dims`` spells the
    expected shape, e.g. ``"[B, G]"``)."""
    if x.ndim != rank:
        raise ValueError(f"{name} must have shape {dims}, got shape {x.shape}")


def as_float_vectors(*arrays_and_names) -> list[jax.Array]:
    """``(x, name)`` pairs as float arrays ``[N]`` of one shape (per-pair quantities such as
    sequence log-probs of chosen and rejected completions), or a ``ValueError`` naming the
    first argument that is not."""
    out = [as_float_array(x, name) for x, name in arrays_and_names]
    first = arrays_and_names[0][1]
    check_rank(out[0], 1, first, "[N]")
    for x, (_, name) in zip(out[1:], arrays_and_names[1:]):
        if x.shape != out[0].shape:
            raise ValueError(f"{name} must have the shape of {first} {out[0].shape} ([N]), "
                             f"got {x.shape}")
    return out


def as_like(x, name: str, like: jax.Array, like_name: str, *, values: str = "finite") -> jax.Array:
    """``x`` as a float array with the shape of ``like``, or a ``ValueError`` naming ``name``
    (``values`` as in :func:`as_float_array`)."""
    x = as_float_array(x, name, values=values)
    if x.shape != like.shape:
        raise ValueError(f"{name} must have the shape of {like_name} {like.shape}, got {x.shape}")
    return x


def check_range(value, name: str, low: float | None = None, high: float | None = None, *,
                strict: bool = False, finite: bool = True) -> None:
    """``low <= value <= high`` (``low < value`` when ``strict``); ``None`` bounds are open.
    NaN never passes, nor does an infinity unless ``finite=False``. A traced value, or
    ``None`` (an optional argument left out), is not checked."""
    if value is None or is_traced(value):
        return
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if math.isnan(v) or (finite and math.isinf(v)):
        raise ValueError(f"{name} must be a finite number, got {value}")
    if low is not None and not (v > low if strict else v >= low):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low:g}, got {value}")
    if high is not None and not v <= high:
        raise ValueError(f"{name} must be <= {high:g}, got {value}")


def as_groups(rewards, name: str = "rewards") -> jax.Array:
    """``rewards`` as a float array ``[B, G]`` of ``B`` groups of ``G >= 2`` completions (a
    group baseline needs at least two samples: with one, RLOO and GRPO would divide by 0)."""
    rewards = as_float_array(rewards, name, "[B, G]")
    if rewards.shape[1] < 2:
        raise ValueError(f"{name} must have G >= 2 completions per group, got shape "
                         f"{rewards.shape}")
    return rewards


def check_values(x, name: str, allowed, where=None) -> None:
    """Every entry of ``x`` (where ``where`` is true, if given) is one of ``allowed``. A traced
    array is not checked."""
    if is_traced(x) or is_traced(where):
        return
    ok = jnp.isin(jnp.asarray(x), jnp.asarray(allowed))
    if not bool(jnp.all(ok if where is None else ok | ~jnp.asarray(where, bool))):
        raise ValueError(f"{name} must hold only values in {tuple(allowed)}, got {x}")


def check_choice(value, name: str, choices) -> None:
    """``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_positive_ints(config: Any, *fields: str) -> None:
    """Each named field of a config dataclass is a positive ``int`` (steps, batch sizes, ...):
    the ``__post_init__`` line every config shares."""
    for field in fields:
        value = getattr(config, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{type(config).__name__}.{field} must be a positive int, "
                             f"got {value!r}")
