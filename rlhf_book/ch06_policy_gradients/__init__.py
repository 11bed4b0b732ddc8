"""Chapter 6: the policy-gradient family, GAE, and a jitted RLHF loop on the mini GPT.

Three parts:

* :mod:`.losses` -- the chapter's math as pure functions in the book's order: baselines and
  advantages (REINFORCE, RLOO, GRPO, Dr. GRPO), the PPO clipped surrogate and value loss, GRPO,
  GSPO, CISPO, loss aggregation (§6.2.2), truncated importance sampling (§6.2.4), where the KL
  goes (reward vs loss), GAE (§6.3.2), DAPO's dynamic-sampling filter and the logging metrics;
* :mod:`.loop` -- the RL loop: sample ``G`` completions per prompt with the KV cache, score
  them, reference log-probs and KL, advantages, several epochs of minibatch optax updates,
  all one jitted step; ``make_train(...) -> train(key)`` vmaps over seeds;
* :mod:`.experiments` -- what the notebook runs (the worked examples, the five algorithms and
  the KL sweep on the small model), its settings as named constants; imported as a submodule:
  ``from rlhf_book.ch06_policy_gradients import experiments``.

Everything public is re-exported here, so ``from rlhf_book import ch06_policy_gradients as
ch06`` gives ``ch06.grpo_advantages``, ``ch06.RLConfig``, ``ch06.make_train`` and the rest.
"""

from rlhf_book.ch06_policy_gradients.losses import *  # noqa: F401,F403
from rlhf_book.ch06_policy_gradients.losses import __all__ as _losses_all
from rlhf_book.ch06_policy_gradients.loop import *  # noqa: F401,F403
from rlhf_book.ch06_policy_gradients.loop import __all__ as _loop_all

__all__ = list(_losses_all) + list(_loop_all)
