"""Chapter 5: reward models.

Two layers, plus the notebook's experiments:

* :mod:`.losses` -- the chapter's math in the book's order: the Bradley-Terry model and loss
  (§5.1, with Llama 2's margin), the per-prompt balanced loss (§5.4.2), Plackett-Luce
  (§5.4.3), outcome and process reward model losses (§5.5, §5.6), reading them at inference
  (§5.7.1), the RewardBench accuracy (§5.9), and the reward model on the mini GPT (§5.2, §5.3);
* :mod:`.loop` -- preference pairs as token batches, :class:`RMConfig`, the step every
  reward-model loop takes (:func:`reward_model_step`: the loss and its gradient),
  ``make_rm_train(...) -> train(key)`` (vmaps over seeds), the chunked
  :func:`train_reward_model` with a progress bar, and the evaluation of a reward model;
* :mod:`.experiments` -- what the chapter's notebook runs, settings as named constants
  (imported as a submodule: ``from rlhf_book.ch05_reward_models import experiments``).

Everything public in ``losses`` and ``loop`` is re-exported here, so ``from rlhf_book import
ch05_reward_models as ch05`` gives ``ch05.bradley_terry_loss``, ``ch05.train_reward_model``
and the rest.
"""

from rlhf_book.ch05_reward_models.losses import *  # noqa: F401,F403
from rlhf_book.ch05_reward_models.losses import __all__ as _losses_all
from rlhf_book.ch05_reward_models.loop import *  # noqa: F401,F403
from rlhf_book.ch05_reward_models.loop import __all__ as _loop_all

__all__ = list(_losses_all) + list(_loop_all)
