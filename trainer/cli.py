"""``cnclip train`` / ``trainer.main(argv)``: parse arguments, set up logging, train."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import yaml

from runtime.errors import CnClipError

TRAIN_EPILOG = """\
examples:
  cnclip train --config trainer/recipes/cifar10-tiny.yaml
  cnclip train --config run.yaml stages.0.lr=1e-4 data.workers=4 run_dir=runs/try2
  torchrun --nproc-per-node 8 -m cnclip train --config run.yaml

Overrides are key=value with dotted keys; list items by index or by name
(stages.lit.steps=100). A run directory that holds a checkpoints/last.pt is
resumed (resume=auto); resume=never refuses to touch it.
"""


DESCRIPTION = "Two-stage contrastive training (LiT, then both towers) or finetuning."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``cnclip train`` (shared with the ``cnclip`` parser)."""
    parser.add_argument("--config", required=True, help="the run's YAML config")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config and exit"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")


def build_parser(prog: str = "cnclip train") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=DESCRIPTION,
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return parser


def _setup_logging(quiet: bool) -> None:
    rank = int(os.environ.get("RANK", "0"))
    level = logging.WARNING if quiet or rank != 0 else logging.INFO
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


def run(args: argparse.Namespace) -> int:
    """Train with parsed arguments; user errors propagate as :class:`CnClipError`."""
    from trainer.run_config import load_config

    config = load_config(args.config, args.overrides)
    if args.print_config:
        sys.stdout.write(yaml.safe_dump(config.to_dict(), allow_unicode=True, sort_keys=False))
        return 0
    _setup_logging(args.quiet)
    from trainer.train import train

    train(config)
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "cnclip train") -> int:
    """Train from a config file; returns the exit status (2 for a user error)."""
    args = build_parser(prog).parse_args(argv)
    try:
        return run(args)
    except CnClipError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
