"""Chapter 9: rejection sampling and best-of-N.

Book chapter 9 ("Rejection sampling"). Sample ``N`` completions of each prompt, score them with
a reward, keep the best, and fine-tune on what was kept with the instruction-tuning loss (§9.1,
Figure 28); best-of-N (§9.3) stops after the selection and leaves the model unchanged.

* :mod:`.selection` -- the chapter's math in the book's order: the two selection rules on a
  reward matrix (eqs. 113, 114, 115, 116) and the inverse permutation of the book's snippet
  (§9.1); best-of-N as a distribution: the analytic KL, the exact distribution, its KL and its
  expected reward (§9.3);
* :mod:`.loop` -- best-of-N sampling on the mini GPT in one jitted call
  (:func:`best_of_n_sample`) and one round of rejection-sampling fine-tuning with chapter 4's
  SFT (:func:`rejection_sampling_finetune`);
* :mod:`.experiments` -- what the chapter's notebook runs, settings as named constants
  (imported as a submodule: ``from rlhf_book.ch09_rejection_sampling import experiments``).

The name is a misnomer kept for history: statistical rejection sampling accepts a proposal with
probability proportional to target/proposal and yields exact samples of the target, whereas
top-1 selection yields the best-of-N distribution (RSO, Liu et al. 2024, restores the
statistical meaning).

Everything public in ``selection`` and ``loop`` is re-exported here, so ``from rlhf_book
import ch09_rejection_sampling as ch09`` gives ``ch09.select_top_overall``,
``ch09.best_of_n_sample`` and the rest.
"""

from rlhf_book.ch09_rejection_sampling.selection import *  # noqa: F401,F403
from rlhf_book.ch09_rejection_sampling.selection import __all__ as _selection_all
from rlhf_book.ch09_rejection_sampling.loop import *  # noqa: F401,F403
from rlhf_book.ch09_rejection_sampling.loop import __all__ as _loop_all

__all__ = list(_selection_all) + list(_loop_all)
