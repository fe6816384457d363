"""``headroom-memory mcp``: serve one user's memories to an MCP host over stdio.

An MCP host (a desktop assistant, an IDE agent) starts this command and talks the Model
Context Protocol over its stdin/stdout. The server serves exactly one user, the one ``--user``
names: the operator who writes the host's configuration fixes it, and no tool lets the model
choose or change it. The store (``--db``, a directory or a ``postgresql://`` URL) is opened
once, created if missing, with the embedding model it was written with (MiniLM for a new
store), and closed (flushed) when the host closes stdin or sends SIGTERM.

``--http-port PORT`` serves streamable HTTP on loopback instead (``/mcp``), for hosts that
connect to a URL; it prints the URL on stderr and stops on SIGTERM or Ctrl-C. It has no
authentication, so it binds 127.0.0.1 only: whoever reaches the port acts as ``--user``.

Needs the ``mcp`` extra (``pip install 'headroom-memory[mcp]'``); without it the command
prints one line and exits 1. Exit codes (``guard``): 0 the host ended the session; 1 the
server could not start (bad --user, the store or the model cannot be opened); 2 usage.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from .. import types as T
from ..store.store import MemoryStore
from .guard import EXIT_FAILED, EXIT_OK, fail, guard

#: What to install when the SDK is missing (or is a 1.x SDK without the 2.x API).
MISSING_SDK = "the mcp command needs the MCP Python SDK 2.x: pip install 'headroom-memory[mcp]'"


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``mcp``."""
    parser = subparsers.add_parser(
        "mcp",
        help="serve one user's memories to an MCP host (stdio)",
        description=(
            "Run a Model Context Protocol server on stdin/stdout with tools to search, list, "
            "add, update, delete and forget the memories of one user (and see a memory's "
            "history). The user is fixed by --user; the model cannot choose another. An MCP "
            "host starts this command from its configuration (command and args)."
        ),
    )
    parser.add_argument(
        "--db",
        default="memory.db",
        help="store directory or postgresql:// URL, created if missing (default: memory.db)",
    )
    parser.add_argument(
        "--user",
        required=True,
        help="the one user whose memories this server reads and writes (required)",
    )
    parser.add_argument(
        "--http-port",
        type=_port,
        metavar="PORT",
        help=(
            "serve streamable HTTP at http://127.0.0.1:PORT/mcp instead of stdio (0: a free "
            "port; loopback only, no authentication: whoever reaches it acts as --user)"
        ),
    )
    parser.set_defaults(handler=_serve)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a number from 0 to 65535; got {text!r}")
    return port


@guard
def _serve(args: argparse.Namespace) -> int:
    user_id = T.validate_user_id(args.user)  # bad input never creates a store
    try:
        from ..mcp.server import create_server, run_http, run_stdio
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "mcp":
            raise
        return fail(MISSING_SDK, EXIT_FAILED)
    # The SDK configures the root logger; the CLI already prints the library's warnings.
    library = logging.getLogger("headroom.memory")
    propagate = library.propagate
    library.propagate = False
    try:
        with MemoryStore.open(args.db) as store:
            _ = store.embedder  # load the model now: a missing model fails here, not mid-call
            server = create_server(store, user_id)
            if args.http_port is None:
                run_stdio(server, on_stop=store.close)
            else:
                run_http(server, args.http_port, ready=lambda url: _serving(url, user_id))
    finally:
        library.propagate = propagate
    return EXIT_OK


def _serving(url: str, user_id: str) -> None:
    print(
        f"headroom-memory: serving the memories of {user_id!r} over MCP at {url}", file=sys.stderr
    )
    sys.stderr.flush()
