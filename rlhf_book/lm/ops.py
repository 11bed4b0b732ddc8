"""Small array operations every chapter uses: masked reductions and token log-probabilities.

Masks are ``{0, 1}`` floats or bools with 1 on the entries that count. A reduction over an
all-zero mask returns 0, never NaN: an empty completion or a fully padded row must not poison
a batch's loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlhf_book.lm.checks import as_float_array


# [guide:masked-mean]
def masked_sum(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
    """Sum of ``x`` over the entries where ``mask`` is 1 (``mask`` broadcastable to ``x``)."""
    return jnp.sum(jnp.where(mask.astype(bool), x, 0.0), axis=axis)


def masked_mean(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
    """Mean of ``x`` over the entries where ``mask`` is 1; 0 where nothing is selected.

    ``jnp.where`` (not ``x * mask``) keeps an ``inf`` or NaN sitting at a masked position from
    leaking into the result as ``0 * inf = NaN``.
    """
    mask = jnp.broadcast_to(mask, x.shape).astype(x.dtype)
    count = jnp.sum(mask, axis=axis)
    return masked_sum(x, mask, axis) / jnp.maximum(count, 1.0)
# [/guide]


# [guide:log-probs]
def log_probs_from_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """``log softmax(logits)[target]`` for every position: ``[..., V], [...] -> [...]``.

    The negative of the softmax cross-entropy with integer labels (book Appendix A.1,
    eq. 142); ``targets`` are integers in ``[0, V)``. Finite for logits of any size (logits
    ``[1e4, -1e4, 0]`` give ``[0, -2e4, -1e4]``), with the gradient ``onehot(target) -
    softmax(logits)``. A logit of ``-inf`` is a probability of 0; NaN and ``+inf`` raise (when
    called eagerly).

    How: ``logit[target] - logsumexp(logits)`` (``take_along_axis`` picks the target's logit),
    which stays finite for logits of any size: no probability is ever formed and then logged.
    """
    logits = as_float_array(logits, "logits", values="logits")
    # BEGIN SOLUTION
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)
    # END SOLUTION


def next_token_log_probs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """Log-probability of each next token under a causal LM: ``[N, T, V], [N, T] -> [N, T-1]``.

    ``logits[:, t]`` predicts ``tokens[:, t + 1]`` (the one-token shift), so entry ``t`` of the
    result is ``log p(tokens[:, t + 1] | tokens[:, :t + 1])``.
    """
    logits = as_float_array(logits, "logits", "[N, T, V]", values="logits")
    return log_probs_from_logits(logits[:, :-1], tokens[:, 1:])


def next_token_loss(logits: jax.Array, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean next-token negative log-likelihood over the targets where ``mask[:, 1:]`` is 1.

    ``mask [N, T]`` marks tokens that count *as targets*; position 0 is never a target.
    """
    mask = as_float_array(mask, "mask", "[N, T]")
    return -masked_mean(next_token_log_probs(logits, tokens), mask[:, 1:])
# [/guide]
