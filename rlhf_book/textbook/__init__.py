"""The machinery that makes the code a textbook (design §5), not its content.

* :mod:`~rlhf_book.textbook.catalog` -- the chapters and their exercises;
* :mod:`~rlhf_book.textbook.stubs` -- exercise stubs from the library's solution regions;
* :mod:`~rlhf_book.textbook.grading` and :mod:`~rlhf_book.textbook.checks` -- the grader;
* :mod:`~rlhf_book.textbook.guides` -- code excerpts of the chapter guides, kept in sync;
* :mod:`~rlhf_book.textbook.figures` -- the figure registry behind ``figures/``;
* :mod:`~rlhf_book.textbook.notebooks` -- the notebook runner.

Only the CLI, the tests and the notebooks import this package; the library never does.
From a notebook: ``from rlhf_book.textbook import check; check("0.1", my_causal_mask)``.
"""

from rlhf_book.textbook.grading import check

__all__ = ["check"]
