"""Chapter 3, "Training overview": the RL problem RLHF is built on, in runnable form.

Book chapter 3 sets up the vocabulary the rest of the book uses: an agent samples actions from
a policy, an environment answers with rewards and new states, and the agent maximises the
expected (discounted) return (§3.1, eqs. 1, 2). Two toy environments make that concrete: a
thermostat (§3.1.1, eq. 3) and CartPole (§3.1.2, eqs. 4, 5, 6, 7, 8, 9). RLHF then changes
three things (§3.1.3, eq. 10) and adds a KL leash to a reference model (§3.1.4, eq. 11); the
chapter closes with the canonical post-training recipes (§3.3).

Three layers:

* :mod:`.rl` -- the math in the book's order: returns, the thermostat, CartPole, the
  REINFORCE loss (book §6.1.3, eq. 45), the KL-regularised objective, the recipes;
* :mod:`.loop` -- REINFORCE on CartPole, ``make_train(config) -> train(key)``, one
  ``lax.scan`` that ``jax.jit(jax.vmap(...))`` runs for many seeds at once;
* :mod:`.experiments` -- what the notebook runs, with its settings as named constants
  (``from rlhf_book.ch03_training_overview import experiments``).

Everything public of :mod:`.rl` and :mod:`.loop` is re-exported here (and
:func:`~.experiments.compare_thermostat_policies`, :func:`~.experiments.default_thermostat_policies`),
so ``from rlhf_book import ch03_training_overview as ch03`` gives ``ch03.discounted_returns``,
``ch03.cartpole_step``, ``ch03.make_train`` and the rest. Exercises (bodies between
``# BEGIN SOLUTION`` / ``# END SOLUTION`` in :mod:`.rl`): :func:`discounted_returns`,
:func:`cartpole_step` and :func:`reinforce_loss`; their checks are in
``rlhf_book.textbook.checks.ch03_training_overview``. The errata are in the chapter guide,
``chapters/ch03_training_overview.md``.
"""

from rlhf_book.ch03_training_overview.rl import *  # noqa: F401,F403
from rlhf_book.ch03_training_overview.rl import __all__ as _rl_all
from rlhf_book.ch03_training_overview.loop import *  # noqa: F401,F403
from rlhf_book.ch03_training_overview.loop import __all__ as _loop_all
from rlhf_book.ch03_training_overview import experiments  # noqa: F401
from rlhf_book.ch03_training_overview.experiments import (  # noqa: F401
    compare_thermostat_policies, default_thermostat_policies)

__all__ = [*_rl_all, *_loop_all, "compare_thermostat_policies", "default_thermostat_policies"]
