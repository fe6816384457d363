"""``headroom-memory`` commands that read and manage a store.

Every command takes ``--db PATH`` (default ``memory.db``) and, where it is about one user,
``--user ID`` (default ``default``). Read commands take ``--json`` for machine-readable output.

Exit codes: 0 success; 1 the operation failed (message on stderr); 2 bad usage (argparse);
3 the memory or user asked for does not exist.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from ..errors import HeadroomMemoryError, MemoryNotFoundError
from ..store.store import MemoryStore
from ..types import Memory, MemoryVersion

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_NOT_FOUND = 0, 1, 2, 3


def _common(parser: argparse.ArgumentParser, *, user: bool = True, json_out: bool = True) -> None:
    parser.add_argument("--db", default="memory.db", help="store directory (default: memory.db)")
    if user:
        parser.add_argument("--user", default="default", help="user id (default: default)")
    if json_out:
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _open(args: argparse.Namespace) -> MemoryStore:
    return MemoryStore(args.db)


def guard(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except MemoryNotFoundError as exc:
            print(f"headroom-memory: {exc}", file=sys.stderr)
            return EXIT_NOT_FOUND
        except HeadroomMemoryError as exc:
            print(f"headroom-memory: {exc}", file=sys.stderr)
            return EXIT_FAILED

    return handler


def _table(rows: Iterable[Iterable[Any]], header: list[str], out: TextIO = sys.stdout) -> None:
    """Print rows as an aligned text table; long cells are shortened."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in header]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip(), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip(), file=out)


def _cell(value: Any, limit: int = 72) -> str:
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _memory_rows(memories: Iterable[Memory]) -> list[list[Any]]:
    return [[m.id, m.category, m.created_at.strftime("%Y-%m-%d %H:%M"), m.text] for m in memories]


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")


# --- commands ---------------------------------------------------------------------------------


@guard
def _stats(args: argparse.Namespace) -> int:
    with _open(args) as store:
        stats = store.stats(args.user if args.user != "*" else None)
    if args.json:
        _print_json(stats)
        return EXIT_OK
    rows: list[list[Any]] = [["total memories", stats["total_chunks"]]]
    rows += [[f"  {name}", count] for name, count in stats["categories"].items()]
    rows += [["users", stats["users"]]]
    rows += [[f"store: {k}", v] for k, v in sorted(stats["store"].items())]
    _table(rows, ["what", "value"])
    return EXIT_OK


@guard
def _list(args: argparse.Namespace) -> int:
    with _open(args) as store:
        memories = store.get_all(args.user, category=args.category)
    if args.json:
        _print_json([m.to_dict() for m in memories])
    else:
        _table(_memory_rows(memories), ["id", "category", "created", "text"])
    return EXIT_OK


@guard
def _search(args: argparse.Namespace) -> int:
    with _open(args) as store:
        results = store.search(args.user, args.query, top_k=args.top_k, category=args.category)
    if args.json:
        _print_json([{**m.to_dict(), "score": score} for m, score in results])
    else:
        _table(
            [[score, m.id, m.category, m.text] for m, score in results],
            ["score", "id", "category", "text"],
        )
    return EXIT_OK


@guard
def _add(args: argparse.Namespace) -> int:
    metadata = json.loads(args.metadata) if args.metadata else None
    with _open(args) as store:
        memory = store.add(args.user, args.text, category=args.category, metadata=metadata)
    if args.json:
        _print_json(memory.to_dict())
    else:
        print(memory.id)
    return EXIT_OK


@guard
def _show(args: argparse.Namespace) -> int:
    with _open(args) as store:
        memory = store.get(args.user, args.id)
    if memory is None:
        raise MemoryNotFoundError(f"no memory {args.id!r} for user {args.user!r}")
    if args.json:
        _print_json(memory.to_dict())
    else:
        _table([[k, v] for k, v in memory.to_dict().items()], ["field", "value"])
    return EXIT_OK


def _version_dict(version: MemoryVersion) -> dict[str, Any]:
    return {
        "operation": version.operation,
        "at": version.at.isoformat(),
        "category": version.category,
        "text": version.text,
        "source": version.source,
    }


@guard
def _history(args: argparse.Namespace) -> int:
    with _open(args) as store:
        versions = store.history(args.user, args.id)
    if not versions:
        raise MemoryNotFoundError(f"no history for memory {args.id!r} of user {args.user!r}")
    if args.json:
        _print_json([_version_dict(v) for v in versions])
    else:
        _table(
            [
                [v.operation, v.at.strftime("%Y-%m-%d %H:%M:%S"), v.category, v.text]
                for v in versions
            ],
            ["operation", "at", "category", "text"],
        )
    return EXIT_OK


@guard
def _delete(args: argparse.Namespace) -> int:
    with _open(args) as store:
        store.delete(args.user, args.id)
    print(f"deleted {args.id} (soft: purged at the next compaction)")
    return EXIT_OK


@guard
def _forget(args: argparse.Namespace) -> int:
    with _open(args) as store:
        removed = store.forget(args.user, args.id or None)
    print(f"forgot {removed} memories of {args.user!r}; the store is compacted")
    return EXIT_OK


@guard
def _prune(args: argparse.Namespace) -> int:
    from datetime import datetime, timedelta, timezone

    older = (
        datetime.now(timezone.utc) - timedelta(days=args.older_than_days)
        if args.older_than_days is not None
        else None
    )
    with _open(args) as store:
        removed = store.prune(
            args.user,
            older_than=older,
            category=args.category,
            keep_last=args.keep_last,
            hard=args.hard,
        )
    print(f"pruned {removed} memories of {args.user!r}")
    return EXIT_OK


@guard
def _export(args: argparse.Namespace) -> int:
    count = 0
    with contextlib.ExitStack() as stack:
        out: TextIO = sys.stdout
        if args.output != "-":
            out = stack.enter_context(open(args.output, "w", encoding="utf-8"))
        store = stack.enter_context(_open(args))
        user = None if args.all_users else args.user
        for record in store.export(user, include_vectors=args.vectors):
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    print(f"exported {count} memories", file=sys.stderr)
    return EXIT_OK


@guard
def _import(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        source: TextIO = sys.stdin
        if args.input != "-":
            source = stack.enter_context(open(args.input, encoding="utf-8"))
        records = (json.loads(line) for line in source if line.strip())
        store = stack.enter_context(_open(args))
        count = store.import_(records)
    print(f"imported {count} memories")
    return EXIT_OK


@guard
def _compact(args: argparse.Namespace) -> int:
    with _open(args) as store:
        report = store.compact()
    if args.json:
        _print_json(report)
    else:
        _table([[k, v] for k, v in report.items()], ["what", "value"])
    return EXIT_OK


@guard
def _verify(args: argparse.Namespace) -> int:
    with _open(args) as store:
        report = store.verify(repair=args.repair)
    if args.json:
        _print_json(report)
    else:
        _table([[k, v] for k, v in report.items()], ["check", "result"])
    return EXIT_OK if report.get("ok") or args.repair else EXIT_FAILED


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add the store commands."""
    p = sub.add_parser("stats", help="counts per category, users, store size")
    _common(p)
    p.set_defaults(handler=_stats)

    p = sub.add_parser("list", help="list a user's memories")
    _common(p)
    p.add_argument("--category", choices=["preference", "fact", "context"])
    p.set_defaults(handler=_list)

    p = sub.add_parser("search", help="search a user's memories by meaning")
    _common(p)
    p.add_argument("query")
    p.add_argument("-k", "--top-k", type=int, default=5)
    p.add_argument("--category", choices=["preference", "fact", "context"])
    p.set_defaults(handler=_search)

    p = sub.add_parser("add", help="add a memory")
    _common(p)
    p.add_argument("text")
    p.add_argument("--category", default="fact", choices=["preference", "fact", "context"])
    p.add_argument("--metadata", help="a JSON object")
    p.set_defaults(handler=_add)

    for name, handler, helptext in (
        ("show", _show, "show one memory"),
        ("history", _history, "every version of a memory"),
    ):
        p = sub.add_parser(name, help=helptext)
        _common(p)
        p.add_argument("id")
        p.set_defaults(handler=handler)

    p = sub.add_parser("delete", help="soft-delete a memory (purged at the next compaction)")
    _common(p, json_out=False)
    p.add_argument("id")
    p.set_defaults(handler=_delete)

    p = sub.add_parser("forget", help="hard-delete memories (all of a user's by default)")
    _common(p, json_out=False)
    p.add_argument("--id", action="append", help="only this memory (repeatable)")
    p.set_defaults(handler=_forget)

    p = sub.add_parser("prune", help="delete memories by age, category or count")
    _common(p, json_out=False)
    p.add_argument("--older-than-days", type=float)
    p.add_argument("--category", choices=["preference", "fact", "context"])
    p.add_argument("--keep-last", type=int)
    p.add_argument("--hard", action="store_true", help="purge the bytes now")
    p.set_defaults(handler=_prune)

    p = sub.add_parser("export", help="export memories as JSONL (docs/export.md)")
    _common(p, json_out=False)
    p.add_argument("-o", "--output", default="-")
    p.add_argument("--all-users", action="store_true")
    p.add_argument("--vectors", action="store_true", help="include embedding vectors")
    p.set_defaults(handler=_export)

    p = sub.add_parser("import", help="import a JSONL export")
    _common(p, user=False, json_out=False)
    p.add_argument("input", nargs="?", default="-")
    p.set_defaults(handler=_import)

    p = sub.add_parser("compact", help="rewrite the log without dead records")
    _common(p, user=False)
    p.set_defaults(handler=_compact)

    p = sub.add_parser("verify", help="check every record and index; --repair fixes")
    _common(p, user=False)
    p.add_argument("--repair", action="store_true")
    p.set_defaults(handler=_verify)
