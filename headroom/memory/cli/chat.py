"""``headroom-memory chat`` (an interactive chat with memory) and ``reembed``.

``chat`` talks to any OpenAI-compatible endpoint (``--base-url``, ``--model``; the key comes
from the environment as the openai SDK reads it, ``OPENAI_API_KEY``) through
``with_fast_memory`` and shows, on every turn, which memories were injected and which were
extracted. Lines come from standard input, so it can be scripted; an empty line or end of
input ends it. ``--user`` is required (there is no default user).

``reembed`` migrates an existing store (exit 3 ``no store at PATH`` when there is none).
Exit codes as every command (``guard``): 0 success, 1 failure, 2 usage, 3 not found.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import InvalidInputError
from .guard import EXIT_OK, guard


@guard
def _chat(args: argparse.Namespace) -> int:
    from openai import OpenAI

    from ..client.wrapper import with_fast_memory
    from ..protocol.pipeline import MemoryEvent

    events: list[MemoryEvent] = []
    base = OpenAI(base_url=args.base_url) if args.base_url else OpenAI()
    client = with_fast_memory(
        base, user_id=args.user, db_path=args.db, top_k=args.top_k, observer=events.append
    )
    history: list[dict[str, Any]] = []
    print(f"chatting as {args.user!r} with {args.model}; an empty line ends", file=sys.stderr)
    try:
        while True:
            print("you> ", end="", file=sys.stderr, flush=True)
            line = sys.stdin.readline()
            if not line.strip():
                break
            history.append({"role": "user", "content": line.strip()})
            seen = len(events)
            pieces: list[str] = []
            print("assistant> ", end="", flush=True)
            for chunk in client.chat.completions.create(
                model=args.model, messages=history[-args.window :], stream=True
            ):
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
                    print(chunk.choices[0].delta.content, end="", flush=True)
            print()
            history.append({"role": "assistant", "content": "".join(pieces)})
            client.flush()
            for event in events[seen:]:
                for short_id, memory, score in event.injected:
                    print(f"  [injected {short_id} {score:.2f}] {memory.text}", file=sys.stderr)
                for add in event.ops.add:
                    print(f"  [extracted +{add.category}] {add.text}", file=sys.stderr)
                for update in event.ops.update:
                    print(f"  [extracted ~{update.id[:8]}] {update.text}", file=sys.stderr)
                for memory_id in event.ops.delete:
                    print(f"  [extracted -{memory_id[:8]}]", file=sys.stderr)
                if event.error is not None:
                    print(f"  [memory error] {event.error}", file=sys.stderr)
    finally:
        client.close()
    return EXIT_OK


def _target_embedder(args: argparse.Namespace) -> Any:
    from ..embedders import get_embedder
    from ..embedders.factory import LOCAL_MODELS

    if args.model.startswith("openai:"):
        from openai import OpenAI

        client = OpenAI(base_url=args.base_url) if args.base_url else OpenAI()
        opts = {"dimensions": args.dimensions} if args.dimensions else {}
        return get_embedder(
            use_local=False, model=args.model.removeprefix("openai:"), client=client, **opts
        )
    if args.model in LOCAL_MODELS:
        return get_embedder(use_local=True, model=args.model)
    raise InvalidInputError(
        f"unknown --model {args.model!r}: all-MiniLM-L6-v2, or openai:MODEL for an API model"
    )


@guard
def _reembed(args: argparse.Namespace) -> int:
    from .store_commands import open_store

    with open_store(args.db) as store:
        embedder = _target_embedder(args)
        count = store.reembed(embedder)
    print(f"re-embedded {count} memories with {embedder.model_id}")
    return EXIT_OK


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``chat`` and ``reembed``."""
    p = sub.add_parser("chat", help="chat with memory against an OpenAI-compatible endpoint")
    p.add_argument("--db", default="memory.db", help="store directory (default: memory.db)")
    p.add_argument("--user", required=True, help="the user chatting (required)")
    p.add_argument("--base-url", help="the endpoint (default: the SDK's, or OPENAI_BASE_URL)")
    p.add_argument("--model", default="gpt-4o-mini")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--window", type=int, default=20, help="messages of history sent per turn")
    p.set_defaults(handler=_chat)

    p = sub.add_parser("reembed", help="migrate the store to another embedding model")
    p.add_argument("--db", default="memory.db", help="store directory (default: memory.db)")
    p.add_argument(
        "--model",
        required=True,
        help="all-MiniLM-L6-v2, or openai:MODEL (e.g. openai:text-embedding-3-small)",
    )
    p.add_argument("--base-url", help="for openai: models, the endpoint")
    p.add_argument("--dimensions", type=int, help="for openai: models, the vector size")
    p.set_defaults(handler=_reembed)
