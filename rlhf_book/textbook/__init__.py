"""The machinery that makes the code a textbook (design §5), not its content.

* :mod:`~rlhf_book.textbook.catalog` -- the chapters and their exercises;
* :mod:`~rlhf_book.textbook.stubs` -- exercise stubs from the library's solution regions;
* :mod:`~rlhf_book.textbook.grading` and :mod:`~rlhf_book.textbook.checks` -- the grader;
* :mod:`~rlhf_book.textbook.guides` -- code excerpts of the chapter guides, kept in sync;
* :mod:`~rlhf_book.textbook.figures` -- the figure registry behind ``figures/``;
* :mod:`~rlhf_book.textbook.notebooks` -- the notebook runner;
* :mod:`~rlhf_book.textbook.learner` -- the learner's own exercise file, imported by path.

Only the CLI, the tests and the notebooks import this package; the library never does.
From a notebook (any working folder), grade your own ``exercises/ch00_mini_gpt.py``::

    from rlhf_book.textbook import check, my_exercises
    mine = my_exercises("ch00")          # re-reads the file on every call: edit, re-run the cell
    check("0.1", mine.causal_mask)
"""

from rlhf_book.textbook.grading import check
from rlhf_book.textbook.learner import my_exercises

__all__ = ["check", "my_exercises"]
