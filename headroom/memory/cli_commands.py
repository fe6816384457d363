"""Registers every ``headroom-memory`` subcommand.

Each command module exposes ``register(subparsers)`` that adds its parsers and sets
``handler`` (a function taking the parsed namespace and returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
from typing import Any

#: Modules (relative to headroom.memory) whose ``register`` adds subcommands.
COMMAND_MODULES: tuple[str, ...] = ("cli_store", "cli_model", "cli_chat", "demo")


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add every subcommand to ``subparsers``."""
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"headroom.memory.{name}")
        module.register(subparsers)
