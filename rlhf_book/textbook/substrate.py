"""The small models the notebooks and figures share, trained once and kept on disk.

Chapters 4, 5, 6, 8 and 9 start from chapter 0's pretrained small GPT, and chapters 6, 8 and 9
from chapter 4's SFT model. Training them takes about a minute on a laptop CPU; without a cache
every notebook would pay that minute again. Both are deterministic functions of their settings
and of the library's code, so each is stored once under a **fingerprint** of everything that
determines it: the settings, the source text of the modules that train it (the substrate
``rlhf_book/lm`` and ``rlhf_book/data`` always, plus the chapter's module), the JAX version and
the backend. Change any of these and the fingerprint changes, so a stale model is never loaded;
it is trained again and stored under the new fingerprint.

The chapter that teaches a model trains it in the open (chapter 0's notebook pretrains, chapter
4's fine-tunes) and stores the result; the later chapters load it, or train it themselves when
it is missing. Files are the library's own checkpoints (msgpack, no pickle, written atomically:
two notebooks racing to store the same model are safe).

Where: ``$RLHF_BOOK_CACHE`` if set; else ``runs/cache/`` in a source checkout (``make clean``
removes it); else ``~/.cache/rlhf-book``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Any, Callable

import jax
import numpy as np

import rlhf_book
from rlhf_book.lm import train

CACHE_ENV = "RLHF_BOOK_CACHE"
PACKAGE_DIR = pathlib.Path(rlhf_book.__file__).resolve().parent
SUBSTRATE_SOURCES = ("lm", "data")


def cache_dir() -> pathlib.Path:
    """The folder the models are stored in (see the module docstring)."""
    if os.environ.get(CACHE_ENV):
        return pathlib.Path(os.environ[CACHE_ENV]).expanduser()
    checkout = PACKAGE_DIR.parent
    if (checkout / "pyproject.toml").is_file():
        return checkout / "runs" / "cache"
    return pathlib.Path.home() / ".cache" / "rlhf-book"


def source_text(*names: str) -> str:
    """The source of ``rlhf_book/<name>`` for each name (a module file or a package folder),
    concatenated in a fixed order: what a fingerprint hashes to notice a code change."""
    chunks = []
    for name in names:
        path = PACKAGE_DIR / name
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
        if not files or not all(f.is_file() for f in files):
            raise ValueError(f"no module or package rlhf_book/{name}")
        chunks += [f"# {f.relative_to(PACKAGE_DIR)}\n{f.read_text()}" for f in files]
    return "\n".join(chunks)


def _jsonable(part: Any) -> Any:
    if dataclasses.is_dataclass(part) and not isinstance(part, type):
        return {type(part).__name__: dataclasses.asdict(part)}
    if isinstance(part, np.ndarray):
        return hashlib.sha256(part.tobytes()).hexdigest()
    return part


def fingerprint(*parts, sources: tuple[str, ...] = ()) -> str:
    """A short hash of ``parts`` (JSON-able values, dataclass configs, arrays), of the source of
    the substrate and of ``sources`` (module names under ``rlhf_book``), of the JAX version and
    of the default backend."""
    h = hashlib.sha256()
    for part in (*parts, jax.__version__, jax.default_backend()):
        h.update(json.dumps(_jsonable(part), sort_keys=True, default=str).encode())
    h.update(source_text(*SUBSTRATE_SOURCES, *sources).encode())
    return h.hexdigest()[:16]


def path_for(name: str, key: str) -> pathlib.Path:
    return cache_dir() / f"{name}-{key}.msgpack"


def save(name: str, key: str, params, history: dict | None = None) -> pathlib.Path:
    """Store ``params`` (and a training ``history`` of 1-D arrays) as ``name`` under ``key``."""
    meta = {"name": name, "key": key,
            "history": {k: np.asarray(v).tolist() for k, v in (history or {}).items()}}
    return train.save_checkpoint(path_for(name, key), params, meta)


def load(name: str, key: str):
    """``(params, history)`` stored as ``name`` under ``key``, or ``None`` when there is none.
    An unreadable file (say, from an older format) counts as missing."""
    path = path_for(name, key)
    if not path.is_file():
        return None
    try:
        params, meta = train.load_checkpoint(path)
    except ValueError:
        return None
    return params, {k: np.asarray(v) for k, v in meta.get("history", {}).items()}


def cached(name: str, key: str, compute: Callable[[], tuple[Any, dict]]):
    """``(params, history)``: loaded when stored under ``key``, else ``compute()``d and stored."""
    hit = load(name, key)
    if hit is not None:
        return hit
    params, history = compute()
    save(name, key, params, history)
    return params, history
