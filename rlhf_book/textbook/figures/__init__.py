"""The figure registry: every figure of the book's notebooks, regenerable without Jupyter.

A figure function computes its own data (or takes data a notebook already computed), draws
it, and returns a :class:`FigureResult`: the matplotlib figure plus the key numbers behind it.
``rlhf-book figures [chNN]`` calls every registered function with no arguments and writes
``figures/<name>.png`` and ``figures/manifest.json`` (the numbers, the caption, the chapter).
Notebooks call the same functions, so the PNGs and the notebooks show the same pictures.

Figures are built with ``matplotlib.figure.Figure`` (not ``pyplot``): no global state, no
figure left open, safe to call in a loop. A :class:`FigureResult` displays itself in Jupyter.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import json
import math
import pathlib
import time
from typing import Any, Callable

from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from rlhf_book.lm import tokenizer
from rlhf_book.textbook.catalog import CHAPTERS, get_chapter, project_root


@dataclasses.dataclass
class FigureResult:
    """A drawn figure and the numbers it shows (JSON-serialisable scalars and short lists)."""

    figure: Figure
    numbers: dict[str, Any]

    def _repr_png_(self) -> bytes:  # Jupyter shows the figure when a cell returns this
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        return buffer.getvalue()

@dataclasses.dataclass(frozen=True)
class FigureSpec:
    name: str
    chapter: str  # "ch00"
    caption: str
    function: Callable[..., FigureResult]

REGISTRY: dict[str, FigureSpec] = {}

def figure(name: str, chapter: str, caption: str):
    """Register a figure function under ``name`` (also the PNG's file name)."""

    def register(function):
        if name in REGISTRY and REGISTRY[name].function.__qualname__ != function.__qualname__:
            raise ValueError(f"figure name {name!r} is registered twice")
        REGISTRY[name] = FigureSpec(name, chapter, caption, function)
        return function

    return register

def _token_label(token_id: int) -> str:
    short = {tokenizer.BOS: "bos", tokenizer.SYSTEM: "sys", tokenizer.USER: "user",
             tokenizer.ASSISTANT: "asst", tokenizer.END: "end"}
    return short.get(token_id, {32: "\u2423", 10: "\u21b5"}.get(
        token_id, chr(token_id) if token_id < 256 else "?"))


def draw_token_cells(ax, ids, mask, row0: int, columns: int, face_on: str = "tab:orange") -> int:
    """Draw ``ids`` as a grid of cells from row ``row0``, masked tokens in ``face_on`` and
    special tokens in grey; returns the number of rows used (chapter 0's chat template and
    chapter 4's loss masks)."""
    for n, (token_id, m) in enumerate(zip(ids, mask)):
        r, c = divmod(n, columns)
        special = token_id >= tokenizer.N_BYTES
        face = face_on if m else ("0.82" if special else "white")
        ax.add_patch(Rectangle((c, -row0 - r - 1), 0.95, 0.9, facecolor=face, edgecolor="0.6",
                               lw=0.5))
        ax.text(c + 0.47, -row0 - r - 0.55, _token_label(token_id), ha="center", va="center",
                fontsize=5.5 if special else 8, family="monospace")
    return math.ceil(len(ids) / columns)


def finish_axes(ax, **kw):
    """Set ``ax``'s labels, limits, title... (``ax.set(**kw)``) and a light grid: the last line
    of most of the chapters' plots."""
    ax.set(**kw)
    ax.grid(alpha=0.3)


def load_all() -> dict[str, FigureSpec]:
    """Import every chapter's figure module (which registers its figures)."""
    for chapter in CHAPTERS:
        try:
            importlib.import_module(f"rlhf_book.textbook.figures.{chapter.key}")
        except ModuleNotFoundError as err:
            if err.name != f"rlhf_book.textbook.figures.{chapter.key}":
                raise
    return REGISTRY

def _jsonable(value):
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value

def write_figures(chapters=None, out_dir: pathlib.Path | None = None,
                  progress: Callable[[str], None] | None = None) -> dict[str, dict]:
    """Draw every registered figure of ``chapters`` (default all) into ``out_dir``
    (default ``figures/``); update ``manifest.json`` there. Returns the new manifest entries,
    each with the seconds it took (kept out of the manifest, so regenerating changes nothing)."""
    out_dir = pathlib.Path(out_dir or project_root() / "figures")
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = {get_chapter(c).short for c in chapters} if chapters else None
    manifest_path = out_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    entries, seconds = {}, {}
    for spec in load_all().values():
        if wanted and spec.chapter not in wanted:
            continue
        if progress:
            progress(spec.name)
        start = time.perf_counter()
        result = spec.function()
        png = out_dir / f"{spec.name}.png"
        tmp = png.with_suffix(".png.tmp")
        result.figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        tmp.replace(png)
        entries[spec.name] = {
            "chapter": spec.chapter,
            "file": png.name,
            "caption": spec.caption,
            "numbers": _jsonable(result.numbers),
        }
        seconds[spec.name] = round(time.perf_counter() - start, 1)
    manifest.update(entries)
    tmp = manifest_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(dict(sorted(manifest.items())), indent=2) + "\n")
    tmp.replace(manifest_path)
    return {name: {**entry, "seconds": seconds[name]} for name, entry in entries.items()}
