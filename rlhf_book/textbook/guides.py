"""Chapter guides: Markdown files whose code excerpts are pulled from the library.

In the source, an excerpt is a named region::

    # [guide:causal-mask]
    def causal_mask(t): ...
    # [/guide]

In a guide (``chapters/chNN_*.md``), a pair of HTML comments (invisible on GitHub) marks where
that excerpt goes::

    <!-- excerpt: causal-mask -->
    ...the fenced code block that sync writes here...
    <!-- /excerpt -->

:func:`sync` rewrites everything between the comments from the source; :func:`stale` lists the
excerpts that differ from it, which is what the test checks. Excerpts are dedented.

**Exercises stay exercises.** An excerpt never shows an exercise's solution: each solution
region (the lines between ``# BEGIN SOLUTION`` and ``# END SOLUTION``) is replaced by one
comment line, ``# ... exercise 6.3: your code here (solution at the end of this guide)``, so the
signature, the docstring and the input checks outside the region stay visible. The solutions
themselves are folded, one ``<details>`` block per exercise, at the end of the chapter's guide,
after its exercise section, between two more comments that sync rewrites and stale checks::

    ## Solutions

    <!-- solutions -->
    ...one folded block per exercise of the chapter...
    <!-- /solutions -->

A guide of a chapter with exercises that lacks the block gets it appended by :func:`sync`.
"""

from __future__ import annotations

import ast
import dataclasses
import pathlib
import re
import textwrap

from rlhf_book.textbook.catalog import CHAPTERS, PACKAGE_DIR, Chapter, Exercise, project_root
from rlhf_book.textbook.stubs import BEGIN, END, solution_regions

SOURCE_OPEN = re.compile(r"^\s*# \[guide:([a-z0-9][a-z0-9-]*)\]\s*$")
SOURCE_CLOSE = re.compile(r"^\s*# \[/guide\]\s*$")
GUIDE_BLOCK = re.compile(
    r"(?P<open><!-- excerpt: (?P<name>[a-z0-9][a-z0-9-]*) -->\n)(?P<body>.*?)(?P<close><!-- /excerpt -->)",
    re.DOTALL,
)
SOLUTIONS_BLOCK = re.compile(r"(?P<open><!-- solutions -->\n)(?P<body>.*?)(?P<close><!-- /solutions -->)",
                             re.DOTALL)
SOLUTIONS_HEADING = "## Solutions"
# What stands in an excerpt where a solution region was; rendered per guide by :func:`render`.
PLACEHOLDER = "# ... exercise {id}: your code here (solution at the end of {where})"
THIS_GUIDE = "this guide"


@dataclasses.dataclass(frozen=True)
class Excerpt:
    """A named region of the source. ``code`` has each solution region replaced by its
    placeholder line (pointing to "this guide"); ``exercises`` are the ids of those regions."""

    name: str
    path: str  # relative to the repository root
    line: int  # 1-based line of the first excerpted line
    code: str
    exercises: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Solution:
    """An exercise's reference solution as a guide prints it: the whole library function
    (decorators included, docstring and solution markers left out), dedented."""

    exercise: Exercise
    path: str  # relative to the repository root
    begin: int  # 0-based line of the "# BEGIN SOLUTION" marker
    end: int  # 0-based line of the "# END SOLUTION" marker
    code: str


def _module_path(module: str) -> pathlib.Path:
    """The file of a module of the package, found without importing it."""
    return PACKAGE_DIR.parent.joinpath(*module.split(".")).with_suffix(".py")


def solution(exercise: Exercise) -> Solution:
    """Where ``exercise``'s solution region is, and the function that holds it.

    Raises ``ValueError`` when the function is missing or holds other than one region.
    """
    path = _module_path(exercise.module)
    rel = str(path.relative_to(PACKAGE_DIR.parent))
    source = path.read_text()
    node = next((n for n in ast.parse(source).body
                 if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                 and n.name == exercise.function), None)
    if node is None:
        raise ValueError(f"{rel}: exercise {exercise.id} names {exercise.function!r}, "
                         f"which is not a top-level function there")
    first = (node.decorator_list[0].lineno if node.decorator_list else node.lineno) - 1
    last = node.end_lineno  # exclusive, 0-based
    inside = [r for r in solution_regions(source, rel) if first <= r[0] < last]
    if len(inside) != 1:
        raise ValueError(f"{rel}: {exercise.function} (exercise {exercise.id}) must contain "
                         f"exactly one solution region, found {len(inside)}")
    (begin, end), = inside
    last = max(last, end + 1)  # a closing marker after the last statement is outside the node
    drop = {begin, end}
    body = node.body[0]
    if (isinstance(body, ast.Expr) and isinstance(body.value, ast.Constant)
            and isinstance(body.value.value, str)):
        drop |= set(range(body.lineno - 1, body.end_lineno))
    lines = source.splitlines()
    code = textwrap.dedent("\n".join(lines[n] for n in range(first, last) if n not in drop))
    return Solution(exercise, rel, begin, end, code.strip("\n"))


def _region_owners() -> dict[tuple[str, int], Exercise]:
    """Every catalogued exercise by its solution region's ``(file, BEGIN line)``."""
    owners = {}
    for chapter in CHAPTERS:
        for exercise in chapter.exercises:
            found = solution(exercise)
            owners[(found.path, found.begin)] = exercise
    return owners


def source_excerpts(package_dir: pathlib.Path = PACKAGE_DIR) -> dict[str, Excerpt]:
    """Every named region in the package, by name, with its solution regions replaced by
    placeholders. Raises ``ValueError`` for an unclosed, nested, stray or duplicated marker, a
    solution region that straddles an excerpt's edge, or one that no exercise of the catalogue
    claims, naming the file and line."""
    excerpts: dict[str, Excerpt] = {}
    owners = None
    for path in sorted(package_dir.rglob("*.py")):
        rel = str(path.relative_to(package_dir.parent))
        if "textbook" in path.relative_to(package_dir).parts:
            continue  # this machinery quotes the markers in its own docstrings
        name, start, body, ids = None, 0, [], []
        region = None  # 0-based line of an open "# BEGIN SOLUTION"
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            opened, closed = SOURCE_OPEN.match(line), SOURCE_CLOSE.match(line)
            marker = line.strip()
            if opened:
                if name:
                    raise ValueError(f"{rel}:{n}: [guide:{opened[1]}] inside [guide:{name}]")
                if region is not None:
                    raise ValueError(f"{rel}:{n}: [guide:{opened[1]}] opens inside the solution "
                                     f"region of line {region + 1}")
                name, start, body, ids = opened[1], n + 1, [], []
            elif closed:
                if not name:
                    raise ValueError(f"{rel}:{n}: [/guide] without an open [guide:...]")
                if region is not None:
                    raise ValueError(f"{rel}:{n}: [/guide] closes [guide:{name}] inside the "
                                     f"solution region of line {region + 1}")
                if name in excerpts:
                    raise ValueError(f"{rel}:{start - 1}: excerpt name {name!r} is already used "
                                     f"in {excerpts[name].path}")
                code = textwrap.dedent("\n".join(body)).strip("\n")
                excerpts[name] = Excerpt(name, rel, start, code, tuple(ids))
                name = None
            elif marker == BEGIN:
                region = n - 1
                if name:
                    owners = _region_owners() if owners is None else owners
                    if (rel, region) not in owners:
                        raise ValueError(f"{rel}:{n}: a solution region in [guide:{name}] that no "
                                         f"exercise of the catalogue claims")
                    exercise = owners[(rel, region)]
                    ids.append(exercise.id)
                    indent = line[:len(line) - len(line.lstrip())]
                    body.append(indent + PLACEHOLDER.format(id=exercise.id, where=THIS_GUIDE))
            elif marker == END:
                region = None
            elif name and region is None:
                body.append(line)
        if name:
            raise ValueError(f"{rel}:{start - 1}: [guide:{name}] is never closed")
    return excerpts


def _chapter_of_guide(path: pathlib.Path) -> Chapter | None:
    return next((c for c in CHAPTERS if c.key == path.stem), None)


def render(excerpt: Excerpt, chapter: Chapter | None = None) -> str:
    """The Markdown that stands between a guide's excerpt comments, in the guide of
    ``chapter`` (``None``: a guide of no chapter). A placeholder points to the end of this
    guide when the exercise is this chapter's, and to its own chapter's guide otherwise."""
    code = excerpt.code
    own = {e.id for e in chapter.exercises} if chapter else set()
    for exercise_id in excerpt.exercises:
        if exercise_id not in own:
            number = exercise_id.split(".")[0]
            code = code.replace(PLACEHOLDER.format(id=exercise_id, where=THIS_GUIDE),
                                PLACEHOLDER.format(id=exercise_id,
                                                   where=f"the chapter {number} guide"))
    return f"```python\n# {excerpt.path}\n{code}\n```\n"


def render_solutions(chapter: Chapter) -> str:
    """The Markdown between a guide's solutions comments: one folded block per exercise.

    The blank lines around each fence let GitHub and MyST render Markdown inside ``<details>``.
    """
    parts = ["Open a solution after your own attempt. Each block is the library's function, its\n"
             "docstring left out, copied by `rlhf-book chapters --sync`.\n"]
    for exercise in chapter.exercises:
        found = solution(exercise)
        parts.append(f"\n<details>\n<summary>Solution {exercise.id} ({exercise.function})"
                     f"</summary>\n\n```python\n# {found.path}\n{found.code}\n```\n\n</details>\n")
    return "".join(parts) + "\n"


def guide_files(root: pathlib.Path | None = None) -> list[pathlib.Path]:
    return sorted(((root or project_root()) / "chapters").glob("ch*.md"))


def _synced(text: str, excerpts: dict[str, Excerpt], path: pathlib.Path) -> str:
    chapter = _chapter_of_guide(path)

    def replace(match):
        name = match["name"]
        if name not in excerpts:
            raise ValueError(f"{path.name}: no source region named {name!r} "
                             f"(known: {', '.join(sorted(excerpts))})")
        return match["open"] + render(excerpts[name], chapter) + match["close"]

    text = GUIDE_BLOCK.sub(replace, text)
    if chapter is None or not chapter.exercises:
        return text
    solutions = render_solutions(chapter)
    if SOLUTIONS_BLOCK.search(text):
        return SOLUTIONS_BLOCK.sub(lambda m: m["open"] + solutions + m["close"], text, count=1)
    return (text.rstrip("\n") + f"\n\n{SOLUTIONS_HEADING}\n\n<!-- solutions -->\n"
            + solutions + "<!-- /solutions -->\n")


def stale(root: pathlib.Path | None = None) -> list[str]:
    """Guides whose excerpts or folded solutions differ from the source, as ``'path: names'``
    lines (``solutions`` names the solutions block)."""
    excerpts, problems = source_excerpts(), []
    for path in guide_files(root):
        text, chapter = path.read_text(), _chapter_of_guide(path)
        names = [m["name"] for m in GUIDE_BLOCK.finditer(text)
                 if m["name"] not in excerpts or m["body"] != render(excerpts[m["name"]], chapter)]
        if chapter is not None and chapter.exercises:
            block = SOLUTIONS_BLOCK.search(text)
            if block is None or block["body"] != render_solutions(chapter):
                names.append("solutions")
        if names:
            problems.append(f"{path.name}: {', '.join(names)}")
    return problems


def sync(root: pathlib.Path | None = None) -> list[pathlib.Path]:
    """Rewrite every guide's excerpts and folded solutions from the source; returns the files
    that changed."""
    excerpts, changed = source_excerpts(), []
    for path in guide_files(root):
        text = path.read_text()
        new = _synced(text, excerpts, path)
        if new != text:
            tmp = path.with_suffix(".md.tmp")
            tmp.write_text(new)
            tmp.replace(path)
            changed.append(path)
    return changed


def used_names(root: pathlib.Path | None = None) -> set[str]:
    """Excerpt names that some guide uses."""
    return {m["name"] for path in guide_files(root) for m in GUIDE_BLOCK.finditer(path.read_text())}
