"""``headroom-memory chat`` (an interactive chat with memory) and ``reembed``.

``chat`` talks to any OpenAI-compatible endpoint (``--base-url``, ``--model``; the key comes
from the environment as the openai SDK reads it, ``OPENAI_API_KEY``) through
``with_fast_memory`` and shows, on every turn, which memories were injected and which were
extracted. Lines come from standard input, so it can be scripted; an empty line or end of
input ends it.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .store_commands import guard

EXIT_OK = 0


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


@guard
def _reembed(args: argparse.Namespace) -> int:
    from ..embedders import get_embedder
    from ..store.store import MemoryStore

    if args.model.startswith("openai:"):
        from openai import OpenAI

        client = OpenAI(base_url=args.base_url) if args.base_url else OpenAI()
        opts = {"dimensions": args.dimensions} if args.dimensions else {}
        embedder = get_embedder(
            use_local=False, model=args.model.removeprefix("openai:"), client=client, **opts
        )
    else:
        embedder = get_embedder(use_local=True, model=args.model)
    with MemoryStore(args.db) as store:
        count = store.reembed(embedder)
    print(f"re-embedded {count} memories with {embedder.model_id}")
    return EXIT_OK


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``chat`` and ``reembed``."""
    p = sub.add_parser("chat", help="chat with memory against an OpenAI-compatible endpoint")
    p.add_argument("--db", default="memory.db")
    p.add_argument("--user", default="default")
    p.add_argument("--base-url", help="the endpoint (default: the SDK's, or OPENAI_BASE_URL)")
    p.add_argument("--model", default="gpt-4o-mini")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--window", type=int, default=20, help="messages of history sent per turn")
    p.set_defaults(handler=_chat)

    p = sub.add_parser("reembed", help="migrate the store to another embedding model")
    p.add_argument("--db", default="memory.db")
    p.add_argument(
        "--model",
        required=True,
        help="all-MiniLM-L6-v2, or openai:MODEL (e.g. openai:text-embedding-3-small)",
    )
    p.add_argument("--base-url", help="for openai: models, the endpoint")
    p.add_argument("--dimensions", type=int, help="for openai: models, the vector size")
    p.set_defaults(handler=_reembed)
