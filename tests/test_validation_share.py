"""The math modules read as math: argument checks stay a small share of their code.

Each chapter's equations module carries at most one or two check lines per function; value
checks that depend on the data belong at the API boundaries (encoding, generation, configs).
This test counts, with ``ast`` and ``tokenize`` (the package is parsed, not imported):

* code lines: physical lines holding code, docstrings, comments and blank lines excluded;
* validation lines: a ``raise``; an ``if`` whose body only raises; a statement whose value *is*
  a call of a checker (``check_*``, ``as_float_array``, ``as_float_vectors``, ``as_like``,
  ``as_groups``, ``is_traced``, ...; so a conversion such as ``x = as_float_array(x, "x")``
  counts too); the whole definition of a checking helper; a ``try`` that only re-raises.

A checker nested in arithmetic (``loss * as_like(w, ...)``) is a math line and does not count.
"""

import ast
import io
import pathlib
import re
import tokenize

import pytest

import rlhf_book

PACKAGE_DIR = pathlib.Path(rlhf_book.__file__).resolve().parent
MATH_MODULES = (
    "ch03_training_overview/rl.py", "ch04_instruction_tuning/losses.py",
    "ch05_reward_models/losses.py", "ch06_policy_gradients/losses.py",
    "ch08_direct_alignment/losses.py", "ch09_rejection_sampling/selection.py",
    "ch15_regularization/losses.py", "lm/kl.py",
)
# Every public function of these modules checks its arguments when called eagerly, one line per
# concern (rlhf_book.lm.checks: shapes, finite values, a non-empty batch, the range of each
# hyperparameter it uses); the functions are short, a few lines of math each, so those lines are
# up to about a quarter of a module's code. Beyond that, checks belong at an API boundary.
MAX_SHARE = 0.27
CHECKER = re.compile(r"^(_?check\w*|as_float\w*|as_like|as_groups|_validate\w*|is_traced)$")


def _name(func) -> str:
    return func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")


def _is_check(statement) -> bool:
    value = getattr(statement, "value", None)
    if isinstance(statement, ast.Return) or value is None:
        return False
    items = value.elts if isinstance(value, ast.Tuple) else [value]
    return all(isinstance(v, ast.Call) and CHECKER.match(_name(v.func)) for v in items)


def _span(node) -> set[int]:
    return set(range(node.lineno, node.end_lineno + 1))


def validation_share(source: str) -> tuple[int, int]:
    """``(validation lines, code lines)`` of a module's source."""
    tree = ast.parse(source)
    docstrings: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                docstrings |= _span(first)
    code = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                            tokenize.DEDENT, tokenize.ENDMARKER):
            code |= set(range(tok.start[0], tok.end[0] + 1))
    code -= docstrings
    checks = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and CHECKER.match(node.name):
            checks |= _span(node)
        elif isinstance(node, ast.If) and not node.orelse and \
                all(isinstance(b, ast.Raise) for b in node.body):
            checks |= _span(node)
        elif isinstance(node, ast.Raise) or (isinstance(node, ast.stmt) and _is_check(node)):
            checks |= _span(node)
        elif isinstance(node, ast.Try) and node.handlers and \
                all(all(isinstance(b, ast.Raise) for b in h.body) for h in node.handlers):
            checks |= _span(node)
    return len(checks & code), len(code)


def test_the_counter_on_a_small_module():
    source = '''
def f(x, w):
    """Docstring lines are not code."""
    x = as_float_array(x, "x", "[N]")   # a conversion that checks: counts
    if x.shape[0] < 2:
        raise ValueError("x needs two entries")
    y = x * as_like(w, "w", x, "x")      # math that also checks: does not count
    return y.sum()
'''
    assert validation_share(source) == (3, 6)


@pytest.mark.parametrize("module", MATH_MODULES)
def test_math_modules_keep_argument_checks_to_about_a_quarter(module):
    checks, code = validation_share((PACKAGE_DIR / module).read_text())
    assert checks <= MAX_SHARE * code, (
        f"rlhf_book/{module}: {checks} of {code} code lines ({checks / code:.1%}) are argument "
        f"checks, more than {MAX_SHARE:.0%}: move value checks to the API boundary")
