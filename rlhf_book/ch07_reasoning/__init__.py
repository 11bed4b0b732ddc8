"""Chapter 7: reasoning -- reinforcement learning with verifiable rewards (RLVR) and
inference-time scaling.

What is here, in the book's order:

* :mod:`.verifiers` -- the chapter's introduction and §7.2.3's format rewards: reading the final
  answer out of a response in the formats the book lists (``\\boxed{}``, "The answer is",
  ``<answer>`` tags, GSM8K's ``####``, and the lax last-integer rule), the binary verifiable
  reward (the primes below 20 sum to 77), unit-test rewards with gating or partial credit (the
  ``fib`` example), and the ``<think>...</think>`` format reward;
* :mod:`.rlvr` -- §7.2.3's common practices as statistics of groups of rewards: pass rates, the
  20-80% offline difficulty filter, zero-variance groups and the share ``p^G + (1 - p)^G`` of
  groups that carry no signal, MaxRL's advantage on binary rewards beside GRPO's (chapter 6),
  several rewards combined by sum-then-normalise or GDPO's normalise-then-sum; and
  inference-time scaling: majority vote (with a documented tie rule), its exact accuracy
  against the number of samples, and the unbiased pass@k estimator;
* :mod:`.loop` -- the RLVR loop on the mini GPT (sample, verify, step; book ch. 7
  introduction and Figure 25): verifiers for the world's arithmetic (the last integer, a lax
  any-integer rule a policy can game, a strict "The answer is N." format), :func:`.rlvr_step`
  (verified rewards -> group advantages -> clipped loss -> gradient, the chapter's loop-level
  exercise) and ``make_rlvr_train``, vmappable over seeds, KL coefficients and verifiers;
* :mod:`.reasoning_length` -- when longer reasoning pays: whether a reply shows its work, and
  the process check of a worked two-digit sum (exercise 7.9), which reads the steps an
  outcome verifier never reads;
* :mod:`.experiments` -- what the notebooks run: RLVR from chapter 4's SFT model measured on
  held-out sums, pass@k before and after, majority-vote curves, §7.2.3's practices; the
  reasoning-length experiment (two-digit sums, a scratchpad, RLVR choosing it) and best-of-N
  by a verifier against chapter 5's reward model.

The math is re-exported here: ``from rlhf_book import ch07_reasoning as ch07`` gives
``ch07.extract_final_answer``, ``ch07.pass_at_k`` and the rest; the loop is
``rlhf_book.ch07_reasoning.loop``.
"""

from rlhf_book.ch07_reasoning.verifiers import *  # noqa: F401,F403
from rlhf_book.ch07_reasoning.verifiers import __all__ as _verifiers_all
from rlhf_book.ch07_reasoning.rlvr import *  # noqa: F401,F403
from rlhf_book.ch07_reasoning.rlvr import __all__ as _rlvr_all
from rlhf_book.ch07_reasoning.reasoning_length import *  # noqa: F401,F403
from rlhf_book.ch07_reasoning.reasoning_length import __all__ as _length_all

__all__ = list(_verifiers_all) + list(_rlvr_all) + list(_length_all)
