"""The HTML book: a Sphinx extension that turns the chapter guides and notebooks into one book.

``make book`` runs ``sphinx-build -c book . book/_build/html``: the repository itself is the
source folder (so that the guides' relative links to ``../notebooks/...`` work as written), and
``book/conf.py`` keeps only ``book/*.md``, ``chapters/*.md`` and ``notebooks/*.ipynb``. This module
adds three things the configuration alone cannot:

* **the home page's chapter table and table of contents**, written from the catalogue
  (:data:`rlhf_book.textbook.catalog.CHAPTERS`) and from the files that exist, in reading order:
  chapter N's companion notebooks (chapter 0's JAX primer, described by :data:`COMPANIONS`),
  then its guide, then its notebook and its sequels (chapter 0's scaling out, chapter 7's
  reasoning length), then its exercises; the chapters still to come are listed from
  :data:`BOOK_CHAPTERS`; ``chapters/FAQ.md`` joins the contents when it exists;
* **links from the guides**: a code span that names a file of the repository
  (```rlhf_book/lm/kl.py```, ```notebooks/ch06_policy_gradients.ipynb```, optionally followed
  by ``: name``) becomes a link, to the notebook's or guide's page, or to a page that shows the
  source file (an ordinary Markdown link to such a file is sent there too);
* **source pages**: every source file a page links to is rendered, highlighted and with line
  numbers, as ``_code/<path>.html``, so that the book reads without the repository beside it.

The book reads offline: ``book/conf.py`` serves MathJax from the build folder, and the test
``tests/test_book.py`` checks that no page loads a script, stylesheet or font from the network.
"""

from __future__ import annotations

import ast
import html
import pathlib
import posixpath
import re
from typing import Iterable, Iterator

from docutils import nodes

from rlhf_book.textbook.catalog import CHAPTERS

#: The book's chapters and appendices (public English edition), in order. The project builds
#: a chapter when :data:`~rlhf_book.textbook.catalog.CHAPTERS` has it; chapter 0 is the
#: project's own (the mini GPT every other chapter trains).
BOOK_CHAPTERS: tuple[tuple[str, str], ...] = (
    ("1", "Introduction"),
    ("2", "Key related works"),
    ("3", "Training overview"),
    ("4", "Instruction tuning"),
    ("5", "Reward modeling"),
    ("6", "Reinforcement learning (policy gradients)"),
    ("7", "Reasoning training and inference-time scaling"),
    ("8", "Direct alignment algorithms"),
    ("9", "Rejection sampling"),
    ("10", "The nature of preferences"),
    ("11", "Preference data"),
    ("12", "Synthetic data and distillation"),
    ("13", "Tool use and function calling"),
    ("14", "Over-optimization"),
    ("15", "Regularization"),
    ("16", "Evaluation"),
    ("17", "Product, UX and model character"),
    ("A", "Appendix A: definitions"),
    ("B", "Appendix B: style and information"),
    ("C", "Appendix C: practical issues"),
)

#: A chapter's companion notebooks (``Chapter.companions``, read before its main notebook) and
#: sequels (``Chapter.sequels``, read after it), by file stem: the name the home page gives
#: each, and its one-line description. One not listed is shown by its stem.
COMPANIONS: dict[str, tuple[str, str]] = {
    "ch00_jax_primer": (
        "JAX primer",
        "the JAX idioms of this project (arrays, PRNG keys, jit, grad, vmap, pytrees, lax.scan), "
        "each beside the PyTorch the book's snippets use: read it first if JAX is new to you"),
    "ch00_scaling_out": (
        "scaling out",
        "the same training on 8 devices with jax.sharding: data parallelism and FSDP give the "
        "numbers of one device, the collectives XLA writes for each, GRPO's groups kept on one "
        "device, a whole RL step of chapter 6; a tutorial without exercises"),
    "ch07_reasoning_length": (
        "when longer reasoning pays",
        "two-digit sums, where writing the column addition out beats a direct answer: RLVR "
        "grows the replies and the accuracy, a process audit shows the steps wearing down; "
        "pass@k to k = 64; best-of-N by a verifier against chapter 5's reward model"),
}

#: The folders of the repository whose files a guide may name.
LINKED_FOLDERS = ("rlhf_book", "notebooks", "chapters", "exercises", "figures", "tests",
                  "benchmarks")

#: Where the rendered source files go in the HTML output.
CODE_PREFIX = "_code"

#: The URL scheme of links to source pages (``book/conf.py`` declares it to MyST, so that MyST
#: does not look for a document there; ``source:../_code/rlhf_book/lm/kl.py.html#L-12`` then
#: becomes the relative link ``../_code/rlhf_book/lm/kl.py.html#L-12``).
SOURCE_SCHEME = "source"

#: The marker in ``book/index.md`` that :func:`home_page_sections` replaces.
CHAPTERS_MARKER = "<!-- chapters: written by rlhf_book.textbook.book -->"

_CODE_SPAN = re.compile(r"(?<![\[`])`(?P<path>(?:%s)/[A-Za-z0-9_./-]+\.[A-Za-z0-9]+)"
                        r"(?P<rest>(?::[^`]*)?)`(?![`\]])" % "|".join(LINKED_FOLDERS))
_MD_LINK = re.compile(r"\]\((?P<target>\.\./(?:%s)/[^)\s#]+)(?P<anchor>#[^)\s]*)?\)"
                      % "|".join(LINKED_FOLDERS))
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")


def _chapter_docs(root: pathlib.Path) -> Iterator[tuple[object, bool, bool]]:
    """Each built chapter with whether its guide and its notebook exist under ``root``."""
    for chapter in CHAPTERS:
        yield chapter, chapter.guide(root).exists(), chapter.notebook(root).exists()


def _companions(chapter, root: pathlib.Path, stems=None) -> list[tuple[str, str, str]]:
    """``(stem, name, description)`` of each companion notebook of ``chapter`` (or of each
    notebook of ``stems``, e.g. its sequels) that exists under ``root``, in reading order."""
    found = []
    for stem in chapter.companions if stems is None else stems:
        path = root / "notebooks" / f"{stem}.ipynb"
        if path.exists():
            name, description = COMPANIONS.get(path.stem, (path.stem, ""))
            found.append((path.stem, name, description))
    return found


def home_page_sections(root: pathlib.Path) -> str:
    """The home page's generated part, as MyST Markdown: the chapter table and the contents.

    The table lists the book's chapters in order, each with its guide, notebook and exercise
    file where the project has built it and "to come" otherwise (a chapter's companion
    notebooks, such as chapter 0's JAX primer, come first in its "Run" cell, and each is
    described under the table); then one table of contents per built chapter (companions,
    guide, then notebook), and a last one with the equation index and, when
    ``chapters/FAQ.md`` exists, the answers to common questions.
    """
    root = pathlib.Path(root)
    built = {str(chapter.number): (chapter, guide, notebook)
             for chapter, guide, notebook in _chapter_docs(root)}
    lines = ["| Chapter | Read | Run | Do | |", "|---|---|---|---|---|"]
    notes, after_notes = [], []
    rows = [("0", "The mini GPT (this project's own: the model every chapter trains)")]
    rows += list(BOOK_CHAPTERS)
    for number, title in rows:
        label = title if not number.isdigit() else f"{number}. {title}"
        if number in built:
            chapter, guide, notebook = built[number]
            read = f"[guide](/chapters/{chapter.key}.md)" if guide else "—"
            run = f"[notebook](/notebooks/{chapter.key}.ipynb)" if notebook else "—"
            companions = _companions(chapter, root)
            if companions:
                first = ", ".join(f"[{name}](/notebooks/{stem}.ipynb)"
                                  for stem, name, _ in companions)
                run = f"{first}, then {run}"
                notes += [f"* **[{name}](/notebooks/{stem}.ipynb)** (chapter {chapter.number}): "
                          f"{description}" for stem, name, description in companions]
            sequels = _companions(chapter, root, chapter.sequels)
            if sequels:
                run += "".join(f", then [{name}](/notebooks/{stem}.ipynb)"
                               for stem, name, _ in sequels)
                after_notes += [f"* **[{name}](/notebooks/{stem}.ipynb)** (chapter "
                                f"{chapter.number}): {description}"
                                for stem, name, description in sequels]
            stub = root / "exercises" / f"{chapter.key}.py"
            do = (f"`exercises/{chapter.key}.py`, graded by `rlhf-book grade {chapter.short}`"
                  if stub.exists() else "—")
            lines.append(f"| **{label}** | {read} | {run} | {do} | built |")
        else:
            lines.append(f"| {label} | | | | to come |")
    out = ["## Chapters in reading order", "",
           "Read the book's chapter first, then the project's guide to it, then run its "
           "notebook, then do its exercises. Chapters marked *to come* are not built yet.", ""]
    out += lines + [""]
    if notes:
        out += ["Read before a chapter's own notebook:", "", *notes, ""]
    if after_notes:
        out += ["Read after a chapter's own notebook:", "", *after_notes, ""]
    for chapter, guide, notebook in _chapter_docs(root):
        entries = [f"{name} </notebooks/{stem}>" for stem, name, _ in _companions(chapter, root)]
        if guide:
            entries.append(f"Guide </chapters/{chapter.key}>")
        if notebook:
            entries.append(f"Notebook </notebooks/{chapter.key}>")
        entries += [f"{name} </notebooks/{stem}>"
                    for stem, name, _ in _companions(chapter, root, chapter.sequels)]
        if entries:
            out += ["```{toctree}", f":caption: Chapter {chapter.number}", ":maxdepth: 1", "",
                    *entries, "```", ""]
    reference = []
    if (root / "chapters" / "EQUATIONS.md").exists():
        reference.append("Equation index </chapters/EQUATIONS>")
    if (root / "chapters" / "FAQ.md").exists():
        reference.append("Questions readers ask </chapters/FAQ>")
    if reference:
        out += ["```{toctree}", ":caption: Reference", ":maxdepth: 1", "", *reference, "```",
                ""]
    return "\n".join(out)


def _is_document(path: str) -> bool:
    return (path.startswith("notebooks/") and path.endswith(".ipynb")) or (
        path.startswith("chapters/") and path.endswith(".md"))


def link_code_spans(text: str, docname: str, root: pathlib.Path,
                    sources: set[str] | None = None) -> str:
    """Turn the code spans and Markdown links of a page that name repository files into links.

    ``text`` is MyST Markdown of the document ``docname`` (e.g. ``chapters/ch06_policy_gradients``);
    a code span ```notebooks/x.ipynb``` or ```chapters/y.md``` becomes a link to that page, a
    code span or a relative link naming any other existing file under :data:`LINKED_FOLDERS`
    becomes a link to its rendered source page, and the file's path is added to ``sources``.
    Code spans of files that do not exist, and everything inside fenced code blocks, are left
    as they are.
    """
    if not isinstance(docname, str) or not docname:
        raise ValueError(f"docname must be a non-empty document name, got {docname!r}")
    root = pathlib.Path(root)
    up = "../" * docname.count("/")

    def target(path: str) -> str | None:
        if not (root / path).is_file():
            return None
        if _is_document(path):
            return "/" + path
        if sources is not None:
            sources.add(path)
        return f"{SOURCE_SCHEME}:{up}{CODE_PREFIX}/{path}.html"

    def code_span(match: re.Match) -> str:
        path = match.group("path")
        url = target(path)
        if url is None:
            return match.group(0)
        name = match.group("rest").lstrip(":").strip()
        line = definition_line(root / path, name) if name and path.endswith(".py") else None
        if line is not None and not _is_document(path):
            url += f"#L-{line}"
        return f"[{match.group(0)}]({url})"

    def md_link(match: re.Match) -> str:
        path = posixpath.normpath(posixpath.join(posixpath.dirname(docname),
                                                 match.group("target")))
        if _is_document(path) or not (root / path).is_file():
            return match.group(0)   # a page (MyST resolves it) or a broken link (MyST warns)
        return f"]({target(path)})"

    out, fence = [], None
    for line in text.splitlines(keepends=True):
        opening = _FENCE.match(line)
        if fence is None and opening:
            fence = opening.group(1)
        elif fence is not None:
            stripped = line.strip()
            if len(stripped) >= len(fence) and set(stripped) == {fence[0]}:
                fence = None
        else:
            line = _MD_LINK.sub(md_link, _CODE_SPAN.sub(code_span, line))
        out.append(line)
    return "".join(out)


def definition_line(path: pathlib.Path, qualname: str) -> int | None:
    """The line where the function or class ``qualname`` (``f`` or ``Class.method``) of the
    Python file ``path`` is defined, or ``None`` when the file does not define it."""
    if not isinstance(qualname, str) or not qualname:
        raise ValueError(f"qualname must be a non-empty name, got {qualname!r}")
    try:
        tree = ast.parse(pathlib.Path(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return None
    scope: list[ast.AST] = [tree]
    node = None
    for part in qualname.split("."):
        node = next((child for parent in scope for child in ast.iter_child_nodes(parent)
                     if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                     and child.name == part), None)
        if node is None:
            return None
        scope = [node]
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return first


def _highlighted_page(app, path: str) -> tuple[str, dict, str]:
    """The (pagename, context, template) of the source page of ``path``."""
    code = (pathlib.Path(app.srcdir) / path).read_text(encoding="utf-8")
    language = {".py": "python", ".json": "json", ".md": "markdown"}.get(
        pathlib.PurePosixPath(path).suffix, "text")
    body = app.builder.highlighter.highlight_block(code, language, linenos=True,
                                                lineanchors="L")
    pagename = f"{CODE_PREFIX}/{path}"
    title = html.escape(path)
    context = {
        "title": title,
        "body": f"<h1>{title}</h1>\n<p>The file <code>{title}</code> of the repository, "
                f"as this book was built.</p>\n{body}",
        "parents": [],
        "display_toc": False,
    }
    return pagename, context, "page.html"


# --- Sphinx hooks -----------------------------------------------------------------------------

def _source_read(app, docname: str, source: list[str]) -> None:
    root = pathlib.Path(app.srcdir)
    sources = app.env.rlhf_book_sources if hasattr(app.env, "rlhf_book_sources") else set()
    app.env.rlhf_book_sources = sources
    text = source[0]
    if docname == app.config.root_doc:
        text = text.replace(CHAPTERS_MARKER, home_page_sections(root))
    if docname.startswith("chapters/") or docname == app.config.root_doc:
        text = link_code_spans(text, docname, root, sources)
    source[0] = text


def _merge_sources(app, env, docnames, other) -> None:
    env.rlhf_book_sources = getattr(env, "rlhf_book_sources", set()) | getattr(
        other, "rlhf_book_sources", set())


def _resolve_source_links(app, doctree, docname: str) -> None:
    """``source:<relative URL>`` links (see :data:`SOURCE_SCHEME`) become plain relative links."""
    prefix = SOURCE_SCHEME + ":"
    for ref in doctree.findall(nodes.reference):
        uri = ref.get("refuri", "")
        if uri.startswith(prefix):
            ref["refuri"] = uri[len(prefix):]
            ref["internal"] = True
            ref["classes"].append("source-link")


def _collect_pages(app) -> Iterable[tuple[str, dict, str]]:
    if app.builder.format != "html":
        return
    for path in sorted(getattr(app.env, "rlhf_book_sources", set())):
        yield _highlighted_page(app, path)


def setup(app):
    """Register the hooks (the Sphinx extension entry point)."""
    app.connect("source-read", _source_read)
    app.connect("env-merge-info", _merge_sources)
    app.connect("doctree-resolved", _resolve_source_links)
    app.connect("html-collect-pages", _collect_pages)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "env_version": 1}
