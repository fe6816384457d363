"""The ``headroom-memory`` command line.

Each command module (``commands.COMMAND_MODULES``) registers its subcommands; ``main`` parses
and dispatches. Every handler runs under ``guard.guard``, so an expected failure is one line on
stderr and an exit code, never a traceback: 0 success, 1 the operation failed, 2 bad usage,
3 not found (the store or the memory asked for).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
from collections.abc import Callable, Sequence

Handler = Callable[[argparse.Namespace], int]

EXIT_CODES = (
    "exit codes: 0 success, 1 the operation failed (one line on stderr), 2 bad usage, "
    "3 not found (the store, or the memory asked for)"
)

EPILOG = f"""\
users: list, search, add, show, history, delete, forget, prune, chat and mcp are about one
user's memories and require --user ID (there is no default user); stats and export cover every
user unless --user narrows them; import --user sets the owner of every imported record.

stores: the read and maintenance commands (stats, list, search, show, history, export, verify,
delete, forget, prune, compact, reembed) never create a store: on a path without one they exit
3 with "no store at PATH"; add, import and the commands that run a chat or a server do.

{textwrap.fill(EXIT_CODES, 94)}"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="headroom-memory",
        description="Inspect and manage a headroom memory store.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    from . import commands

    commands.register(sub)
    _add_exit_codes(parser)
    return parser


def _add_exit_codes(parser: argparse.ArgumentParser) -> None:
    """Every subcommand's --help ends with the exit codes (unless it has its own epilog)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if sub.epilog is None:
                    sub.epilog = EXIT_CODES
                _add_exit_codes(sub)


class _Warnings(logging.Handler):
    """The library's warnings as ``headroom-memory: warning: ...`` lines on the current stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        message = " ".join(self.format(record).split())
        print(f"headroom-memory: warning: {message}", file=sys.stderr)


def _library_logger(command: str) -> tuple[logging.Logger, logging.Handler, int]:
    """The library logger with the CLI's warning handler added for one command; returns the
    logger, the handler and the level to restore."""
    logger = logging.getLogger("headroom.memory")
    handler = _Warnings(logging.WARNING)
    logger.addHandler(handler)
    level = logger.level
    # verify reports what recovery found; the warning telling to run verify would repeat it.
    if command == "verify":
        logger.setLevel(logging.ERROR)
    return logger, handler, level


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    logger, warnings, level = _library_logger(args.command)
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): end quietly, without a second error at exit.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 0
    finally:
        logger.removeHandler(warnings)
        logger.setLevel(level)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
