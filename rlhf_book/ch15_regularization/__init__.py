"""Chapter 15: regularisation -- the KL to a reference, its estimators, where it goes, and the
other regularisers of §15.3.

* :mod:`.losses` -- the chapter's math in the book's order: the exact KL (eq. 128), Schulman's
  estimators (eq. 129; re-exported from :mod:`rlhf_book.lm.kl`), the §15.1.2 implementation
  example done right, the gradient each estimator gives in the reward and in the loss,
  PPO-ptx (eq. 137), DPO + NLL (eqs. 138, 139) and the margin losses (eq. 140);
* :mod:`.experiments` -- what the notebook runs (the estimators' bias and spread, their
  gradients, the reward-KL frontier of chapter 6's loop, the per-token KL of a policy, and
  forgetting under SFT and RL), with its settings as named constants. Imported as a submodule:
  ``from rlhf_book.ch15_regularization import experiments``.

Everything public in :mod:`.losses` is re-exported here, so ``from rlhf_book import
ch15_regularization as ch15`` gives ``ch15.exact_kl``, ``ch15.kl_k3`` and the rest.
"""

from rlhf_book.ch15_regularization.losses import *  # noqa: F401,F403
from rlhf_book.ch15_regularization.losses import __all__ as _losses_all

__all__ = list(_losses_all)
