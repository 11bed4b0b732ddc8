"""The equation index: every numbered equation of the book -> code -> tests -> notebook sections.

``chapters/EQUATIONS.md`` is generated from three sources, so that it cannot drift from them:

* :data:`BOOK_EQUATIONS`, the book's numbered equations (numbers as in the public English
  edition; chapters 3, 5, 6, 8, 9, 15 and Appendix A are the only ones with numbered
  equations), each with its section and a short name;
* the docstrings of the package: a function or class whose docstring cites "eq. 57" (or
  "eqs. 44, 45", "eqs. 44-46", "eq. (123)") implements that equation. Module docstrings are
  read too, but a citation there only says where an equation is discussed;
* ``tests/*.py``, searched for the names of those functions, and ``notebooks/*.ipynb``,
  searched section by section for those names and for citations of the equation.

Docstrings that cite a range ("eqs. 44-46") count for every equation in it, and are listed at
the end of the index: the project's rule is to cite each equation individually.

``rlhf-book chapters --sync`` rewrites the file (:func:`write_index`); a test fails while it is
stale (:func:`index_is_current`).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import pathlib
import re
from typing import NamedTuple

from rlhf_book.textbook.catalog import PACKAGE_DIR, project_root

INDEX_PATH = pathlib.PurePosixPath("chapters/EQUATIONS.md")
MODULE = "<module>"  # the qualname given to a module docstring's citations


# ----------------------------------------------------------------------------------------------
# The book's numbered equations


class BookEquation(NamedTuple):
    number: int
    chapter: str  # "6", or "A" for Appendix A
    section: str  # "§6.1.6"; a chapter's introduction is "§6"
    name: str


CHAPTER_TITLES = {
    "3": "Training Overview",
    "5": "Reward Modeling",
    "6": "Reinforcement Learning (Policy Gradient Algorithms)",
    "8": "Direct Alignment Algorithms",
    "9": "Rejection Sampling",
    "15": "Regularization",
    "A": "Definitions",
}

# (chapter, section, first equation number, names of that section's consecutive equations).
# The numbers are written out so that a reader can find an equation here; a test checks that
# they run from 1 to the last one without a gap or a repeat.
_SECTIONS = (
    ("3", "§3.1", 1, ["trajectory distribution", "finite-horizon discounted RL objective"]),
    ("3", "§3.1.1", 3, ["thermostat threshold policy"]),
    ("3", "§3.1.2", 4, ["CartPole state", "CartPole force term α", "CartPole pole acceleration",
                        "CartPole cart acceleration", "CartPole Euler step of the cart",
                        "CartPole Euler step of the pole"]),
    ("3", "§3.1.3", 10, ["RLHF objective without horizon or discount"]),
    ("3", "§3.1.4", 11, ["KL-regularised RLHF objective"]),
    ("5", "§5.1", 12, ["Bradley-Terry model with positive strengths",
                       "Bradley-Terry model as σ(r_i − r_j)", "Bradley-Terry reward model",
                       "maximum-likelihood derivation of the reward-model loss",
                       "Bradley-Terry loss −log σ(r_c − r_r)",
                       "Bradley-Terry loss in softplus form"]),
    ("5", "§5.4.1", 18, ["preference-margin loss"]),
    ("5", "§5.4.2", 19, ["pairwise loss balanced per prompt"]),
    ("5", "§5.4.3", 20, ["Plackett-Luce ranking probability"]),
    ("5", "§5.5", 21, ["outcome reward model loss (binary cross-entropy)"]),
    ("5", "§5.6", 22, ["process reward model loss"]),
    ("6", "§6.1", 23, ["policy-gradient update Δθ ∝ Ψ_t ∇log π", "discounted return G_t",
                       "recursive return", "value function V(s) = E[G_t]",
                       "objective J as state-weighted values", "batch estimate of J (bandit view)",
                       "batch estimate of J (per-step rewards)", "gradient ascent on J"]),
    ("6", "§6.1.1", 31, ["J as an expectation over trajectories",
                         "J as an integral over trajectories", "trajectory probability",
                         "gradient of J as an integral", "log-derivative trick",
                         "score-function form of ∇J", "log-probability of a trajectory",
                         "gradient of a trajectory's log-probability",
                         "policy gradient with the trajectory return",
                         "general policy gradient with weights Ψ_t",
                         "advantage as the TD residual"]),
    ("6", "§6.1.2", 42, ["vanilla policy gradient", "policy gradient with the advantage"]),
    ("6", "§6.1.3", 44, ["Williams' REINFORCE update", "REINFORCE with a baseline",
                         "REINFORCE with the advantage A_t = G_t − b(s_t)"]),
    ("6", "§6.1.4", 47, ["RLOO leave-one-out baseline", "RLOO advantage",
                         "RLOO advantage in closed form"]),
    ("6", "§6.1.5", 50, ["PPO clipped objective", "policy gradient with the advantage, restated",
                         "PPO clipped objective per token",
                         "PPO objective averaged over a completion's tokens",
                         "policy ratio π_θ / π_old"]),
    ("6", "§6.1.6", 55, ["GRPO objective", "GRPO objective per token", "GRPO advantage",
                         "Dr. GRPO advantage", "RLOO advantage in GRPO notation",
                         "Dr. GRPO advantage equals RLOO's up to G/(G−1)"]),
    ("6", "§6.1.7", 61, ["importance-sampling identity", "sequence probability as a product",
                         "GSPO length-normalised sequence ratio", "GSPO objective"]),
    ("6", "§6.1.8", 65, ["CISPO objective", "CISPO clipped importance weight"]),
    ("6", "§6.2.2", 67, ["per-sequence loss aggregation", "per-token loss aggregation",
                         "fixed-length loss aggregation"]),
    ("6", "§6.2.4", 70, ["learner/sampler ratio of truncated importance sampling",
                         "REINFORCE with truncated importance sampling",
                         "PPO with truncated importance sampling"]),
    ("6", "§6.2.5.1", 73, ["one-step PPO/GRPO surrogate"]),
    ("6", "§6.2.6", 74, ["policy-gradient loss plus a KL term"]),
    ("6", "§6.3.2", 75, ["n-step advantage estimates", "TD residual δ_t",
                         "generalised advantage estimate (GAE)"]),
    ("8", "§8", 78, ["KL-regularised RLHF objective"]),
    ("8", "§8.1.1", 79, ["DPO loss", "DPO implicit reward", "DPO gradient"]),
    ("8", "§8.1.2.1", 82, ["RLHF objective restated for the derivation",
                           "KL written as an expected log-ratio", "expectation split in two",
                           "sign flipped to a minimisation", "divided by β",
                           "partition function Z(x)", "target form with Z(x)",
                           "bracket of the objective", "log Z added and subtracted",
                           "terms regrouped", "Z(x) moved into the denominator",
                           "reward absorbed into the log", "KL to the reward-tilted reference",
                           "optimal policy π*"]),
    ("8", "§8.1.2.2", 96, ["Bradley-Terry preference probability", "log of the optimal policy",
                           "log π* expanded", "reward solved from log π*",
                           "reward from the optimal policy",
                           "Bradley-Terry model with the policy-based reward",
                           "Z(x)^β cancels", "preference as 1 / (1 + exp(a₂ − a₁))",
                           "preference as σ of policy log-ratios",
                           "DPO maximum-likelihood objective"]),
    ("8", "§8.1.2.3", 106, ["DPO gradient, first step", "DPO gradient by the chain rule",
                            "DPO gradient, final form"]),
    ("9", "§9.1.1", 109, ["prompt vector X", "completion matrix Y"]),
    ("9", "§9.1.2", 111, ["reward matrix R", "reward of one completion"]),
    ("9", "§9.1.2.1", 113, ["best completion per prompt S(R)", "chosen completions"]),
    ("9", "§9.1.2.2", 115, ["flattened reward matrix", "top-K prompt-completion pairs overall"]),
    ("9", "§9.1.2.3", 117, ["example reward matrix", "example: best completion of each prompt",
                            "example: per-prompt argmax", "example: per-prompt selection",
                            "example: top five pairs overall",
                            "example: flattened reward matrix", "example: top-five selection"]),
    ("9", "§9.3", 124, ["best-of-N rewards of one prompt", "best-of-N selection"]),
    ("15", "§15", 126, ["regularised reward", "KL-penalised reward"]),
    ("15", "§15.1", 128, ["KL divergence"]),
    ("15", "§15.1.2", 129, ["KL divergence as an expectation (sampled KL)"]),
    ("15", "§15.2.2", 130, ["SFT loss as a forward KL", "KL-regularised RL objective",
                            "KL-regularised objective as a minimisation",
                            "KL to the reward-tilted reference",
                            "optimal policy of the KL-regularised objective"]),
    ("15", "§15.2.3", 135, ["RL's razor: forgetting as a function of the KL"]),
    ("15", "§15.3.1", 136, ["RL objective with a regulariser", "PPO-ptx objective",
                            "DPO plus NLL loss", "DPO plus length-normalised NLL, written out"]),
    ("15", "§15.3.2", 140, ["margin loss (Llama 2)"]),
    ("A", "§A.1", 141, ["autoregressive factorisation", "language-modelling loss"]),
    ("A", "§A.2", 143, ["KL divergence (definition)"]),
    ("A", "§A.4", 144, ["RL objective over the state distribution",
                        "finite-horizon expected return J(π)"]),
    ("A", "§A.6", 146, ["knowledge-distillation loss"]),
)

BOOK_EQUATIONS: tuple[BookEquation, ...] = tuple(
    BookEquation(first + k, chapter, section, name)
    for chapter, section, first, names in _SECTIONS
    for k, name in enumerate(names)
)


# ----------------------------------------------------------------------------------------------
# Parsing citations: "eq. 57", "eqs. 44, 45 and 46", "eqs. 44-46", "eq. (123)"

_NUMBER = r"\(?\d{1,3}\)?"
_ITEM = rf"{_NUMBER}(?:\s*[-–]\s*{_NUMBER})?"  # one number or a range
_SEPARATOR = r"(?:\s*,\s*(?:and\s+|or\s+)?|\s+and\s+|\s+or\s+)"
# "eqs." may introduce a list; a singular "eq." takes one item, so that "eq. 3, 8 for ..."
# (a number after the citation) is not read as a list.
CITATION = re.compile(
    rf"\b(?:[Ee]qs\.\s*(?P<list>{_ITEM}(?:{_SEPARATOR}{_ITEM})*)"
    rf"|[Ee]q\.\s*(?P<single>{_ITEM}))(?!\d|\.\d)"
)
_RANGE = re.compile(rf"(?P<start>{_NUMBER})\s*[-–]\s*(?P<end>{_NUMBER})")
# A citation right after an author and year is the paper's equation, not the book's:
# "(Yu et al. 2025, eq. 13)".
_PAPER_BEFORE = re.compile(r"(?:et al\.|[A-Z][\w-]*)\s+(?:19|20)\d\d[a-z]?,\s*$")


class Citation(NamedTuple):
    text: str  # as written, e.g. "eqs. 44-46"
    numbers: tuple[int, ...]  # every equation it cites, ranges expanded
    ranges: tuple[str, ...]  # the ranges in it, e.g. ("44-46",)


def _number(text: str) -> int:
    return int(text.strip("()"))


def parse_citations(text: str) -> list[Citation]:
    """Every citation of the book's equations in ``text``, in order (a paper's equations,
    cited after its author and year, are left out)."""
    citations = []
    for match in CITATION.finditer(text):
        if _PAPER_BEFORE.search(text[max(0, match.start() - 60):match.start()]):
            continue
        items = match["list"] if match["list"] is not None else match["single"]
        numbers, ranges = [], []
        for item in re.split(_SEPARATOR, items):
            span = _RANGE.fullmatch(item.strip())
            if span:
                start, end = _number(span["start"]), _number(span["end"])
                numbers += range(start, end + 1) if start <= end else [start, end]
                ranges.append(f"{start}-{end}")
            else:
                numbers.append(_number(item))
        citations.append(Citation(_tidy(match[0]), tuple(dict.fromkeys(numbers)), tuple(ranges)))
    return citations


def _tidy(text: str) -> str:
    """The citation on one line, without the closing parenthesis of the sentence around it
    (``"(see eqs. 1-2)"`` matches as ``"eqs. 1-2)"``, shown as ``"eqs. 1-2"``)."""
    text = " ".join(text.split())
    while text.endswith(")") and text.count(")") > text.count("("):
        text = text[:-1]
    return text


def cited_numbers(text: str) -> set[int]:
    """The equation numbers cited anywhere in ``text``."""
    return {n for citation in parse_citations(text) for n in citation.numbers}


# ----------------------------------------------------------------------------------------------
# Scanning the package's docstrings


class Site(NamedTuple):
    path: str  # relative to the repository root, e.g. "rlhf_book/ch06_policy_gradients/losses.py"
    qualname: str  # "grpo_advantages", "RLConfig.method", or MODULE for the module docstring

    @property
    def name(self) -> str:
        """The name a test or a notebook would call it by."""
        return self.qualname.rsplit(".", 1)[-1]


class RangeCitation(NamedTuple):
    site: Site
    text: str


@dataclasses.dataclass
class PackageScan:
    citations: dict[int, list[Site]]  # equation -> where its citations are, in file order
    ranges: list[RangeCitation]  # citations written as a range ("eqs. 44-46")


def _docstrings(tree: ast.Module):
    """``(qualname, docstring)`` for the module, then every class and function in it."""
    yield MODULE, ast.get_docstring(tree)

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qualname = prefix + child.name
                yield qualname, ast.get_docstring(child)
                yield from visit(child, qualname + ".")

    yield from visit(tree, "")


def package_files(package_dir: pathlib.Path = PACKAGE_DIR) -> list[pathlib.Path]:
    """The library's source files: everything but :mod:`rlhf_book.textbook`, which is
    machinery (its checks and figures cite equations without implementing them)."""
    return [path for path in sorted(package_dir.rglob("*.py"))
            if "textbook" not in path.relative_to(package_dir).parts]


def scan_package(package_dir: pathlib.Path = PACKAGE_DIR) -> PackageScan:
    """Where the package's docstrings cite each equation."""
    scan = PackageScan({}, [])
    for path in package_files(package_dir):
        rel = path.relative_to(package_dir.parent).as_posix()
        tree = ast.parse(path.read_text(), filename=rel)
        for qualname, doc in _docstrings(tree):
            for citation in parse_citations(doc or ""):
                site = Site(rel, qualname)
                for number in citation.numbers:
                    sites = scan.citations.setdefault(number, [])
                    if site not in sites:
                        sites.append(site)
                found = RangeCitation(site, citation.text)
                if citation.ranges and found not in scan.ranges:
                    scan.ranges.append(found)
    return scan


# ----------------------------------------------------------------------------------------------
# Tests and notebooks


def _mentions(name: str, text: str) -> bool:
    """Whether ``text`` names ``name`` as a whole word (``grpo_advantages(`` or
    ``losses.grpo_advantages``, not ``grpo_advantages_ref``)."""
    return re.search(rf"\b{re.escape(name)}\b", text) is not None


def tests_naming(name: str, tests: dict[str, str]) -> list[str]:
    """The test files (of ``{path: source}``) that name ``name`` as a whole word."""
    return [path for path, source in tests.items() if _mentions(name, source)]


class NotebookSection(NamedTuple):
    notebook: str  # "notebooks/ch06_policy_gradients.ipynb"
    heading: str  # "§3 Group advantages: GRPO, Dr. GRPO, RLOO"
    text: str  # the source of its cells (markdown and code), outputs left out


_HEADING = re.compile(r"^#{1,3}\s+(?P<text>.+?)\s*#*\s*$")
_NUMBERED = re.compile(r"^(?P<number>\d+(?:\.\d+)*)\.?\s+(?P<title>.+)$")
_TRAILING_NOTE = re.compile(r"\s*\([^()]*\)\s*$")


def heading_label(heading: str) -> str:
    """``"4. GSPO and CISPO (book §6.1.7-6.1.8, eqs. 61-66)"`` -> ``"§4 GSPO and CISPO"``.

    The parenthesised note at the end goes: it repeats the book sections, which the index has
    in its own columns, and keeps the table narrow."""
    text = heading.strip()
    while _TRAILING_NOTE.search(text) and _TRAILING_NOTE.sub("", text):
        text = _TRAILING_NOTE.sub("", text)
    numbered = _NUMBERED.match(text)
    return f"§{numbered['number']} {numbered['title']}" if numbered else text


def notebook_sections(path: pathlib.Path, rel: str) -> list[NotebookSection]:
    """The notebook cut at its ``#``/``##``/``###`` markdown headings (a ``# comment`` in a code
    cell or in a fenced block of a markdown cell is no heading). Cells before the first heading
    form a section of their own, labelled "(top)"."""
    cells = json.loads(path.read_text())["cells"]
    sections: list[list] = [["(top)", []]]
    for cell in cells:
        in_fence = False
        for line in "".join(cell.get("source", "")).splitlines():
            if cell["cell_type"] == "markdown" and line.lstrip().startswith("```"):
                in_fence = not in_fence
            heading = (_HEADING.match(line)
                       if cell["cell_type"] == "markdown" and not in_fence else None)
            if heading:
                sections.append([heading_label(heading["text"]), []])
            sections[-1][1].append(line)
    return [NotebookSection(rel, label, "\n".join(lines)) for label, lines in sections if lines]


# ----------------------------------------------------------------------------------------------
# The index


@dataclasses.dataclass
class IndexRow:
    equation: BookEquation
    functions: list[Site]  # functions and classes whose docstring cites it
    modules: list[Site]  # modules whose overview cites it (and no function there)
    tests: list[str]
    notebook_sections: list[tuple[str, str]]  # ("notebooks/x.ipynb", "§4 Title")


def _read_tests(root: pathlib.Path) -> dict[str, str]:
    return {path.relative_to(root).as_posix(): path.read_text()
            for path in sorted((root / "tests").glob("*.py"))}


def _read_notebooks(root: pathlib.Path) -> list[NotebookSection]:
    return [section for path in sorted((root / "notebooks").glob("*.ipynb"))
            for section in notebook_sections(path, path.relative_to(root).as_posix())]


def index_rows(root: pathlib.Path | None = None, scan: PackageScan | None = None) -> list[IndexRow]:
    """One row per book equation, in equation order."""
    root = root or project_root()
    scan = scan or scan_package()
    tests, sections = _read_tests(root), _read_notebooks(root)
    cited_in = [cited_numbers(s.text) for s in sections]
    rows = []
    for equation in BOOK_EQUATIONS:
        sites = scan.citations.get(equation.number, [])
        functions = [s for s in sites if s.qualname != MODULE]
        modules = [s for s in sites if s.qualname == MODULE]
        names = sorted({s.name for s in functions})
        found_tests = sorted({t for name in names for t in tests_naming(name, tests)})
        found_sections = [(s.notebook, s.heading) for s, cited in zip(sections, cited_in)
                          if equation.number in cited
                          or any(_mentions(name, s.text) for name in names)]
        rows.append(IndexRow(equation, functions, modules, found_tests,
                             list(dict.fromkeys(found_sections))))
    return rows


def _cell(items: list[str], empty: str = "—") -> str:
    """A Markdown table cell holding ``items`` one per line (pipes escaped)."""
    return "<br>".join(item.replace("|", "\\|") for item in items) if items else empty


def _code(site: Site) -> str:
    return f"`{site.path}: {site.qualname}`"


def _notebook_cell(sections: list[tuple[str, str]]) -> str:
    """``notebooks/a.ipynb: §1 X; §4 Y`` per notebook, one notebook per line."""
    by_notebook: dict[str, list[str]] = {}
    for notebook, heading in sections:
        by_notebook.setdefault(notebook, []).append(heading)
    return _cell([f"{nb}: {'; '.join(headings)}" for nb, headings in by_notebook.items()])


def _implementation_cell(row: IndexRow) -> str:
    if row.functions:
        return _cell([_code(s) for s in row.functions])
    where = ", ".join(f"`{s.path}`" for s in row.modules)
    return "not implemented" + (f" (discussed in the module overview of {where})" if where else "")


def _chapter_heading(chapter: str) -> str:
    kind = "Appendix" if chapter.isalpha() else "Chapter"
    return f"## {kind} {chapter}: {CHAPTER_TITLES[chapter]}"


def render_index(root: pathlib.Path | None = None,
                 package_dir: pathlib.Path = PACKAGE_DIR) -> str:
    """The Markdown of ``chapters/EQUATIONS.md``."""
    scan = scan_package(package_dir)
    rows = index_rows(root, scan)
    implemented = sum(bool(r.functions) for r in rows)
    discussed = sum(bool(r.modules) and not r.functions for r in rows)
    out = [
        "# Equation index",
        "",
        "<!-- Generated by `rlhf-book chapters --sync`; do not edit by hand. -->",
        "",
        "Generated by `rlhf-book chapters --sync` from the package's docstrings, the tests and "
        "the notebooks; a test fails when it is stale. Every numbered equation of the book "
        "(the public English edition's numbering) has a row:",
        "",
        "* **Eq.** and **Section**: where the equation stands in the book;",
        "* **Implemented by**: the functions and classes whose docstring cites the equation "
        "(`module path: qualified name`), or *not implemented*;",
        "* **Tests**: the test files that name one of those functions;",
        "* **Notebook sections**: the notebook sections (numbered headings) whose cells call "
        "one of those functions or cite the equation.",
        "",
        f"**{len(rows)} equations, {implemented} implemented** "
        f"({discussed} more discussed only in a module overview, "
        f"{len(rows) - implemented - discussed} not cited anywhere in the package).",
    ]
    for chapter in dict.fromkeys(eq.chapter for eq in BOOK_EQUATIONS):
        out += ["", _chapter_heading(chapter), "",
                "| Eq. | Section | Equation | Implemented by | Tests | Notebook sections |",
                "|---:|---|---|---|---|---|"]
        for row in (r for r in rows if r.equation.chapter == chapter):
            eq = row.equation
            out.append(f"| {eq.number} | {eq.section} | {_cell([eq.name])} | "
                       f"{_implementation_cell(row)} | {_cell([f'`{t}`' for t in row.tests])} | "
                       f"{_notebook_cell(row.notebook_sections)} |")
    out += _range_footer(scan.ranges)
    return "\n".join(out) + "\n"


def _range_footer(ranges: list[RangeCitation]) -> list[str]:
    """The docstrings that cite equations as a range. The project cites each equation by its
    number ("eqs. 44, 45, 46"), so that a search for one number finds it; these are listed,
    not refused."""
    out = ["", "## Cited as a range", ""]
    if not ranges:
        return out + ["None: every docstring cites its equations one by one."]
    out += [f"{len(ranges)} docstring citations name a range of equations; the project's rule "
            "is to cite each equation individually:", ""]
    out += [f"* {_code(r.site)}: {r.text}" for r in ranges]
    return out


def index_path(root: pathlib.Path | None = None) -> pathlib.Path:
    return (root or project_root()) / INDEX_PATH


def write_index(path: pathlib.Path | None = None) -> bool:
    """Write ``chapters/EQUATIONS.md`` (or ``path``); ``True`` when its content changed."""
    path = pathlib.Path(path) if path is not None else index_path()
    text = render_index()
    if path.exists() and path.read_text() == text:
        return False
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return True


def index_is_current(path: pathlib.Path | None = None) -> bool:
    """Whether ``chapters/EQUATIONS.md`` (or ``path``) is what :func:`render_index` writes."""
    path = pathlib.Path(path) if path is not None else index_path()
    return path.exists() and path.read_text() == render_index()
