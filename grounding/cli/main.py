"""``grounding``: one command, with a subcommand per job.

``train`` and ``eval`` take hydra overrides (``key=value``); the other subcommands take ordinary
options. Only subcommands that work are registered, so ``grounding --help`` never lists a stub.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence


def _add_hydra_job(sub: argparse._SubParsersAction, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text + " Takes hydra overrides, e.g. "
                       "`experiment=<method>_<dataset> trainer.max_epochs=3 trainer=ddp trainer.devices=4`.")
    p.add_argument("overrides", nargs="*", help="hydra overrides key=value")
    p.add_argument("--config-dir", action="append", default=[], metavar="DIR",
                   help="an extra folder of configs (e.g. your own experiment/ files); repeatable")
    p.add_argument("--print-config", action="store_true", help="print the composed config and exit")


def build_parser() -> argparse.ArgumentParser:
    from grounding import __version__

    parser = argparse.ArgumentParser(prog="grounding", description="Language-grounded perception in 2D and 3D.")
    parser.add_argument("--version", action="version", version=f"grounding-toolkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_hydra_job(sub, "train", "Train a model.")
    _add_hydra_job(sub, "eval", "Evaluate a checkpoint; writes metrics.json and predictions.jsonl.")
    from grounding.cli import bench, demo, predict, prepare, render  # light modules: heavy imports inside run()

    prepare.add_parser(sub)
    predict.add_parser(sub)
    predict.add_export_parser(sub)
    render.add_parser(sub)
    bench.add_parser(sub)
    demo.add_parser(sub)
    return parser


def _run_hydra_job(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from grounding.engine.config import load_config

    name = "train" if args.command == "train" else "eval"
    cfg = load_config(name, args.overrides, extra_dirs=args.config_dir)
    if args.print_config:
        print(OmegaConf.to_yaml(cfg))
        return 0
    from grounding.engine import run

    if name == "train":
        run.train(cfg)
        print(f"run directory: {cfg.run_dir}")
    else:
        result = run.evaluate(cfg)
        if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0:  # DDP children stay quiet
            print(run.format_metrics(result))
            print(f"metrics: {cfg.run_dir}/metrics.json\npredictions: {cfg.run_dir}/predictions.jsonl")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from datasets.errors import DataFormatError

    try:
        return _dispatch(args)
    except (FileNotFoundError, DataFormatError) as e:
        # Bad input (a missing file, a malformed record): the message names file, record and field;
        # a traceback would only hide it. Programming errors still raise with their traceback.
        if os.environ.get("GROUNDING_TRACEBACK"):
            raise
        print(f"grounding {args.command}: error: {e}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command in ("train", "eval"):
        return _run_hydra_job(args)
    if args.command == "prepare":
        from grounding.cli import prepare

        return prepare.run(args)
    if args.command in ("predict", "export"):
        from grounding.cli import predict

        return predict.run(args) if args.command == "predict" else predict.run_export(args)
    if args.command == "render":
        from grounding.cli import render

        return render.run(args)
    if args.command == "demo":
        from grounding.cli import demo

        return demo.run(args)
    if args.command == "bench":
        from grounding.cli import bench

        return bench.run(args)
    raise AssertionError(f"unhandled command {args.command}")  # argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
