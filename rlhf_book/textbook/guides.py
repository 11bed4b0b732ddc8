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
excerpts that differ from it, which is what the test checks. Excerpts are dedented and the
exercise markers (``# BEGIN SOLUTION`` / ``# END SOLUTION``) are left out.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
import textwrap

from rlhf_book.textbook.catalog import PACKAGE_DIR, project_root
from rlhf_book.textbook.stubs import BEGIN, END

SOURCE_OPEN = re.compile(r"^\s*# \[guide:([a-z0-9][a-z0-9-]*)\]\s*$")
SOURCE_CLOSE = re.compile(r"^\s*# \[/guide\]\s*$")
GUIDE_BLOCK = re.compile(
    r"(?P<open><!-- excerpt: (?P<name>[a-z0-9][a-z0-9-]*) -->\n)(?P<body>.*?)(?P<close><!-- /excerpt -->)",
    re.DOTALL,
)


@dataclasses.dataclass(frozen=True)
class Excerpt:
    name: str
    path: str  # relative to the repository root
    line: int  # 1-based line of the first excerpted line
    code: str


def source_excerpts(package_dir: pathlib.Path = PACKAGE_DIR) -> dict[str, Excerpt]:
    """Every named region in the package, by name. Raises ``ValueError`` for an unclosed,
    nested, stray or duplicated marker, naming the file and line."""
    excerpts: dict[str, Excerpt] = {}
    for path in sorted(package_dir.rglob("*.py")):
        rel = str(path.relative_to(package_dir.parent))
        if "textbook" in path.relative_to(package_dir).parts:
            continue  # this machinery quotes the markers in its own docstrings
        name, start, body = None, 0, []
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            opened, closed = SOURCE_OPEN.match(line), SOURCE_CLOSE.match(line)
            if opened:
                if name:
                    raise ValueError(f"{rel}:{n}: [guide:{opened[1]}] inside [guide:{name}]")
                name, start, body = opened[1], n + 1, []
            elif closed:
                if not name:
                    raise ValueError(f"{rel}:{n}: [/guide] without an open [guide:...]")
                if name in excerpts:
                    raise ValueError(f"{rel}:{start - 1}: excerpt name {name!r} is already used "
                                     f"in {excerpts[name].path}")
                code = textwrap.dedent("\n".join(body)).strip("\n")
                excerpts[name] = Excerpt(name, rel, start, code)
                name = None
            elif name and line.strip() not in (BEGIN, END):
                body.append(line)
        if name:
            raise ValueError(f"{rel}:{start - 1}: [guide:{name}] is never closed")
    return excerpts


def render(excerpt: Excerpt) -> str:
    """The Markdown that stands between a guide's excerpt comments."""
    return f"```python\n# {excerpt.path}\n{excerpt.code}\n```\n"


def guide_files(root: pathlib.Path | None = None) -> list[pathlib.Path]:
    return sorted(((root or project_root()) / "chapters").glob("ch*.md"))


def _synced(text: str, excerpts: dict[str, Excerpt], where: str) -> str:
    def replace(match):
        name = match["name"]
        if name not in excerpts:
            raise ValueError(f"{where}: no source region named {name!r} "
                             f"(known: {', '.join(sorted(excerpts))})")
        return match["open"] + render(excerpts[name]) + match["close"]

    return GUIDE_BLOCK.sub(replace, text)


def stale(root: pathlib.Path | None = None) -> list[str]:
    """Guides whose excerpts differ from the source, as ``'path: names'`` lines."""
    excerpts, problems = source_excerpts(), []
    for path in guide_files(root):
        text = path.read_text()
        names = [m["name"] for m in GUIDE_BLOCK.finditer(text)
                 if m["name"] not in excerpts or m["body"] != render(excerpts[m["name"]])]
        if names:
            problems.append(f"{path.name}: {', '.join(names)}")
    return problems


def sync(root: pathlib.Path | None = None) -> list[pathlib.Path]:
    """Rewrite every guide's excerpts from the source; returns the files that changed."""
    excerpts, changed = source_excerpts(), []
    for path in guide_files(root):
        text = path.read_text()
        new = _synced(text, excerpts, path.name)
        if new != text:
            tmp = path.with_suffix(".md.tmp")
            tmp.write_text(new)
            tmp.replace(path)
            changed.append(path)
    return changed


def used_names(root: pathlib.Path | None = None) -> set[str]:
    """Excerpt names that some guide uses."""
    return {m["name"] for path in guide_files(root) for m in GUIDE_BLOCK.finditer(path.read_text())}
