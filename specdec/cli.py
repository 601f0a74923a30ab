"""The `specdec` command line. Each subcommand lives in its own module, which defines
`add_arguments(parser)` and `run(args) -> int`; this file only dispatches and turns user errors into
one line on stderr with exit code 2 (no traceback)."""
from __future__ import annotations

import argparse
import importlib
import json
import sys

# name -> (module, one-line help)
COMMANDS = {
    "generate": ("specdec.generate", "speculative generation on a few prompts, with acceptance statistics"),
    "bench": ("specdec.benchmark", "latency benchmark and acceptance curves (speculative vs plain vs HF assisted)"),
    "plot": ("specdec.plots", "plots from one or more results.json files"),
    "distill": ("specdec.distill.trainer", "DistillSpec: train the draft toward the target"),
    "cache-teacher": ("specdec.distill.cache", "cache the target's top-K log-probabilities for distillation"),
    "demo": ("specdec.demo", "the closed loop on the bundled pair: bench, distill, bench again"),
}


class UsageError(ValueError):
    """A user error: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specdec", description="Lossless speculative decoding for Hugging Face causal LMs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith(module.split(".")[0]) and e.name in module:
                continue  # subcommand not built yet
            raise
        p = sub.add_parser(name, help=help_, description=help_)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (UsageError, ValueError, FileNotFoundError, NotADirectoryError, json.JSONDecodeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"specdec {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"specdec {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
