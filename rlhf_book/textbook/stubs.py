"""Exercise stubs, generated from the library's solution regions.

In library code an exercise's solution sits between two comment lines::

    def causal_mask(t: int) -> jax.Array:
        \"\"\"...docstring...\"\"\"
        # BEGIN SOLUTION
        return jnp.tril(jnp.ones((t, t), dtype=bool))
        # END SOLUTION

:func:`stub_source` turns every exercise of a chapter into a function with the same signature
whose solution region is replaced by ``raise NotImplementedError(...)`` naming the exercise and
the book section. Code outside the region (input checks, say) is kept.

The docstring of an exercise function has two parts, split by the first paragraph that starts
with ``How:`` (:data:`HOW`)::

    \"\"\"Group-relative advantages (book §6.1.6, eq. 57): ...         <- the contract

    ``rewards [B, G]`` (``G >= 2``) -> ``[B, G]``. ``std`` is Bessel-corrected, ...

    How: the mean and std over the last axis with ``keepdims``, ...    <- the implementation
    \"\"\"

* the **contract**, before the marker: what is computed, the book section and equation number
  (or the paper), the shapes of the inputs and of the output, and every convention and edge
  case the grading check tests (an all-equal group gives 0, not NaN; which standard deviation;
  where ``eps`` goes). It says *what*, never *how*;
* the **implementation**, from the marker on: the formula spelled out step by step, the
  numerically careful trick, the library's conventions; what a reader of the library wants and
  a learner should discover.

The library keeps both parts (they are its API documentation and appear in the chapter guides);
a stub keeps only the contract (:func:`split_docstring`), so an exercise is a specification to
meet, not a recipe to transcribe. A docstring without the marker is all contract.

Each generated file ends with a fingerprint line, the SHA-256 of everything above it. A file
whose fingerprint still matches is untouched and can be regenerated safely; a file that no
longer matches has been edited by a reader, and :func:`write_stubs` leaves it alone unless
forced.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import pathlib
import re
import textwrap

from rlhf_book.textbook.catalog import CHAPTERS, PACKAGE_DIR, Chapter, Exercise

BEGIN = "# BEGIN SOLUTION"
END = "# END SOLUTION"
FINGERPRINT = "# stub fingerprint: "
HOW = "How:"
# The blank line, then the indented line that opens the implementation paragraph.
_HOW_PARAGRAPH = re.compile(r"\n[ \t]*\n(?P<indent>[ \t]*)" + re.escape(HOW) + r"(?=\s)")


def split_docstring(doc: str) -> tuple[str, str]:
    """``(contract, implementation)``: a docstring cut before its first paragraph that starts
    with ``How:``.

    The contract keeps the docstring's text up to the end of the paragraph before the marker,
    then a newline and the indentation of the closing quotes, exactly the docstring that a stub
    holding only those lines has; the implementation is the rest, from ``How:`` on, or ``""``
    when there is no marker. Raises ``ValueError`` if ``doc`` is not a string.
    """
    if not isinstance(doc, str):
        raise ValueError(f"doc must be a docstring (str), got {type(doc).__name__}")
    match = _HOW_PARAGRAPH.search(doc)
    if match is None:
        return doc, ""
    contract = doc[:match.start()] + "\n" + match.group("indent")
    return contract, doc[match.end("indent"):]


def solution_regions(source: str, filename: str = "<source>") -> list[tuple[int, int]]:
    """``(begin, end)`` 0-based line numbers of every ``BEGIN``/``END SOLUTION`` pair.

    Raises ``ValueError`` (with file and line) for an unpaired or nested marker.
    """
    regions, begin = [], None
    for n, line in enumerate(source.splitlines()):
        marker = line.strip()
        if marker == BEGIN:
            if begin is not None:
                raise ValueError(f"{filename}:{n + 1}: nested '{BEGIN}' (open since line {begin + 1})")
            begin = n
        elif marker == END:
            if begin is None:
                raise ValueError(f"{filename}:{n + 1}: '{END}' without a '{BEGIN}'")
            regions.append((begin, n))
            begin = None
    if begin is not None:
        raise ValueError(f"{filename}:{begin + 1}: '{BEGIN}' is never closed")
    return regions


def _module_source(module: str) -> tuple[str, ast.Module, str]:
    path = pathlib.Path(importlib.import_module(module).__file__)
    source = path.read_text()
    return source, ast.parse(source), str(path.relative_to(PACKAGE_DIR.parent))


def _function_node(tree: ast.Module, name: str, where: str) -> ast.FunctionDef:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise ValueError(f"{where}: no top-level function named {name!r}")


def _not_implemented(exercise: Exercise, indent: str) -> str:
    message = (f"Exercise {exercise.id} ({exercise.title}; {exercise.section}) is not started: "
               f"replace this line with your solution.")
    return f"{indent}raise NotImplementedError({message!r})"


def _contract_lines(node: ast.FunctionDef, lines: list[str], where: str) -> dict[int, str | None]:
    """Line edits that cut a function's docstring to its contract: ``{line: new text}`` where
    ``None`` deletes the line. Empty when the docstring has no ``How:`` paragraph."""
    first_stmt = node.body[0]
    if not (isinstance(first_stmt, ast.Expr) and isinstance(first_stmt.value, ast.Constant)
            and isinstance(first_stmt.value.value, str)):
        return {}
    start, stop = first_stmt.lineno - 1, first_stmt.end_lineno - 1  # 0-based, inclusive
    for n in range(start + 1, stop + 1):
        text = lines[n].strip()
        if lines[n - 1].strip() == "" and (text == HOW or text.startswith(HOW + " ")):
            indent = re.match(r"\s*", lines[n]).group(0)
            edits: dict[int, str | None] = {m: None for m in range(n - 1, stop + 1)}
            edits[n - 1] = indent + '"""'
            return edits
    return {}


def stub_function(exercise: Exercise) -> str:
    """The stub of one exercise: the library function with its docstring cut to the contract
    (:func:`split_docstring`) and its solution region replaced."""
    source, tree, where = _module_source(exercise.module)
    node = _function_node(tree, exercise.function, where)
    first = (node.decorator_list[0].lineno if node.decorator_list else node.lineno) - 1
    last = node.end_lineno  # exclusive, 0-based
    lines = source.splitlines()
    # A closing comment after the last statement lies outside the AST node's span.
    inside = [r for r in solution_regions(source, where) if first <= r[0] < last]
    if len(inside) != 1:
        raise ValueError(f"{where}: {exercise.function} (exercise {exercise.id}) must contain "
                         f"exactly one solution region, found {len(inside)}")
    (begin, end), = inside
    last = max(last, end + 1)
    indent = re.match(r"\s*", lines[begin]).group(0)
    edits = _contract_lines(node, lines, where)
    head = [edits.get(n, line) for n, line in enumerate(lines[:begin]) if n >= first]
    body = [line for line in head if line is not None]
    body += [_not_implemented(exercise, indent)] + lines[end + 1:last]
    stub = "\n".join(body)
    contract = split_docstring(ast.get_docstring(node, clean=False) or "")[0]
    stub_node = ast.parse(textwrap.dedent(stub)).body[0]
    if (ast.get_docstring(stub_node, clean=False) or "") != contract:
        raise ValueError(f"{where}: {exercise.function}'s stub docstring is not the contract part "
                         f"of its docstring (is '{HOW}' on a line of its own?)")
    return stub


def _names_used(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _top_level_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


# Always importable in a stub, whether or not the reference solution uses them.
_ALWAYS = ("import jax", "import jax.numpy as jnp", "import numpy as np")


def _import_lines(node: ast.Import | ast.ImportFrom, used: set[str]) -> list[str]:
    """The part of an import statement that binds names in ``used``, as source lines."""
    def bound(alias):
        return alias.asname or alias.name.split(".")[0]

    aliases = [a for a in node.names if bound(a) in used]
    if not aliases:
        return []
    names = ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in aliases)
    if isinstance(node, ast.Import):
        return [f"import {a.name}" + (f" as {a.asname}" if a.asname else "") for a in aliases]
    return [f"from {'.' * node.level}{node.module or ''} import {names}"]


def _imports(chapter: Chapter) -> list[str]:
    """Import lines a stub file needs: the source modules' imports that the exercise functions
    use, then the modules' own top-level names they use (helpers, constants, type aliases).

    A name that is itself an exercise of the chapter is not imported: the stub defines it, so
    a later exercise that calls an earlier one runs the reader's version.
    """
    own = {e.function for e in chapter.exercises}
    outside, library, from_modules = list(_ALWAYS), [], {}
    for exercise in chapter.exercises:
        source, tree, where = _module_source(exercise.module)
        used = _names_used(_function_node(tree, exercise.function, where)) - own
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)) and getattr(node, "module", "") != "__future__":
                for line in _import_lines(node, used):
                    (library if "rlhf_book" in line else outside).append(line)
        from_modules.setdefault(exercise.module, set()).update(used & _top_level_names(tree))
    library += [f"from {module} import {', '.join(sorted(names))}"
                for module, names in from_modules.items() if names]
    outside = sorted(dict.fromkeys(outside), key=lambda line: (line.startswith("from"), line))
    return ["from __future__ import annotations", "", *outside, "", *_merged(library)]


def _merged(lines: list[str]) -> list[str]:
    """``from M import ...`` lines merged per module (names sorted, each once), in the order the
    modules first appear: several exercises of one module need one import line, not several."""
    names: dict[str, dict[str, None]] = {}
    for line in lines:
        module, _, imported = line.removeprefix("from ").partition(" import ")
        names.setdefault(module, {}).update(dict.fromkeys(n.strip() for n in imported.split(",")))
    return [f"from {module} import {', '.join(sorted(imported))}"
            for module, imported in names.items()]


def _header(chapter: Chapter) -> str:
    ids = ", ".join(f"{e.id} {e.title}" for e in chapter.exercises)
    return textwrap.dedent(f'''\
        """Exercises of chapter {chapter.number}: {chapter.title}.

        Book: {chapter.sections}.
        Exercises: {ids}.

        Write each function body where it raises ``NotImplementedError``, then grade your work:

            rlhf-book grade {chapter.short}              # a table: passed / failing / not started
            pytest tests/test_grading.py --impl=exercises -k "{chapter.number}."

        or, from a notebook, ``from rlhf_book.textbook import check; check("{chapter.exercises[0].id}", fn)``.
        The chapter guide chapters/{chapter.key}.md explains each function; the reference
        solution is in the library (the function of the same name), so read it only after trying.

        This file was generated by ``rlhf-book exercises`` from the library's solution regions.
        """
        ''')


def stub_source(chapter: Chapter) -> str:
    """The full text of ``exercises/<chapter>.py``, fingerprint line included."""
    parts = [_header(chapter), "\n".join(_imports(chapter))]
    parts += [stub_function(e) for e in chapter.exercises]
    body = "\n\n\n".join(part.rstrip("\n") for part in parts) + "\n"
    return body + f"\n{FINGERPRINT}{_digest(body + chr(10))}\n"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def is_edited(text: str) -> bool:
    """Whether a stub file's content no longer matches its own fingerprint line."""
    body, sep, tail = text.rpartition(FINGERPRINT)
    return not sep or tail.strip() != _digest(body)


def library_solution_regions() -> dict[str, list[tuple[int, int]]]:
    """Every solution region in the package, by file (relative to the repository)."""
    regions = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        if "textbook" in path.relative_to(PACKAGE_DIR).parts:
            continue  # this machinery mentions the markers in its own text
        found = solution_regions(path.read_text(), str(path))
        if found:
            regions[str(path.relative_to(PACKAGE_DIR.parent))] = found
    return regions


def write_stubs(chapters=CHAPTERS, exercises_dir: pathlib.Path | None = None, *,
                force: bool = False) -> dict[str, str]:
    """Regenerate the stub files; returns ``{path: what happened}``.

    A file that a reader has edited (its fingerprint no longer matches) is kept unless
    ``force``: regenerating must never erase someone's work.
    """
    report = {}
    for chapter in chapters:
        if not chapter.exercises:
            continue
        path = chapter.stub_file(exercises_dir)
        new = stub_source(chapter)
        if path.exists():
            old = path.read_text()
            if old == new:
                report[str(path)] = "up to date"
                continue
            if is_edited(old) and not force:
                report[str(path)] = ("kept: edited by you (`rlhf-book exercises --diff` shows what "
                                     "the new stub changes)")
                continue
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".py.tmp")
        tmp.write_text(new)
        tmp.replace(path)
        report[str(path)] = "written"
    return report
