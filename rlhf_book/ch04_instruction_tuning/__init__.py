"""Chapter 4: instruction fine-tuning (SFT).

Two layers, plus the notebook's experiments:

* :mod:`.losses` -- the chapter's math in the book's order: chat templates (§4.1), loss masks
  and unrolled conversations (§4.3), the SFT loss (App. A.1, eq. 142 restricted to the mask),
  padding and sequence packing;
* :mod:`.loop` -- :class:`SFTConfig`, the step every SFT loop takes (:func:`sft_step`: the
  loss of packed rows and its gradient), ``make_sft_train(...) -> train(key)`` (vmaps over
  seeds) and the chunked :func:`train_sft` with a progress bar;
* :mod:`.experiments` -- what the chapter's notebook runs, settings as named constants
  (imported as a submodule: ``from rlhf_book.ch04_instruction_tuning import experiments``),
  with the evaluation of answers to held-out questions by the gold reward
  (through :func:`rlhf_book.lm.eval.answer_samples`, as every policy of the book).

Everything public in ``losses`` and ``loop`` is re-exported here, so ``from rlhf_book import
ch04_instruction_tuning as ch04`` gives ``ch04.sft_loss``, ``ch04.train_sft`` and the rest.
"""

from rlhf_book.ch04_instruction_tuning.losses import *  # noqa: F401,F403
from rlhf_book.ch04_instruction_tuning.losses import __all__ as _losses_all
from rlhf_book.ch04_instruction_tuning.loop import *  # noqa: F401,F403
from rlhf_book.ch04_instruction_tuning.loop import __all__ as _loop_all

__all__ = list(_losses_all) + list(_loop_all)
