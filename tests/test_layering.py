"""The layering of the package (design §1): data -> lm -> chNN -> textbook / pipeline / cli.

Every ``.py`` under ``rlhf_book/`` is parsed (not imported) and each of its imports of
``rlhf_book`` resolved to a module name, relative imports included. Each rule below is one test;
a failure lists every offending ``file:line: import``.
"""

import ast
import functools
import pathlib
import re
from typing import NamedTuple

import rlhf_book

PACKAGE_DIR = pathlib.Path(rlhf_book.__file__).resolve().parent
ROOT = PACKAGE_DIR.parent

# Files allowed to import rlhf_book inside a function, and why. Keep this short.
FUNCTION_LEVEL_IMPORTS_ALLOWED = {
    "rlhf_book/cli.py": "imports each subcommand's machinery lazily, so that `rlhf-book --help` "
                        "starts without loading JAX",
}


class Import(NamedTuple):
    path: str  # relative to the repository root
    line: int
    target: str  # the rlhf_book module it loads, e.g. "rlhf_book.lm.gpt"
    text: str  # the statement as written
    in_function: bool

    def __str__(self):
        return f"{self.path}:{self.line}: {self.text}"


def _module_name(path: pathlib.Path, root: pathlib.Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str, root: pathlib.Path = ROOT) -> bool:
    """Whether ``name`` (``rlhf_book.x.y``) is a module or package in the source tree."""
    base = root.joinpath(*name.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def _resolve_from(node: ast.ImportFrom, path: pathlib.Path, root: pathlib.Path) -> str:
    """The absolute module a ``from ... import`` reads from, relative levels resolved."""
    if not node.level:
        return node.module or ""
    package = _module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]  # a module's relative imports start from its package
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(node, path, root):
    """The rlhf_book modules an import statement loads. ``from rlhf_book import data`` loads
    ``rlhf_book.data``; ``from rlhf_book.lm.gpt import forward`` loads ``rlhf_book.lm.gpt``."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        source = _resolve_from(node, path, root)
        names = [f"{source}.{alias.name}" if _is_module(f"{source}.{alias.name}", root) else source
                 for alias in node.names]
    return [n for n in dict.fromkeys(names) if n == "rlhf_book" or n.startswith("rlhf_book.")]


def _imports_of(path: pathlib.Path, root: pathlib.Path = ROOT) -> list[Import]:
    source = path.read_text()
    rel = path.relative_to(root).as_posix()
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                statement = re.sub(r"#[^\n]*", "", ast.get_source_segment(source, child))
                text = re.sub(r"\(\s+", "(", re.sub(r",?\s+\)", ")", " ".join(statement.split())))
                found.extend(Import(rel, child.lineno, target, text, in_function)
                             for target in _targets(child, path, root))
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            visit(child, inside)

    visit(ast.parse(source, filename=rel), False)
    return found


@functools.cache
def package_imports() -> tuple[Import, ...]:
    """Every import of rlhf_book in the package (parsed once, when the first rule runs)."""
    return tuple(imp for path in sorted(PACKAGE_DIR.rglob("*.py")) for imp in _imports_of(path))


def _within(target: str, *modules: str) -> bool:
    """Whether ``target`` is one of ``modules`` or lies inside one of them."""
    return any(target == m or target.startswith(m + ".") for m in modules)


def _report(rule: str, offending: list[Import]) -> str:
    return f"{rule}; {len(offending)} offending import(s):\n" + "\n".join(map(str, offending))


def _in_layer(imp: Import, folder: str) -> bool:
    return imp.path.startswith(f"rlhf_book/{folder}/")


# ----------------------------------------------------------------------------------------------
# The rules


def test_data_imports_only_data():
    offending = [imp for imp in package_imports()
                 if _in_layer(imp, "data") and not _within(imp.target, "rlhf_book.data")]
    assert not offending, _report("rlhf_book/data imports nothing of rlhf_book but "
                                  "rlhf_book.data", offending)


def test_lm_imports_only_lm_and_data():
    offending = [imp for imp in package_imports() if _in_layer(imp, "lm")
                 and not _within(imp.target, "rlhf_book.lm", "rlhf_book.data")]
    assert not offending, _report("rlhf_book/lm imports only rlhf_book.lm and rlhf_book.data",
                                  offending)


CHAPTER = re.compile(r"^rlhf_book\.(?P<name>ch(?P<number>\d\d)_\w+)")


def _chapter(module: str):
    """``("ch06_policy_gradients", 6)`` for any module of that chapter, else ``None``."""
    match = CHAPTER.match(module)
    return (match["name"], int(match["number"])) if match else None


def _chapter_may_import(importer: str, target: str) -> bool:
    name, number = _chapter(importer)
    if _within(target, "rlhf_book.lm", "rlhf_book.data", f"rlhf_book.{name}"):
        return True
    other = _chapter(target)
    return other is not None and other[1] < number


def test_chapters_import_only_lm_data_and_earlier_chapters():
    offending = [imp for imp in package_imports()
                 if _chapter(_module_name(ROOT / imp.path))
                 and not _chapter_may_import(_module_name(ROOT / imp.path), imp.target)]
    assert not offending, _report("a chapter imports only rlhf_book.lm, rlhf_book.data, itself "
                                  "and chapters with a smaller number", offending)


FIGURE_MODULE = re.compile(r"^rlhf_book/textbook/figures/ch(?P<number>\d\d)_\w+\.py$")


def _figure_may_import(number: int, target: str) -> bool:
    chapter = _chapter(target)
    if chapter is not None:
        return chapter[1] == number  # its own chapter, any submodule
    return (target == "rlhf_book.textbook.figures"  # the registry, not a sibling figure module
            or _within(target, "rlhf_book.lm", "rlhf_book.data", "rlhf_book.textbook.substrate"))


def test_figure_modules_import_only_their_own_chapter():
    offending = []
    for imp in package_imports():
        figure = FIGURE_MODULE.match(imp.path)
        if figure and not _figure_may_import(int(figure["number"]), imp.target):
            offending.append(imp)
    assert not offending, _report(
        "textbook/figures/chNN_*.py imports, of rlhf_book, only its own chapter chNN_*, "
        "rlhf_book.lm, rlhf_book.data, the registry rlhf_book.textbook.figures and "
        "rlhf_book.textbook.substrate (never another figure module)", offending)


def test_no_function_level_imports_of_rlhf_book():
    offending = [imp for imp in package_imports()
                 if imp.in_function and imp.path not in FUNCTION_LEVEL_IMPORTS_ALLOWED]
    assert not offending, _report(
        "rlhf_book is imported at module level only (an import inside a function hides a "
        "cycle); exceptions: " + ", ".join(FUNCTION_LEVEL_IMPORTS_ALLOWED), offending)


# ----------------------------------------------------------------------------------------------
# The parser the rules stand on


def test_imports_are_resolved_relative_and_absolute(tmp_path):
    package = tmp_path / "rlhf_book"
    (package / "ch06_x").mkdir(parents=True)
    (package / "lm").mkdir()
    for name in ["__init__.py", "ch06_x/__init__.py", "lm/__init__.py", "lm/gpt.py"]:
        (package / name).write_text("")
    (package / "ch06_x" / "loop.py").write_text(
        "from . import losses\n"
        "from .losses import grpo\n"
        "from ..lm import gpt\n"
        "from ..lm.gpt import forward\n"
        "import rlhf_book.lm.gpt as g, numpy\n"
        "def f():\n"
        "    from rlhf_book import lm\n")
    (package / "ch06_x" / "losses.py").write_text("")
    found = [(i.line, i.target, i.in_function)
             for i in _imports_of(package / "ch06_x" / "loop.py", tmp_path)]
    assert found == [(1, "rlhf_book.ch06_x.losses", False), (2, "rlhf_book.ch06_x.losses", False),
                     (3, "rlhf_book.lm.gpt", False), (4, "rlhf_book.lm.gpt", False),
                     (5, "rlhf_book.lm.gpt", False), (7, "rlhf_book.lm", True)]


def test_the_rules_allow_and_refuse_what_the_design_says():
    loop = "rlhf_book.ch06_policy_gradients.loop"
    assert _chapter_may_import(loop, "rlhf_book.ch05_reward_models")
    assert _chapter_may_import(loop, "rlhf_book.ch06_policy_gradients.losses")
    assert _chapter_may_import(loop, "rlhf_book.lm.gpt")
    assert not _chapter_may_import(loop, "rlhf_book.ch15_regularization")
    assert not _chapter_may_import(loop, "rlhf_book.textbook.substrate")
    assert not _chapter_may_import(loop, "rlhf_book.pipeline")
    assert _figure_may_import(6, "rlhf_book.ch06_policy_gradients.loop")
    assert _figure_may_import(6, "rlhf_book.textbook.figures")
    assert _figure_may_import(6, "rlhf_book.textbook.substrate")
    assert not _figure_may_import(6, "rlhf_book.ch05_reward_models")
    assert not _figure_may_import(6, "rlhf_book.textbook.figures.ch05_reward_models")
    assert not _figure_may_import(6, "rlhf_book.textbook.catalog")
