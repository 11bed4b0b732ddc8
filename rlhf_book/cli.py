"""The ``rlhf-book`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import pathlib
import sys

from rlhf_book import __version__


def _pipeline(args) -> int:
    from rlhf_book.pipeline import PipelineConfig, run_pipeline

    config = PipelineConfig.quick() if args.quick else PipelineConfig()
    overrides = {k: v for k, v in {"model": args.model, "seed": args.seed,
                                   "out_dir": args.out}.items() if v is not None}
    train_overrides = {k: v for k, v in {"steps": args.steps,
                                         "batch_size": args.batch_size}.items() if v is not None}
    if train_overrides:
        overrides["pretrain"] = dataclasses.replace(config.pretrain, **train_overrides)
    config = dataclasses.replace(config, **overrides)
    run_pipeline(config, fresh=args.fresh, progress=not args.no_progress, devices=args.devices,
                 fsdp=args.fsdp)
    return 0


def _load_model(spec: str):
    """``(name, params)`` for ``eval``: ``pretrained`` or ``sft`` (the shared small models of
    chapters 0 and 4, trained on first use), or a checkpoint file, optionally named
    ``NAME=PATH``."""
    from rlhf_book.lm import train
    from rlhf_book.textbook import substrate

    name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
    if path == "pretrained":
        return name or path, substrate.pretrained_small()[0]
    if path == "sft":
        return name or path, substrate.sft_small()
    file = pathlib.Path(path)
    if not file.is_file():
        raise ValueError(f"checkpoint must be 'pretrained', 'sft' or a checkpoint file, got "
                         f"{path!r} (no such file)")
    params, _ = train.load_checkpoint(file)
    return name or file.name.split("-")[0], params


def _eval(args) -> int:
    from rlhf_book.ch16_evaluation import harness

    loaded = [_load_model(spec) for spec in args.checkpoints]
    models = dict(loaded)
    if len(models) < len(loaded):
        raise ValueError("checkpoints must have different names; name them NAME=PATH, got "
                         + ", ".join(name for name, _ in loaded))
    configs = {name: harness.infer_config(p) for name, p in models.items()}
    # the reference named again among the models is the same object: its row then has no gain
    by_spec = dict(zip(args.checkpoints, models.values()))
    reference = (by_spec.get(args.reference) or _load_model(args.reference)[1]
                 if args.reference else None)
    if reference is not None:
        configs["reference"] = harness.infer_config(reference)
    if len(set(configs.values())) > 1:
        raise ValueError("checkpoints must all be of one model size, got "
                         + ", ".join(f"{n}: d_model {c.d_model}" for n, c in configs.items()))
    rows = harness.evaluate(models, next(iter(configs.values())), reference=reference,
                            suites=args.suites, questions=args.questions or None,
                            samples=args.samples, seed=args.seed)
    print(harness.format_table(rows))
    if args.json:
        args.json.write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=1))
        print(f"rows written to {_relative(args.json)}")
    return 0


def _relative(path) -> str:
    """``path`` relative to the working directory when it lies below it."""
    path = pathlib.Path(path).resolve()
    try:
        return str(path.relative_to(pathlib.Path.cwd()))
    except ValueError:
        return str(path)


def _chapters(names):
    from rlhf_book.textbook.catalog import CHAPTERS, get_chapter

    return [get_chapter(n) for n in names] if names else list(CHAPTERS)


def _grade(args) -> int:
    from rlhf_book.textbook import grading

    timeout = grading.validate_timeout(args.timeout)  # a ValueError: one line, exit 2
    memory = args.memory_limit
    if not 0.25 <= memory < float("inf"):  # NaN fails too
        raise ValueError(f"--memory-limit must be a finite number of GiB >= 0.25, got {memory}")
    chapters = [c for c in _chapters(args.chapters) if c.exercises]
    where = ("the library's reference solutions" if args.impl == "reference" else
             ", ".join(_relative(c.stub_file(args.exercises_dir)) for c in chapters))
    print(f"grading {where}\n")
    print(f"  {'id':<6}{'':<5}{'exercise':<48}{'status':<12}{'time':>7}")
    colour = sys.stdout.isatty() and not args.no_color

    def show(result):
        print(grading.format_row(result, colour), flush=True)

    results = grading.grade(chapters, args.impl, args.exercises_dir, timeout, on_result=show,
                            memory_limit=int(memory * 2**30))
    print("\n" + grading.format_summary(results))
    return 0 if all(r.status == grading.PASSED for r in results) else 1


def _exercises(args) -> int:
    from rlhf_book.textbook import stubs

    chapters = [c for c in _chapters(args.chapters) if c.exercises]
    folder = args.exercises_dir
    where = f" --exercises-dir {_relative(folder)}" if folder else ""  # in the advice we print
    if args.diff:
        for chapter in chapters:
            path = chapter.stub_file(folder)
            old = path.read_text().splitlines(keepends=True) if path.exists() else []
            sys.stdout.writelines(difflib.unified_diff(
                old, stubs.stub_source(chapter).splitlines(keepends=True),
                f"{_relative(path)} (yours)", f"{_relative(path)} (the new stub)"))
        return 0
    if args.check:
        stale = 0
        for chapter in chapters:
            path, new = chapter.stub_file(folder), stubs.stub_source(chapter)
            if path.exists() and path.read_text() == new:
                continue
            stale += 1
            name = _relative(path)
            if not path.exists():
                print(f"missing: {name} (`rlhf-book exercises {chapter.short}{where}` creates it)")
            elif not stubs.is_edited(path.read_text()):
                print(f"stale: {name}, untouched since it was generated: `rlhf-book exercises "
                      f"{chapter.short}{where}` regenerates it (it never overwrites a file you "
                      "edited)")
            else:
                print(f"stale: {name} has your edits and the library's stub changed; it is kept "
                      f"as it is. `rlhf-book exercises {chapter.short}{where} --diff` shows what the "
                      "new stub changes, to copy into your file by hand")
        return 1 if stale else 0
    for path, what in stubs.write_stubs(chapters, folder, force=args.force).items():
        print(f"{_relative(path)}: {what}")
    return 0


def _chapter_table(args) -> int:
    from rlhf_book.textbook import equations, guides, notebooks

    if args.sync:
        changed = guides.sync()
        for path in changed:
            print(f"synced {_relative(path)}")
        print(f"{len(changed)} guide(s) changed")
        for path in notebooks.sync_all_your_turn():
            print(f"synced the 'Your turn' table of {_relative(path)}")
        if equations.write_index():
            print(f"synced {equations.INDEX_PATH}")
        return 0
    print(f"{'chapter':<24}{'notebook':<10}{'guide':<8}{'exercises':<11}{'run time':>8}")
    for chapter in _chapters(args.chapters):
        nb, guide = chapter.notebook(), chapter.guide()
        seconds = notebooks.recorded_seconds(nb) if nb.exists() else None
        print(f"{chapter.key:<24}{'yes' if nb.exists() else '-':<10}"
              f"{'yes' if guide.exists() else '-':<8}{len(chapter.exercises):<11}"
              f"{f'{seconds:.0f} s' if seconds else '-':>8}")
    problems = guides.stale()
    for line in problems:
        print(f"stale excerpts or solutions in {line} (run `rlhf-book chapters --sync`)")
    for path in notebooks.sync_all_your_turn(write=False):
        problems.append(str(path))
        print(f"stale 'Your turn' table in {_relative(path)} (run `rlhf-book chapters --sync`)")
    if not equations.index_is_current():
        problems.append(str(equations.INDEX_PATH))
        print(f"stale {equations.INDEX_PATH} (run `rlhf-book chapters --sync`)")
    return 1 if problems else 0


def _figures(args) -> int:
    from rlhf_book.textbook import figures

    if args.list:
        for spec in figures.load_all().values():
            print(f"{spec.name:<28}{spec.chapter:<6}{spec.caption}")
        return 0
    chapters = [c.short for c in _chapters(args.chapters)] if args.chapters else None
    entries = figures.write_figures(chapters, args.out,
                                    progress=lambda name: print(f"drawing {name} ...", flush=True))
    out = _relative(args.out or figures.project_root() / "figures")
    for name, entry in entries.items():
        print(f"  {out}/{entry['file']}  ({entry['seconds']} s)")
    print(f"{len(entries)} figure(s) written; numbers in {out}/manifest.json")
    return 0


def _notebooks(args) -> int:
    from rlhf_book.textbook import notebooks

    paths = ([path for c in _chapters(args.chapters) for path in c.notebooks()] if args.chapters
             else notebooks.notebook_paths())
    failed = 0
    for path in paths:
        if not path.exists():
            print(f"{path.name}: no such notebook")
            failed += 1
            continue
        print(f"{path.name}: running ...", flush=True)
        try:
            seconds = notebooks.execute(path, write=not args.check)
        except Exception as err:  # show the failing cell, go on with the others
            print(f"{path.name}: FAILED\n{err}")
            failed += 1
            continue
        print(f"{path.name}: ran in {seconds:.0f} s" + ("" if args.check else ", outputs saved"))
    return 1 if failed else 0


def _bench_suite(args) -> int:
    import json

    from rlhf_book.textbook import bench_suite

    models = args.models.split(",") if args.models else [m.name for m in bench_suite.SUITE]
    unknown = sorted(set(models) - set(bench_suite.MODELS))
    if unknown:
        raise ValueError(f"--models must name sizes among {sorted(bench_suite.MODELS)}, got "
                         f"{unknown}")
    result = bench_suite.run_suite(models, bf16=args.bf16, rl=not args.no_rl_step)
    print()
    print(bench_suite.format_suite(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        print(f"results written to {_relative(args.json)}")
    return 0


def _bench(args) -> int:
    import json

    from rlhf_book.textbook import bench

    if args.what == "suite":
        return _bench_suite(args)
    rl = bench.RLStepBench().rl
    overrides = {k: v for k, v in {"prompts_per_step": args.prompts, "group_size": args.group_size,
                                   "max_new_tokens": args.new_tokens}.items() if v is not None}
    config = bench.RLStepBench(model=args.model, rl=dataclasses.replace(rl, **overrides),
                               repeats=args.repeats)
    results = [bench.rl_step(config)]
    python = None if args.no_reference else bench.reference_python(args.reference_python)
    if python is None and not args.no_reference:
        print("TRL side skipped: torch, transformers, trl and datasets are not importable here "
              "(pip install torch transformers trl datasets, or pass --reference-python)")
    elif python is not None:
        results.append(bench.trl_rl_step(results[0], python, steps=args.reference_steps))
    print()
    print(bench.format_table(results))
    print("\nmedians over timed steps after warm-up; the JAX step excludes its one-time compile; "
          "TRL's step includes HF generate (KV cache, eager PyTorch)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        print(f"results written to {_relative(args.json)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf-book",
        description="The executable companion to the RLHF book: the whole recipe on a laptop CPU.",
        epilog="quick start: `rlhf-book pipeline`; exercises: `rlhf-book grade ch00`",
    )
    parser.add_argument("--version", action="version", version=f"rlhf-book {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("pipeline", help="run the RLHF recipe end to end on the synthetic world "
                                        "(pretraining, SFT, reward model, RL, DPO, best-of-N; "
                                        "cached checkpoints)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny model for a few steps: a seconds-long smoke run")
    p.add_argument("--model", choices=["tiny", "small", "mini"], help="model size (default mini)")
    p.add_argument("--steps", type=int, help="pretraining steps")
    p.add_argument("--batch-size", type=int, help="pretraining batch size")
    p.add_argument("--seed", type=int, help="seed of the data and the model (default 0)")
    p.add_argument("--out", help="folder for checkpoints and figures (default runs/)")
    p.add_argument("--fresh", action="store_true", help="retrain even if a checkpoint is cached")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--devices", type=int,
                   help="train on the first N devices, data-parallel (default: all of them)")
    p.add_argument("--fsdp", type=int, default=1,
                   help="split the parameters and optimizer state over K of those devices "
                        "(FSDP; default 1: every device holds the whole model)")
    p.set_defaults(func=_pipeline)

    chapter_help = "chapters, e.g. ch00 (default: all)"
    p = sub.add_parser("grade", help="grade the exercises: a table of passed / failing / "
                                     "not started / timed out, with hints")
    p.add_argument("chapters", nargs="*", help=chapter_help)
    p.add_argument("--impl", choices=["exercises", "reference"], default="exercises",
                   help="grade your exercises/ (default) or the library's reference solutions")
    p.add_argument("--exercises-dir", type=pathlib.Path,
                   help="folder holding the chNN_*.py files to grade (default exercises/)")
    p.add_argument("--timeout", type=float, help="seconds per exercise (default 60)")
    p.add_argument("--memory-limit", type=float, default=8.0, metavar="GIB",
                   help="address space of the process that runs your code, in GiB (default 8)")
    p.add_argument("--no-color", action="store_true", help="no colours in the table")
    p.set_defaults(func=_grade)

    p = sub.add_parser("exercises", help="regenerate the exercise stubs in exercises/ from the "
                                         "library (never overwrites a stub you edited)")
    p.add_argument("chapters", nargs="*", help=chapter_help)
    p.add_argument("--force", action="store_true",
                   help="overwrite stubs even if edited (your solutions are lost)")
    p.add_argument("--check", action="store_true", help="only report stale stubs (exit 1)")
    p.add_argument("--diff", action="store_true",
                   help="show how the new stubs differ from your files; change nothing")
    p.add_argument("--exercises-dir", type=pathlib.Path,
                   help="folder of the chNN_*.py files (default exercises/)")
    p.set_defaults(func=_exercises)

    p = sub.add_parser("chapters", help="list the chapters; check or --sync the code excerpts "
                                        "and folded solutions of the chapter guides and "
                                        "chapters/EQUATIONS.md")
    p.add_argument("chapters", nargs="*", help=chapter_help)
    p.add_argument("--sync", action="store_true",
                   help="rewrite the guides' excerpts, their folded solutions and the equation "
                        "index from the source")
    p.set_defaults(func=_chapter_table)

    p = sub.add_parser("figures", help="regenerate figures/*.png and figures/manifest.json")
    p.add_argument("chapters", nargs="*", help=chapter_help)
    p.add_argument("--out", type=pathlib.Path, help="output folder (default figures/)")
    p.add_argument("--list", action="store_true", help="list the registered figures")
    p.set_defaults(func=_figures)

    p = sub.add_parser("notebooks", help="re-execute the notebooks and save their outputs")
    p.add_argument("chapters", nargs="*", help=chapter_help)
    p.add_argument("--check", action="store_true", help="execute only; do not write outputs")
    p.set_defaults(func=_notebooks)

    p = sub.add_parser("eval", help="score checkpoints on the world's held-out suites (gold "
                                    "reward, accuracy, pass@k, length, KL) with standard errors "
                                    "(book ch. 16)")
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                   help="'pretrained', 'sft' (the shared small models) or a checkpoint file "
                        "(e.g. runs/checkpoints/rl-mini-<key>.msgpack), optionally NAME=PATH")
    p.add_argument("--reference", metavar="CHECKPOINT",
                   help="a model to measure the KL to and the paired gold gain over")
    p.add_argument("--suites", nargs="+", choices=["rephrased", "unseen", "arithmetic"],
                   default=["rephrased", "unseen", "arithmetic"], help="suites (default all)")
    p.add_argument("--questions", type=int, default=64,
                   help="questions per suite, drawn at random (default 64; 0 = all)")
    p.add_argument("--samples", type=int, default=4,
                   help="answers per question at temperature 1 (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the questions and samples")
    p.add_argument("--json", type=pathlib.Path, help="also write the rows to this JSON file")
    p.set_defaults(func=_eval)

    p = sub.add_parser("bench", help="measure speed and memory: one jitted RL step, side by side "
                                     "with TRL's GRPOTrainer where torch and trl are installed "
                                     "(rl-step); training, generation, MFU and memory of three "
                                     "model sizes on this device (suite)")
    p.add_argument("what", choices=["rl-step", "suite"], help="what to measure")
    p.add_argument("--models", help="suite: comma-separated sizes (default mini,10m,100m)")
    p.add_argument("--bf16", action="store_true",
                   help="suite: also time training with bfloat16 compute on float32 parameters")
    p.add_argument("--no-rl-step", action="store_true",
                   help="suite: leave out the pipeline's RL step")
    p.add_argument("--model", choices=["tiny", "small", "mini"], default="mini",
                   help="model size (default mini, the pipeline's)")
    p.add_argument("--prompts", type=int, help="prompts per step (default 16)")
    p.add_argument("--group-size", type=int, help="completions per prompt (default 8)")
    p.add_argument("--new-tokens", type=int, help="tokens per completion (default 48)")
    p.add_argument("--repeats", type=int, default=10, help="timed steps (default 10)")
    p.add_argument("--reference-python",
                   help="a Python with torch, transformers, trl and datasets for the TRL side "
                        "(default: this one, when they import)")
    p.add_argument("--reference-steps", type=int, default=12,
                   help="TRL steps to run; the first two are warm-up (default 12)")
    p.add_argument("--no-reference", action="store_true", help="skip the TRL side")
    p.add_argument("--json", type=pathlib.Path, help="also write the results to this JSON file")
    p.set_defaults(func=_bench)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:  # bad arguments: one clear line, not a traceback
        print(f"rlhf-book {args.command}: error: {err}", file=sys.stderr)
        return 2
    except FloatingPointError as err:  # a diverged run: what and where, not a traceback
        print(f"rlhf-book {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
