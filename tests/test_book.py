"""The HTML book (`make book`): it builds without a warning, its links work, and it reads offline.

The book is built once, into a temporary folder, with Sphinx's warnings turned into errors; the
checks then read the HTML as a browser would: every relative ``href``/``src`` must name a file of
the output (and an element of that page when it carries an ``#anchor``), no page or stylesheet may
load anything from the network, every guide and notebook of the repository has its page, and the
home page lists the chapters in reading order (guide, notebook, exercises).
"""

from __future__ import annotations

import html.parser
import json
import pathlib
import re
import subprocess
import sys
import urllib.parse

import pytest

from rlhf_book.textbook import book

ROOT = pathlib.Path(__file__).resolve().parent.parent


class _Page(html.parser.HTMLParser):
    """The links, loaded resources, element ids and inline styles of one HTML page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, str, str]] = []   # (tag, attribute, value), in page order
        self.ids: set[str] = set()
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("id", "name"):
            if attrs.get(key):
                self.ids.add(attrs[key])
        for key in ("href", "src"):
            if attrs.get(key) is not None:
                self.links.append((tag, key, attrs[key]))
        if attrs.get("style"):
            self.styles.append(attrs["style"])
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)


def _parse(path: pathlib.Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> pathlib.Path:
    """The book built with warnings as errors; returns its HTML folder."""
    out = tmp_path_factory.mktemp("book")
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-W", "--keep-going",
           "-c", str(ROOT / "book"), str(ROOT), str(out / "html"), "-d", str(out / "doctrees")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"sphinx-build failed:\n{proc.stdout}\n{proc.stderr}"
    return out / "html"


@pytest.fixture(scope="module")
def pages(built) -> dict[pathlib.Path, _Page]:
    """Every page of the book (the theme's template fragments in _static/ left out)."""
    return {p: _parse(p) for p in sorted(built.rglob("*.html"))
            if "_static" not in p.relative_to(built).parts}


def _guides() -> list[pathlib.Path]:
    return sorted((ROOT / "chapters").glob("*.md"))


def _notebooks() -> list[pathlib.Path]:
    return sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_every_internal_link_resolves(built, pages):
    broken = []
    for path, page in pages.items():
        for tag, attr, value in page.links:
            parts = urllib.parse.urlsplit(value)
            if parts.scheme or parts.netloc or value.startswith("//"):
                continue                      # external: checked by the offline test
            if not parts.path:                # "#anchor" on the same page
                target, target_page = path, page
            else:
                target = (path.parent / urllib.parse.unquote(parts.path)).resolve()
                if target.is_dir():
                    target = target / "index.html"
                if not target.is_file():
                    broken.append(f"{path.relative_to(built)}: <{tag} {attr}={value!r}>")
                    continue
                target_page = pages.get(target) if target.suffix == ".html" else None
            if parts.fragment and target_page is not None:
                if urllib.parse.unquote(parts.fragment) not in target_page.ids:
                    broken.append(f"{path.relative_to(built)}: <{tag} {attr}={value!r}> "
                                  f"(no element with id {parts.fragment!r})")
    assert not broken, f"{len(broken)} broken links, e.g.:\n" + "\n".join(broken[:20])


_REMOTE = re.compile(r"^\s*(?:https?:)?//", re.IGNORECASE)
_CSS_URL = re.compile(r"""url\(\s*['"]?([^'")]+)|@import\s+(?:url\()?\s*['"]?([^'");\s]+)""",
                      re.IGNORECASE)


def _remote_css_urls(css: str) -> list[str]:
    """The ``url(...)`` and ``@import`` targets of a stylesheet that point at the network."""
    found = [a or b for a, b in _CSS_URL.findall(css)]
    return [u for u in found if _REMOTE.match(u)]


def test_css_url_scan_sees_remote_loads():
    # The scanner itself: a remote font and import are found, data: URIs and local files not.
    css = ("@import url('https://fonts.googleapis.com/css?family=Lato');"
           "@font-face{src:url(//cdn.example.org/f.woff2)}"
           ".a{background:url(\"data:image/svg+xml;charset=utf-8,<svg xmlns='http://www.w3.org/2000/svg'/>\")}"
           ".b{background:url(../img/x.png)}")
    assert _remote_css_urls(css) == ["https://fonts.googleapis.com/css?family=Lato",
                                     "//cdn.example.org/f.woff2"]


def test_book_loads_nothing_from_the_network(built, pages):
    remote = []
    for path, page in pages.items():
        for tag, attr, value in page.links:
            if (tag, attr) in {("script", "src"), ("link", "href"), ("img", "src"),
                               ("iframe", "src"), ("source", "src")} and _REMOTE.match(value):
                remote.append(f"{path.relative_to(built)}: <{tag} {attr}={value!r}>")
        for style in page.styles:
            remote += [f"{path.relative_to(built)}: inline style loads {u}"
                       for u in _remote_css_urls(style)]
    for css in built.rglob("*.css"):
        remote += [f"{css.relative_to(built)}: loads {u}"
                   for u in _remote_css_urls(css.read_text(encoding="utf-8", errors="replace"))]
    assert not remote, "the book loads from the network:\n" + "\n".join(remote[:20])


def test_maths_is_rendered_by_the_bundled_mathjax(built, pages):
    page = pages[built / "chapters" / "ch06_policy_gradients.html"]
    scripts = [v for tag, attr, v in page.links if tag == "script" and "mathjax" in v.lower()]
    assert scripts, "the guide has maths but loads no MathJax"
    for src in scripts:
        assert not _REMOTE.match(src)
        assert (built / "chapters" / urllib.parse.urlsplit(src).path).resolve().is_file(), src
    assert (built / "_static" / "mathjax" / "output" / "chtml" / "fonts").is_dir()


def test_every_guide_and_notebook_has_a_page(built):
    sources = _guides() + _notebooks()
    assert len(_guides()) >= 2 and len(_notebooks()) >= 1
    missing = [s.relative_to(ROOT) for s in sources
               if not (built / s.parent.name / f"{s.stem}.html").is_file()]
    assert not missing, f"no page for {missing}"


def test_notebook_pages_keep_the_committed_outputs(built):
    # Nothing is executed: each notebook's page shows exactly the images it was committed with.
    for notebook in _notebooks():
        cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
        images = sum("image/png" in out.get("data", {})
                     for cell in cells for out in cell.get("outputs", []))
        page = (built / "notebooks" / f"{notebook.stem}.html").read_text(encoding="utf-8")
        shown = len(re.findall(r"<img [^>]*src=\"[^\"]*_images/", page))
        assert shown == images, f"{notebook.name}: {images} images committed, {shown} shown"


def _chapter_number(path: pathlib.Path) -> int:
    return int(re.match(r"ch(\d+)_", path.name).group(1))


def test_home_page_lists_the_chapters_in_reading_order(built, pages):
    home = pages[built / "book" / "index.html"]
    text = (built / "book" / "index.html").read_text(encoding="utf-8")
    main = text[text.index("<main"):]
    hrefs = [urllib.parse.urlsplit(v).path for tag, attr, v in _parse_fragment(main) if
             tag == "a" and attr == "href"]
    chapters = sorted((g for g in _guides() if re.match(r"ch\d+_", g.name)),
                      key=_chapter_number)
    expected = []
    for guide in chapters:
        expected.append(f"../chapters/{guide.stem}.html")
        if (ROOT / "notebooks" / f"{guide.stem}.ipynb").exists():
            expected.append(f"../notebooks/{guide.stem}.html")
        if (ROOT / "exercises" / f"{guide.stem}.py").exists():
            expected.append(f"../_code/exercises/{guide.stem}.py.html")
    firsts = [h for i, h in enumerate(hrefs) if h in expected and h not in hrefs[:i]]
    assert firsts == expected
    assert "../chapters/EQUATIONS.html" in hrefs
    assert any(v.endswith("search.html") for _, _, v in home.links)
    # The chapters of the book not built yet are listed as to come, in book order.
    built_numbers = {_chapter_number(g) for g in chapters}
    rows = [" ".join(re.sub(r"<[^>]+>", " ", row).split())
            for row in re.findall(r"<tr.*?</tr>", main, re.S)]
    to_come = [int(re.match(r"(\d+)\.", row).group(1)) for row in rows
               if row.endswith("to come") and re.match(r"\d+\.", row)]
    assert to_come == [n for n in range(1, 18) if n not in built_numbers]
    assert [row.split(":")[0] for row in rows if row.startswith("Appendix")] == [
        "Appendix A", "Appendix B", "Appendix C"]
    if (ROOT / "chapters" / "FAQ.md").exists():
        assert "../chapters/FAQ.html" in hrefs


def _parse_fragment(markup: str) -> list[tuple[str, str, str]]:
    page = _Page()
    page.feed(markup)
    return page.links


# --- the link rewriting, on small inputs -------------------------------------------------------

def _tiny_repo(tmp_path: pathlib.Path) -> pathlib.Path:
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "ch00_mini_gpt.ipynb").write_text("{}")
    (tmp_path / "chapters").mkdir()
    (tmp_path / "chapters" / "ch00_mini_gpt.md").write_text("# Chapter 0\n")
    (tmp_path / "rlhf_book" / "lm").mkdir(parents=True)
    (tmp_path / "rlhf_book" / "lm" / "kl.py").write_text(
        '"""KL."""\n\nclass Box:\n    @staticmethod\n    def size():\n        return 1\n\n\n'
        "def kl_k3(x):\n    return x\n")
    return tmp_path


def test_code_spans_become_links(tmp_path):
    root = _tiny_repo(tmp_path)
    sources: set[str] = set()
    text = ("See `notebooks/ch00_mini_gpt.ipynb` and `rlhf_book/lm/kl.py: kl_k3`,\n"
            "`rlhf_book/lm/kl.py: Box.size`, `rlhf_book/lm/missing.py`, `rlhf_book/lm/kl.py`.\n"
            "```python\nx = `rlhf_book/lm/kl.py`\n```\n"
            "[the file](../rlhf_book/lm/kl.py) and [the notebook](../notebooks/ch00_mini_gpt.ipynb)\n")
    out = book.link_code_spans(text, "chapters/ch00_mini_gpt", root, sources).splitlines()
    # kl_k3 is defined on line 9 of the file above, Box.size on line 5 (its decorator on 4).
    assert out[0] == ("See [`notebooks/ch00_mini_gpt.ipynb`](/notebooks/ch00_mini_gpt.ipynb) and "
                      "[`rlhf_book/lm/kl.py: kl_k3`](source:../_code/rlhf_book/lm/kl.py.html#L-9),")
    assert out[1] == ("[`rlhf_book/lm/kl.py: Box.size`](source:../_code/rlhf_book/lm/kl.py.html#L-4), "
                      "`rlhf_book/lm/missing.py`, "
                      "[`rlhf_book/lm/kl.py`](source:../_code/rlhf_book/lm/kl.py.html).")
    assert out[2:5] == ["```python", "x = `rlhf_book/lm/kl.py`", "```"]
    assert out[5] == ("[the file](source:../_code/rlhf_book/lm/kl.py.html) and "
                      "[the notebook](../notebooks/ch00_mini_gpt.ipynb)")
    assert sources == {"rlhf_book/lm/kl.py"}


def test_link_code_spans_rejects_a_bad_docname(tmp_path):
    with pytest.raises(ValueError, match="docname"):
        book.link_code_spans("x", "", tmp_path)


def test_definition_line(tmp_path):
    path = _tiny_repo(tmp_path) / "rlhf_book" / "lm" / "kl.py"
    assert book.definition_line(path, "kl_k3") == 9
    assert book.definition_line(path, "Box") == 3
    assert book.definition_line(path, "nothing") is None
    with pytest.raises(ValueError, match="qualname"):
        book.definition_line(path, "")


def test_home_page_lists_the_faq_only_when_it_exists(tmp_path):
    root = _tiny_repo(tmp_path)
    assert "FAQ" not in book.home_page_sections(root)
    (root / "chapters" / "FAQ.md").write_text("# Questions\n")
    sections = book.home_page_sections(root)
    assert "</chapters/FAQ>" in sections
    assert sections.index("Guide </chapters/ch00_mini_gpt>") < sections.index(
        "Notebook </notebooks/ch00_mini_gpt>") < sections.index("</chapters/FAQ>")
