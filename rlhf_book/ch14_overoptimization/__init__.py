"""Chapter 14: over-optimisation -- the proxy reward rises while the true one rises, peaks and
falls (work in progress: the library's closed-form floor; the notebook, guide and exercises
follow).

* :mod:`.gao` -- Gao et al.'s (2023) functional forms of gold reward against the square root
  of the KL, for best-of-N and for RL, their peaks, and their least-squares fit (book §14.2);
* :mod:`.pool` -- over-optimisation in closed form on a pool of responses with a gold and a
  proxy reward: the KL-regularised optimum (book eq. 95) and best-of-N, both exact, against
  ``sqrt(KL)``; extremal against regressional Goodhart (book §14.1).
"""

from rlhf_book.ch14_overoptimization.gao import *  # noqa: F401,F403
from rlhf_book.ch14_overoptimization.gao import __all__ as _gao_all
from rlhf_book.ch14_overoptimization.pool import *  # noqa: F401,F403
from rlhf_book.ch14_overoptimization.pool import __all__ as _pool_all

__all__ = list(_gao_all) + list(_pool_all)
