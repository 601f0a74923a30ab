"""The `specdec` command line. Each subcommand lives in its own module, which defines
`add_arguments(parser)` and `run(args) -> int`; this file only dispatches, importing nothing but the
module of the command being run (so `specdec --help` does not pay for torch), and owns the one error
path: a user or environment error (a bad flag or value, a missing file, a read-only disk) is one line on
stderr and exit code 2; anything else is a bug in specdec and keeps its traceback."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module, one-line help)
COMMANDS = {
    "generate": ("specdec.cli.generate", "speculative generation on a few prompts, with acceptance statistics"),
    "bench": ("specdec.benchmark.bench", "latency benchmark and acceptance curves (speculative vs plain vs HF assisted)"),
    "plot": ("specdec.benchmark.plots", "plots from one or more results.json files"),
    "distill": ("specdec.distill.trainer", "DistillSpec: train the draft toward the target"),
    "cache-teacher": ("specdec.distill.cache", "cache the target's top-K log-probabilities for distillation"),
    "demo": ("specdec.cli.demo", "the closed loop on the bundled pair: bench, distill, bench again"),
}

# What a user or the machine got wrong (OSError covers a missing, unwritable or read-only path).
USER_ERRORS = (ValueError, OSError)


class UsageError(ValueError):
    """A user error: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors raise (one line in main) instead of printing the usage block and exiting."""

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def build_parser(commands=None) -> argparse.ArgumentParser:
    """The whole parser; only the subcommands in `commands` (default: all) get their flags, which
    imports their modules."""
    parser = _Parser(prog="specdec", description="Lossless speculative decoding for Hugging Face causal LMs.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if commands is None or name in commands:
            mod = importlib.import_module(module)
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # NumPy's OpenBLAS (the small-model forward, specdec/engine/lean_numpy.py) starts its own thread pool when
    # NumPy is imported, whose idle threads spin against PyTorch's: one thread unless the user says
    # otherwise (set before any import of NumPy; lean_numpy.blas_single_threaded reads it).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    name = next((a for a in argv if not a.startswith("-")), None)
    prog = f"specdec {name}" if name in COMMANDS else "specdec"
    try:
        parser = build_parser([name] if name in COMMANDS else [])
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help()
            return 2
        return int(args._run(args) or 0)
    except USER_ERRORS as e:
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
