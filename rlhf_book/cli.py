"""The ``rlhf-book`` command line."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from rlhf_book import __version__


def _pipeline(args) -> int:
    from rlhf_book.lm.train import TrainConfig
    from rlhf_book.pipeline import PipelineConfig, run_pipeline

    config = PipelineConfig.quick() if args.quick else PipelineConfig()
    overrides = {k: v for k, v in {"model": args.model, "seed": args.seed,
                                   "out_dir": args.out}.items() if v is not None}
    train_overrides = {k: v for k, v in {"steps": args.steps,
                                         "batch_size": args.batch_size}.items() if v is not None}
    if train_overrides:
        overrides["pretrain"] = dataclasses.replace(config.pretrain, **train_overrides)
    config = dataclasses.replace(config, **overrides)
    run_pipeline(config, fresh=args.fresh, progress=not args.no_progress)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rlhf-book",
        description="The executable companion to the RLHF book: the whole recipe on a laptop CPU.",
    )
    parser.add_argument("--version", action="version", version=f"rlhf-book {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("pipeline", help="run the RLHF recipe end to end on the synthetic world "
                                        "(pretrain; cached checkpoints)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny model for a few steps: a seconds-long smoke run")
    p.add_argument("--model", choices=["tiny", "small", "mini"], help="model size (default mini)")
    p.add_argument("--steps", type=int, help="pretraining steps")
    p.add_argument("--batch-size", type=int, help="pretraining batch size")
    p.add_argument("--seed", type=int, help="seed of the data and the model (default 0)")
    p.add_argument("--out", help="folder for checkpoints and figures (default runs/)")
    p.add_argument("--fresh", action="store_true", help="retrain even if a checkpoint is cached")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_pipeline)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as err:  # bad arguments: one clear line, not a traceback
        print(f"rlhf-book {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
