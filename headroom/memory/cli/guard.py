"""Exit codes and the ``guard`` every ``headroom-memory`` command runs under.

An expected failure becomes one line on stderr (``headroom-memory: <what went wrong>``) and
its documented exit code, never a traceback:

- 0 success;
- 1 the operation failed: a typed error of ``headroom.memory.errors`` (bad input, a damaged or
  locked store, a model that cannot be found), a file that cannot be read or written, or an
  error of the OpenAI SDK (no API key, the endpoint refused or is unreachable);
- 2 bad usage (argparse prints the usage line);
- 3 not found: the store (``no store at PATH``) or the memory asked for does not exist.

This module imports nothing but the errors, so commands that must not load the compiled core
(``model download|info``) can use it.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable

from ..errors import HeadroomMemoryError, MemoryNotFoundError, StoreNotFoundError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND = 0, 1, 2, 3

Handler = Callable[[argparse.Namespace], int]


def fail(message: object, code: int = EXIT_FAILED) -> int:
    """Print ``message`` as one line on stderr and return ``code``."""
    text = " ".join(str(message).split()) or "failed"
    print(f"headroom-memory: {text}", file=sys.stderr)
    return code


def _is_openai_error(exc: BaseException) -> bool:
    openai = sys.modules.get("openai")  # loaded only if a command used it
    error = getattr(openai, "OpenAIError", None)
    return isinstance(error, type) and isinstance(exc, error)


def _describe_os_error(exc: OSError) -> str:
    if exc.strerror and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


def guard(run: Handler) -> Handler:
    """Run a command, turning its expected failures into one line and an exit code."""

    @functools.wraps(run)
    def handler(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except (MemoryNotFoundError, StoreNotFoundError) as exc:
            return fail(exc, EXIT_NOT_FOUND)
        except HeadroomMemoryError as exc:
            return fail(exc)
        except BrokenPipeError:
            raise  # main() ends quietly: the reader went away
        except OSError as exc:
            return fail(_describe_os_error(exc))
        except Exception as exc:
            if _is_openai_error(exc):
                return fail(exc)
            raise

    handler.guarded = True  # type: ignore[attr-defined]
    return handler
