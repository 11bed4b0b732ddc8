"""Chapter 8: direct alignment algorithms -- DPO and its family, and a DPO loop on the mini GPT.

Three layers:

* :mod:`.losses` -- the chapter's math as pure functions: the derivation on a finite response
  set (eqs. 87, 94, 95, 96, 100), DPO's loss, implicit reward and gradient weight (eqs. 79, 80,
  81, 105, 108), and the family (cDPO, robust DPO, IPO, SLiC's hinge, SimPO, ORPO, KTO), each
  returning per-pair losses ``[N]``;
* :mod:`.loop` -- the training loop: preference pairs as static-shape token batches, the
  policy's and the frozen reference's sequence log-probabilities from the mini GPT, one jitted
  optax step per batch, offline (the simulated annotators' pairs, reference log-probs cached
  once) or on-policy (pairs sampled from the current policy, labelled by a reward);
  ``make_dpo_train(...) -> train(key)`` vmaps over seeds; evaluation of the implicit reward
  and of the policy's answers; the table :data:`LOSSES` maps each loss name to its function;
* :mod:`.experiments` -- what the chapter's notebook runs, settings as named constants
  (imported as a submodule: ``from rlhf_book.ch08_direct_alignment import experiments``).

Everything public in ``losses`` and ``loop`` is re-exported here, so ``from rlhf_book import
ch08_direct_alignment as ch08`` gives ``ch08.dpo_loss``, ``ch08.DPOConfig``, ``ch08.make_dpo_train`` and the rest.
"""

from rlhf_book.ch08_direct_alignment.losses import *  # noqa: F401,F403
from rlhf_book.ch08_direct_alignment.losses import __all__ as _losses_all
from rlhf_book.ch08_direct_alignment.loop import *  # noqa: F401,F403
from rlhf_book.ch08_direct_alignment.loop import __all__ as _loop_all

__all__ = list(_losses_all) + list(_loop_all)
