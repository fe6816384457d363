"""Registers every ``headroom-memory`` subcommand.

Each command module exposes ``register(subparsers)`` that adds its parsers and sets
``handler`` (a function taking the parsed namespace and returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

#: Modules (relative to headroom.memory.cli) whose ``register`` adds subcommands.
COMMAND_MODULES: tuple[str, ...] = (
    "store_commands",
    "model_commands",
    "chat",
    "demo",
    "mcp_command",
    "serve_command",
)


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add every subcommand to ``subparsers``."""
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"headroom.memory.cli.{name}")
        module.register(subparsers)
