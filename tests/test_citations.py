"""Every text a reader sees cites only what a reader can open (design §4b).

The project cites the book's public English edition by chapter, section, equation, figure and
table, lecture notes by title and section, papers by author and year. It never names the private
material it was written from: seed file names, paths into a ``shared/`` folder, "the reference
notes", line numbers of a translation ("line 1234 of", "L1234", "lines 10-20") or the codes of
an inventory (W4, E38, T8.2, C7 ...: one capital letter and a number, standing alone).

Scanned: the README, the chapter guides, the notebooks (markdown, code and text outputs; image
data is skipped), the library's docstrings, comments and string literals, and the exercise
stubs. Python is read with ``tokenize`` so that names in code (a timer ``T0``) are not text.

The few true tokens that look like codes are allowed one by one, each by the phrase around it
and the reason (``ALLOWED``); nothing is skipped by file.
"""

from __future__ import annotations

import io
import json
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (name, pattern): what must never appear.
FORBIDDEN = [
    ("a seed file name", re.compile(r"\bseeds?/|\b\d{3}_[0-9a-f]{8,}(?:\.txt)?\b")),
    ("a path into shared/", re.compile(r"(?<![\w-])shared/")),
    ("'the reference notes'", re.compile(r"\breference\s+notes\b", re.IGNORECASE)),
    ("a line number of a translation",
     re.compile(r"\blines? \d+\s*(?:of\b|[-–]\s*\d+)|\bL\d+(?:\s*[-–]\s*L?\d+)?\b")),
    # One capital letter of an inventory and a number (with sub-numbers), standing alone: not
    # part of a longer word or number (A100, MiniMax-M1, 3.C7), not a decimal after it.
    ("an inventory code", re.compile(r"(?<![\w.\-/])[CDEFSTWX]\d+(?:\.\d+)*(?![\w]|\.\d)")),
]

# (file glob, phrase that contains an allowed look-alike, why it is not a citation). The phrase is
# removed from the text before the scan, so the same token anywhere else is still caught.
ALLOWED = [
    ("*", re.compile(r"noqa: ?[A-Z]+\d+(?:,\s*[A-Z]+\d+)*"), "flake8 rule codes in a noqa comment"),
    ("*", re.compile(r"""(?<![\w])["']C\d["']"""), "matplotlib's colour-cycle names ('C0', 'C3')"),
    ("*ch05_reward_models*", re.compile(r"\bS[1-6]\b|S\{k \+ 1"),
     "S1-S6 name the six preference pairs of the lesson, printed as such in chapter 5's notebook"),
    ("*ch15_regularization*", re.compile(r"\bD2\b"),
     "D2 = E[(log pi - log pi_ref)^2 / 2], the quantity whose gradient k2 gives"),
]


def _python_text(source: str) -> str:
    """The comments and string literals of Python ``source``, in place: every other character is
    blanked, so line numbers stay those of the file (falls back to all of it if it does not parse)."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return source
    lines = source.splitlines()
    kept = [[" "] * len(line) for line in lines]
    text_types = {tokenize.COMMENT, tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", -1)}
    for tok in tokens:
        if tok.type not in text_types:
            continue
        (row, col), (end_row, end_col) = tok.start, tok.end
        for r in range(row, end_row + 1):
            start = col if r == row else 0
            stop = end_col if r == end_row else len(lines[r - 1])
            kept[r - 1][start:stop] = lines[r - 1][start:stop]
        if tok.type == tokenize.STRING and "f" in tok.string.split(tok.string[-1])[0].lower():
            _blank_replacement_fields(kept, tok)
    return "\n".join("".join(chars) for chars in kept)


def _blank_replacement_fields(kept: list[list[str]], tok: tokenize.TokenInfo) -> None:
    """Blank the ``{expression}`` fields of an f-string token (before Python 3.12 the whole
    f-string is one STRING token, expressions included: ``{time.perf_counter() - T0:.0f}``)."""
    (row, col) = tok.start
    text = tok.string.replace("{{", "  ").replace("}}", "  ")
    for field in re.finditer(r"\{[^{}]*\}", text):
        for offset in range(field.start(), field.end()):
            before = tok.string[:offset]
            r = row + before.count("\n")
            c = (col + offset) if r == row else offset - before.rfind("\n") - 1
            kept[r - 1][c] = " "


def _notebook_texts(path: Path):
    """(where, text) for every cell of a notebook: markdown, code, and text outputs."""
    notebook = json.loads(path.read_text())
    for number, cell in enumerate(notebook["cells"]):
        source = "".join(cell["source"])
        where = f"{path.relative_to(ROOT)} cell {number}"
        if cell["cell_type"] == "code":
            code = "\n".join(line for line in source.splitlines()
                             if not line.lstrip().startswith(("%", "!")))
            yield f"{where} (code)", _python_text(code)
            for output in cell.get("outputs", []):
                if "text" in output:
                    yield f"{where} (output)", "".join(output["text"])
                for mime, data in output.get("data", {}).items():
                    if mime.startswith("text/"):
                        yield f"{where} (output {mime})", "".join(data)
        else:
            yield where, source


def _texts():
    """(file glob key, where, text) for everything a reader of the project sees."""
    for path in [ROOT / "README.md", *sorted((ROOT / "chapters").glob("*.md"))]:
        yield path.name, str(path.relative_to(ROOT)), path.read_text()
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for where, text in _notebook_texts(path):
            yield path.name, where, text
    for path in [*sorted((ROOT / "rlhf_book").rglob("*.py")), *sorted((ROOT / "exercises").glob("*.py"))]:
        yield str(path.relative_to(ROOT)), str(path.relative_to(ROOT)), _python_text(path.read_text())


def find_citation_problems(name: str, text: str) -> list[tuple[int, str, str]]:
    """(line, what, matched text) for every forbidden citation in ``text`` of file ``name``."""
    from fnmatch import fnmatch

    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    lines = text.splitlines()
    for glob, phrase, _why in ALLOWED:
        if fnmatch(name, glob):
            lines = [phrase.sub(" ", line) for line in lines]
    problems = []
    for number, line in enumerate(lines, start=1):
        # A phrase may wrap onto the next line ("the reference\nnotes"): scan the line joined to
        # the next one, and keep the matches that start on this line.
        window = line + " " + (lines[number] if number < len(lines) else "")
        for what, pattern in FORBIDDEN:
            problems += [(number, what, m.group()) for m in pattern.finditer(window)
                         if m.start() < len(line)]
    return problems


@pytest.mark.parametrize("text, what", [
    ("see seeds/000_8c14683bcc2aa1d9.txt", "a seed file name"),
    ("as 002_79a87e9cfb76830f says", "a seed file name"),
    ("in shared/reference/concordance.md", "a path into shared/"),
    ("the Reference Notes say", "'the reference notes'"),
    ("The reference\nnotes' set-up", "'the reference notes'"),
    ("line 1234 of the translation", "a line number of a translation"),
    ("(L2039-L2049)", "a line number of a translation"),
    ("lines 10-20", "a line number of a translation"),
    ("the case table W3", "an inventory code"),
    ("errata E38 and E1.", "an inventory code"),
    ("table T8.2 shows", "an inventory code"),
    ("code C7", "an inventory code"),
    ("exercise X25", "an inventory code"),
])
def test_the_scan_finds_each_kind_of_private_citation(text, what):
    assert what in {found for _, found, _ in find_citation_problems("ch06_policy_gradients.md", text)}


@pytest.mark.parametrize("name, text", [
    ("ch04_instruction_tuning.md", "evaluate = lambda s: 0  # noqa: E731"),
    ("report.py", 'colors=("C0", "C3")'),
    ("ch03_training_overview.md", "DeepSeek R1, MiniMax-M1, an A100, GPT-4, Qwen2.5-Math-1.5B"),
    ("ch06_policy_gradients.md", "the book (§6.1.6, eq. 57), Figure 12, Table 3, the lecture notes "
                                 "'RLHF: Reward Model + PPO', §7.3; Schulman 2020; v0.4.10"),
    ("ch05_reward_models.md", "the two training pairs that prefer the longer answer (S2, S6)"),
    ("ch15_regularization.md", "grad D2 - grad KL(pi || pi_ref)"),
])
def test_the_scan_lets_true_text_through(name, text):
    assert find_citation_problems(name, text) == []


def test_an_allowed_token_is_allowed_only_where_it_is_defined():
    assert find_citation_problems("ch06_policy_gradients.md", "pairs S2 and S6")
    assert find_citation_problems("ch06_policy_gradients.md", "grad D2")
    assert find_citation_problems("report.py", "C0 as a code")


def test_python_is_read_for_its_text_only():
    source = 'T0 = time.perf_counter()  # see W4\nx = "E38"\nprint(f"ran {time.time() - T0:.0f} s, T8.2")\n'
    assert "T0" not in _python_text(source)
    assert [found for _, _, found in find_citation_problems("a.py", _python_text(source))] == ["W4", "E38", "T8.2"]


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="text"):
        find_citation_problems("a.md", None)


def test_no_reader_facing_text_cites_what_a_reader_cannot_open():
    problems = [f"{where}:{line}: {what} {found!r}"
                for name, where, text in _texts()
                for line, what, found in find_citation_problems(name, text)]
    assert not problems, "\n".join(problems)
