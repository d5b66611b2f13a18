"""Command line: `python -m adlib <command> ...`.

Each command lives in its own module, which provides `add_arguments(parser)` and `main(args) -> int`.
Modules are imported when the parser is built, so they keep heavy imports (torch, timm) inside functions.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "data": ("adlib.data.cli", "dataset statistics, the synthetic benchmark, downloads and converters"),
    "run": ("adlib.app.run", "fit and evaluate one model on one category"),
    "compare": ("adlib.app.compare", "every model (or a chosen list) on one dataset: a CSV and an HTML page"),
    "reproduce": ("adlib.app.reproduce", "execute the notebook collection and build the report"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adlib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command_parser)
        command_parser.set_defaults(_handler=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
