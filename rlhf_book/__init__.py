"""rlhf_book: an executable, tested, from-scratch NumPy + JAX companion to the RLHF book.

Three floors (see the README):

* ``rlhf_book.data`` -- the synthetic "assistant world": facts, answer styles with a known gold
  reward, a pretraining corpus, SFT demonstrations, simulated preference annotators.
* ``rlhf_book.lm`` -- the language-model substrate every chapter stands on: a byte-level
  tokenizer with a chat template, a mini GPT written as pure functions, KV-cache sampling,
  an optax train state and non-pickle checkpoints.
* ``rlhf_book.chNN_*`` -- one module per book chapter (added chapter by chapter).
"""

__version__ = "0.1.0"
