"""The language-model substrate: everything a chapter needs and no chapter teaches.

* :mod:`rlhf_book.lm.tokenizer` -- bytes <-> ids, special tokens, the chat template.
* :mod:`rlhf_book.lm.gpt` -- the mini GPT as pure functions over a parameter pytree.
* :mod:`rlhf_book.lm.ops` -- masked reductions and log-probabilities from logits.
* :mod:`rlhf_book.lm.sampling` -- jitted generation with a KV cache inside ``lax.scan``.
* :mod:`rlhf_book.lm.train` -- optax train state, jitted steps, pretraining, checkpoints.
"""
