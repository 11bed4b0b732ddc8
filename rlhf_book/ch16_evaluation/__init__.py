"""Chapter 16 and Appendix C: evaluation, and the practical issues of measuring a model (book
ch. 16; Appendix C.2 and C.3).

* :mod:`.formats` -- the book's prompt formats (few-shot multiple choice, Tulu 3's MMLU chain of
  thought), strict answer extraction, and log-likelihood scoring of choices (§16.1);
* :mod:`.variance` -- how much a score moves on a re-run, the interval of a difference, the
  re-runs a claimed gain needs, the winner's curse of picking seeds, avg@k and maj@k (§16.2,
  Appendix C.2's Table 7, C.3);
* :mod:`.contamination` -- word n-gram and character-substring overlap between training data
  and evaluation items (§16.4);
* :mod:`.leaderboard` -- Elo and Bradley-Terry ratings from pairwise battles, with bootstrap
  intervals (§16.3);
* :mod:`.harness` -- the world's held-out suites, one table with standard errors, for any
  checkpoint (``rlhf-book eval``; the pipeline's tables);
* :mod:`.experiments` -- what the notebook runs on the mini GPT.
"""

from rlhf_book.ch16_evaluation.formats import *  # noqa: F401,F403
from rlhf_book.ch16_evaluation.formats import __all__ as _formats_all
from rlhf_book.ch16_evaluation.variance import *  # noqa: F401,F403
from rlhf_book.ch16_evaluation.variance import __all__ as _variance_all
from rlhf_book.ch16_evaluation.contamination import *  # noqa: F401,F403
from rlhf_book.ch16_evaluation.contamination import __all__ as _contamination_all
from rlhf_book.ch16_evaluation.leaderboard import *  # noqa: F401,F403
from rlhf_book.ch16_evaluation.leaderboard import __all__ as _leaderboard_all

__all__ = (list(_formats_all) + list(_variance_all) + list(_contamination_all)
           + list(_leaderboard_all))
