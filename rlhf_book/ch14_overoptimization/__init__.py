"""Chapter 14: over-optimisation -- the proxy reward rises while the true one rises, peaks and
falls (book ch. 14). Built so far: the closed form, Gao et al.'s forms, best-of-N on the mini
GPT, learned proxies in closed form (data size, a train and a test reward model, ensembles,
the KL penalty against early stopping), and RL on the mini GPT against its reward model.

* :mod:`.gao` -- Gao et al.'s (2023) functional forms of gold reward against the square root
  of the KL, for best-of-N and for RL, their peaks, and their least-squares fit (book §14.2);
* :mod:`.pool` -- over-optimisation in closed form on a pool of responses with a gold and a
  proxy reward: the KL-regularised optimum (book eq. 95) and best-of-N, both exact, against
  ``sqrt(KL)``; extremal against regressional Goodhart (book §14.1);
* :mod:`.bon` -- best-of-N's expected gold reward estimated from samples, for every N at once;
* :mod:`.proxies` -- learned proxies in closed form: linear Bradley-Terry reward models fitted
  to gold-labelled pairs, as the data grows, a train and a test reward model (Figure 39),
  ensembles, and the KL penalty against early stopping by exact policy gradient;
* :mod:`.experiments` -- what the notebook runs: the closed-form reference run, best-of-N on
  the mini GPT ranked by chapter 5's reward model and scored by the world's gold reward, and RL
  against that reward model under a sweep of KL penalties.
"""

from rlhf_book.ch14_overoptimization.gao import *  # noqa: F401,F403
from rlhf_book.ch14_overoptimization.gao import __all__ as _gao_all
from rlhf_book.ch14_overoptimization.pool import *  # noqa: F401,F403
from rlhf_book.ch14_overoptimization.pool import __all__ as _pool_all
from rlhf_book.ch14_overoptimization.bon import *  # noqa: F401,F403
from rlhf_book.ch14_overoptimization.bon import __all__ as _bon_all
from rlhf_book.ch14_overoptimization.proxies import *  # noqa: F401,F403
from rlhf_book.ch14_overoptimization.proxies import __all__ as _proxies_all

__all__ = list(_gao_all) + list(_pool_all) + list(_bon_all) + list(_proxies_all)
