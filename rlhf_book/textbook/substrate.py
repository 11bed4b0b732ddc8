"""The small models the notebooks and figures share, trained once and kept on disk.

Chapters 4, 5, 6, 8 and 9 start from chapter 0's pretrained small GPT
(:func:`pretrained_small`), and chapters 6, 7, 8, 9 and 15 from chapter 4's SFT model
(:func:`sft_small`); chapter 7 also reads chapter 5's reward model (:func:`reward_model_small`).
All use :data:`SMALL_CONFIG`. The recipes (settings, data) live in the
chapters' experiments (:mod:`rlhf_book.ch00_mini_gpt`,
:mod:`rlhf_book.ch04_instruction_tuning.experiments`); this module only caches their results.
Training them takes about a minute on a laptop CPU; without a cache every notebook would pay
that minute again. Both are deterministic functions of their settings
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
import functools
import hashlib
import json
import os
import pathlib
from typing import Any, Callable

import jax
import numpy as np

import rlhf_book
from rlhf_book import ch00_mini_gpt as ch00
from rlhf_book.ch04_instruction_tuning import experiments as ch04_experiments
from rlhf_book.ch05_reward_models import experiments as ch05_experiments
from rlhf_book.ch14_overoptimization import experiments as ch14_experiments
from rlhf_book.lm import gpt, train

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
    """Store ``params`` (and a ``history``: arrays of numbers or strings, such as a training
    curve) as ``name`` under ``key``."""
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


# ----------------------------------------------------------------------------------------------
# The shared small models

SMALL_CONFIG = gpt.get_config("small")


def pretrain_key() -> str:
    """The fingerprint of chapter 0's pretraining run: its settings and the source of the
    substrate and of chapter 0's experiments (which build its data and run it)."""
    return fingerprint(gpt.get_config(ch00.PRETRAIN_MODEL), ch00.PRETRAIN_CONFIG,
                       ch00.PRETRAIN_DOCUMENTS, ch00.PRETRAIN_EVAL_FRACTION, ch00.PRETRAIN_SEED,
                       sources=("ch00_mini_gpt",))


def sft_key() -> str:
    """The fingerprint of chapter 4's prompt-masked SFT run: chapter 0's model, the SFT
    settings, and the source of the substrate and of chapters 0 and 4."""
    ex = ch04_experiments
    return fingerprint(pretrain_key(), ex.SFT_MODEL, ex.SFT_CONFIG, ex.N_HELDOUT_DEMONSTRATIONS,
                       ex.SFT_SEED, sources=("ch00_mini_gpt", "ch04_instruction_tuning"))


@functools.lru_cache(maxsize=1)
def pretrained_small():
    """Chapter 0's pretrained small GPT (:func:`rlhf_book.ch00_mini_gpt.pretrain_small`):
    ``(params, history)``. Loaded when chapter 0's notebook (or an earlier call) stored it,
    else trained (about a minute on a laptop CPU) and stored."""
    return cached("pretrained_small", pretrain_key(), ch00.pretrain_small)


def store_pretrained_small(params, history) -> None:
    """Store a run of chapter 0's pretraining (the notebook's own) for the later chapters."""
    save("pretrained_small", pretrain_key(), params, history)


@functools.lru_cache(maxsize=1)
def sft_small():
    """Chapter 4's prompt-masked SFT model of the small GPT
    (:func:`rlhf_book.ch04_instruction_tuning.experiments.run_sft` from
    :func:`pretrained_small`): the policy chapters 6, 8, 9 and 15 start from. Loaded when
    chapter 4's notebook (or an earlier call) stored it, else trained and stored."""
    def compute():
        params, _ = ch04_experiments.run_sft(pretrained_small()[0], True, heldout_loss=False)
        return params, {}
    return cached("sft_small", sft_key(), compute)[0]


def store_sft_small(params) -> None:
    """Store the prompt-masked SFT model (the notebook's own run) for the later chapters."""
    save("sft_small", sft_key(), params)


def reward_model_key() -> str:
    """The fingerprint of chapter 5's reward model: the SFT model it starts from, its settings,
    and the source of the substrate and of chapters 0, 4 and 5."""
    ex = ch05_experiments
    return fingerprint(sft_key(), ex.RM_MODEL, ex.RM_CONFIG, ex.RM_SEED,
                       sources=("ch00_mini_gpt", "ch04_instruction_tuning", "ch05_reward_models"))


@functools.lru_cache(maxsize=1)
def reward_model_small():
    """Chapter 5's reward model of the small GPT, the pipeline's recipe
    (:func:`rlhf_book.ch05_reward_models.experiments.rm_run` from :func:`sft_small` on its
    training pairs): its parameters. Loaded when stored, else trained (about 20 s) and stored."""
    def compute():
        run = ch05_experiments.rm_run(sft_small(), {"train": ch05_experiments.rm_datasets()["train"]},
                                      SMALL_CONFIG)
        return run.params, {}
    return cached("reward_model_small", reward_model_key(), compute)[0]


def rl_overoptimisation_key() -> str:
    """The fingerprint of chapter 14's RL runs against chapter 5's reward model: the reward
    model and SFT model they start from, chapter 14's RL settings, and the source of chapters
    6 and 14."""
    ex = ch14_experiments
    return fingerprint(reward_model_key(), ex.FRONTIER_CONFIG, ex.FRONTIER_BETAS,
                       ex.FRONTIER_SEEDS, ex.FRONTIER_STEPS, ex.FRONTIER_QUESTIONS,
                       sources=("ch00_mini_gpt", "ch04_instruction_tuning", "ch05_reward_models",
                                "ch06_policy_gradients", "ch14_overoptimization"))


@functools.lru_cache(maxsize=1)
def rl_overoptimisation_small() -> dict:
    """Chapter 14's RL runs (:func:`rlhf_book.ch14_overoptimization.experiments.frontier_runs`)
    from :func:`sft_small` against :func:`reward_model_small`, KL by k1: what
    :func:`frontier_runs` returns, with the final parameters. Loaded when stored, else run
    (about two minutes on a 2-core CPU) and stored."""
    ex = ch14_experiments

    def compute():
        runs = ex.frontier_runs(sft_small(), ex.rm_proxy(reward_model_small()))
        return runs["params"], ex.runs_to_arrays(runs)
    params, arrays = cached("rl_overoptimisation_small", rl_overoptimisation_key(), compute)
    return ex.runs_from_arrays(arrays, params)
