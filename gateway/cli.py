"""The `smile-gateway` command line (also `python -m gateway`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from gateway import __version__, batch
from gateway.config import CONFIG_ENV, Settings, load_settings
from gateway.errors import ConfigError, GatewayError

log = logging.getLogger(__name__)

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is exit 2 with one clear line (argparse's own convention)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config, os.environ)


# -- validate ---------------------------------------------------------------------------------


class _Progress:
    """A one-line progress counter on stderr, only when stderr is a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.started = self.last = time.monotonic()

    def update(self, done: int, invalid: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < 0.1:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        self.stream.write(f"\r{done} files checked, {invalid} invalid ({rate:,.0f} files/s)")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()


def cmd_validate(args: argparse.Namespace) -> int:
    from gateway.bootstrap import checker_factory

    settings = _settings(args)
    out = sys.stdout
    problems: list[str] = []

    def missing(path: str, why: str) -> None:
        problems.append(path)
        print(f"{path}: cannot read: {why}", file=sys.stderr)

    valid = invalid = 0
    progress = _Progress(sys.stderr)
    as_json = args.format == "json"
    if as_json:
        out.write('{"files":[')
    first = True
    for chunk, results in batch.run(batch.discover(args.paths, missing),
                                    checker_factory(settings), args.jobs):
        if not as_json and results.count(None) == len(results):
            valid += len(results)  # the common case: nothing to print
        else:
            for path, result in zip(chunk, results, strict=True):
                shown = "<stdin>" if path == batch.STDIN else path
                if result is None:
                    valid += 1
                elif result.unreadable is not None:
                    missing(shown, result.unreadable)
                    continue
                else:
                    invalid += 1
                    if not as_json:
                        out.writelines(f"{shown}:{v.line}:{v.column}: {v.message}\n"
                                       for v in result.violations)
                if as_json:
                    errors = [] if result is None else [v.as_dict() for v in result.violations]
                    entry = {"path": shown, "valid": result is None, "errors": errors}
                    out.write(("" if first else ",") + json.dumps(entry))
                    first = False
        progress.update(valid + invalid, invalid)
    progress.close()
    if as_json:
        out.write(f'],"valid":{valid},"invalid":{invalid}}}\n')
    else:
        out.write(f"{valid} valid, {invalid} invalid\n")
    out.flush()
    if problems:
        return EXIT_USAGE
    return EXIT_INVALID if invalid else EXIT_OK


# -- parser -----------------------------------------------------------------------------------

Command = Callable[[argparse.Namespace], int]


def _jobs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, found {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--config", default=None, metavar="FILE",
        help=f"configuration file (default: ${CONFIG_ENV}, else ./config.yaml, else built-ins)")
    parser = _Parser(prog="smile-gateway", parents=[common],
                     description="Bridge between Inomial Smile's message bus and order systems.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("validate", parents=[common],
                       help="check Smile XML documents against the schema")
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="files, folders (every *.xml below), or - for standard input")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--jobs", type=_jobs, default=1, metavar="N",
                   help="worker processes (default 1)")
    p.set_defaults(func=cmd_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Command = args.func
    try:
        return func(args)
    except ConfigError as exc:
        print(f"smile-gateway: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except GatewayError as exc:
        print(f"smile-gateway: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (| head): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
