"""``headroom-memory`` commands that read and manage a store.

Every command takes ``--db PATH`` (default ``memory.db``). The user rule:

- commands about one user's memories (``list``, ``search``, ``add``, ``show``, ``history``,
  ``delete``, ``forget``, ``prune``) require ``--user ID``; there is no default user;
- ``stats`` and ``export`` cover the whole store (every user) unless ``--user`` narrows them;
- ``import`` takes ``--user`` to set the owner of every imported record;
- ``compact`` and ``verify`` are about the store and take no user.

Only ``add`` and ``import`` create a store; every other command on a path that holds no store
exits 3 with ``no store at PATH`` and creates nothing. Read commands take ``--json``.

Exit codes (``guard``): 0 success; 1 the operation failed (one line on stderr); 2 bad usage
(argparse); 3 the store or the memory asked for does not exist.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from collections.abc import Iterable
from datetime import datetime
from typing import Any, BinaryIO, TextIO

from .. import types as T
from ..errors import (
    InvalidInputError,
    InvalidMetadataError,
    InvalidTimeError,
    MemoryNotFoundError,
)
from ..store.store import MemoryStore
from ..types import Memory, MemoryVersion
from .guard import EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, fail, guard

__all__ = ["EXIT_FAILED", "EXIT_NOT_FOUND", "EXIT_OK", "EXIT_USAGE", "guard", "open_store"]

#: The ``--user`` roles (see the module docstring).
REQUIRED, SCOPE, OWNER = "required", "scope", "owner"
_USER_HELP = {
    REQUIRED: "the user whose memories this is about (required)",
    SCOPE: "only this user's memories (default: every user of the store)",
    OWNER: (
        "the owner of every imported record, overriding the file's user_id "
        "(default: each record's own user_id; a record without one is an error)"
    ),
}


def _common(
    parser: argparse.ArgumentParser, *, user: str | None = REQUIRED, json_out: bool = True
) -> None:
    parser.add_argument("--db", default="memory.db", help="store directory (default: memory.db)")
    if user is not None:
        parser.add_argument("--user", required=user == REQUIRED, help=_USER_HELP[user])
    if json_out:
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def open_store(path: str | os.PathLike[str], *, create: bool = False) -> MemoryStore:
    """The store at ``path`` (a directory or a ``postgresql://`` URL); unless ``create``,
    StoreNotFoundError (``no store at PATH``) when there is none, and nothing is created."""
    return MemoryStore(path, create=create)


def _open(args: argparse.Namespace, *, create: bool = False) -> MemoryStore:
    return open_store(args.db, create=create)


def _table(rows: Iterable[Iterable[Any]], header: list[str], out: TextIO | None = None) -> None:
    """Print rows as an aligned text table (on stdout by default); long cells are shortened."""
    out = sys.stdout if out is None else out
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
        stats = store.stats(args.user)
    if args.json:
        _print_json(stats)
        return EXIT_OK
    rows: list[list[Any]] = [["total memories", stats["total_chunks"]]]
    rows += [[f"  {name}", count] for name, count in stats["categories"].items()]
    rows += [["users", stats["users"]], ["embedding model", stats.get("embedding_model") or "-"]]
    rows += [[f"store: {k}", v] for k, v in sorted(stats.get("store", {}).items())]
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
    metadata = None
    if args.metadata is not None:
        try:
            metadata = json.loads(args.metadata)
        except json.JSONDecodeError as exc:
            raise InvalidMetadataError(
                f"--metadata is not valid JSON: {exc.msg} (column {exc.colno})"
            ) from None
        metadata = T.validate_metadata(metadata)
    T.validate_user_id(args.user)  # bad input never creates a store
    T.validate_text(args.text)
    with _open(args, create=True) as store:
        memory = store.add(
            args.user, args.text, category=args.category, metadata=metadata, dedup=args.dedup
        )
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
        raise MemoryNotFoundError(f"no memory {args.id!r} for user {args.user!r}")
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
    ids = list(dict.fromkeys(args.id)) if args.id else None
    with _open(args) as store:
        if ids is not None:
            # An id is known while it has any history (a soft-deleted memory can be forgotten).
            missing = [i for i in ids if not store.history(args.user, i)]
            if missing:
                raise MemoryNotFoundError(
                    f"no memory {', '.join(repr(i) for i in missing)} for user {args.user!r}; "
                    "nothing was forgotten"
                )
        removed = store.forget(args.user, ids)
    print(f"forgot {removed} memories of {args.user!r}; the store is compacted")
    return EXIT_OK


@guard
def _prune(args: argparse.Namespace) -> int:
    from datetime import timedelta, timezone

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
        store = stack.enter_context(_open(args))  # before the output: no store, no file
        out: TextIO = sys.stdout
        if args.output != "-":
            out = stack.enter_context(open(args.output, "w", encoding="utf-8"))
        for record in store.export(args.user, include_vectors=args.vectors):
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    print(f"exported {count} memories", file=sys.stderr)
    return EXIT_OK


# --- import: every line is parsed and checked before anything is written -----------------------


def _check_time(record: dict[str, Any], key: str) -> None:
    value = record.get(key)
    if value is None or value == "":
        return
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise InvalidTimeError(f"{key} is not an ISO 8601 time: {value!r}") from None
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidTimeError(f"{key} must be an ISO 8601 string; got {value!r}")
    try:
        T.to_timestamp_us(value)
    except InvalidTimeError as exc:
        raise InvalidTimeError(f"{key}: {exc}") from None


def _check_version(version: dict[str, Any], time_key: str) -> None:
    if "text" not in version:
        raise InvalidInputError("text is missing")
    T.validate_text(version["text"])
    T.category_code(version.get("category", "fact"))
    T.validate_metadata(version.get("metadata"))
    T.source_code(version.get("source") or "import")
    _check_time(version, time_key)


def check_record(record: object, user: str | None = None) -> dict[str, Any]:
    """One record of the export schema (docs/export.md), checked; ``user`` overrides its owner.

    Raises a typed InvalidInputError naming the field that is wrong.
    """
    if not isinstance(record, dict):
        raise InvalidInputError(f"a record must be a JSON object; got {type(record).__name__}")
    if user is not None:
        record = {**record, "user_id": user}
    elif record.get("user_id") in (None, ""):
        raise InvalidInputError("user_id is missing (give --user to import records without one)")
    T.validate_user_id(record["user_id"])
    memory_id = record.get("id")
    if memory_id is not None and (not isinstance(memory_id, str) or not memory_id.strip()):
        raise InvalidInputError(f"id must be a non-empty string; got {memory_id!r}")
    _check_version(record, "updated_at")
    _check_time(record, "created_at")
    history = record.get("history", [])
    if not isinstance(history, list):
        raise InvalidInputError(f"history must be a list; got {type(history).__name__}")
    for n, version in enumerate(history, 1):
        if not isinstance(version, dict):
            raise InvalidInputError(f"history entry {n} must be an object")
        try:
            _check_version(version, "at")
        except InvalidInputError as exc:
            raise type(exc)(f"history entry {n}: {exc}") from None
    vector = record.get("vector")
    if vector is not None and not (
        isinstance(vector, list)
        and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
            for x in vector
        )
    ):
        raise InvalidInputError("vector must be a list of finite numbers")
    return record


def read_records(
    source: Iterable[bytes | str], name: str, user: str | None
) -> list[dict[str, Any]]:
    """Every record of a JSONL export, parsed and checked; the first bad line raises a typed
    InvalidInputError whose message names it (``NAME: line N: ...``). Blank lines are skipped."""
    records = []
    for number, raw in enumerate(source, 1):
        where = f"{name}: line {number}"
        if isinstance(raw, bytes):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInputError(
                    f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start}); "
                    "nothing was imported"
                ) from None
        else:
            line = raw
        line = line.rstrip("\r\n")  # JSON error columns then count within the line
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(
                f"{where}: not valid JSON: {exc.msg} (column {exc.colno}); nothing was imported"
            ) from None
        except RecursionError:
            raise InvalidInputError(f"{where}: nested too deeply; nothing was imported") from None
        try:
            records.append(check_record(record, user))
        except InvalidInputError as exc:
            raise type(exc)(f"{where}: {exc}; nothing was imported") from None
    return records


@guard
def _import(args: argparse.Namespace) -> int:
    if args.user is not None:
        T.validate_user_id(args.user)
    if args.input == "-":
        source: Iterable[bytes | str] = getattr(sys.stdin, "buffer", sys.stdin)
        records = read_records(source, "<stdin>", args.user)
    else:
        with open(args.input, "rb") as handle:
            binary: BinaryIO = handle
            records = read_records(binary, args.input, args.user)
    with _open(args, create=True) as store:
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


def _damage(report: dict[str, Any]) -> str:
    """What a verify report found wrong, in a few words ('' when nothing)."""
    found = [
        f"{report.get(key)} {what}"
        for key, what in (
            ("bad_vectors", "stored vectors that are not finite"),
            ("bad_snapshots", "index snapshots failing their checksum"),
            ("recovered_corrupt_bytes", "corrupt bytes skipped"),
            ("recovered_torn_tail_bytes", "torn-tail bytes truncated"),
        )
        if report.get(key)
    ]
    return ", ".join(found) or "see the report"


@guard
def _verify(args: argparse.Namespace) -> int:
    with _open(args) as store:
        report = store.verify(repair=args.repair)
    final = report
    if args.repair:
        # What the repair left, read from a fresh open (recovery counts are those of an open).
        with _open(args) as store:
            final = store.verify()
        report["after_repair"] = final
    if args.json:
        _print_json(report)
    else:
        rows = [[k, v] for k, v in report.items() if k != "after_repair"]
        if args.repair:
            rows += [[f"after repair: {k}", v] for k, v in final.items()]
        _table(rows, ["check", "result"])
    if final.get("ok"):
        return EXIT_OK
    if args.repair:
        return fail(f"damage remains after the repair: {_damage(final)}")
    return fail(f"the store is damaged: {_damage(final)} (verify --repair fixes what it can)")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add the store commands."""
    p = sub.add_parser(
        "stats",
        help="counts per category, users, embedding model, store size",
        description="Counts of the whole store (every user), or of one user with --user.",
    )
    _common(p, user=SCOPE)
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

    p = sub.add_parser(
        "add", help="add a memory", description="Add a memory (creates the store if needed)."
    )
    _common(p)
    p.add_argument("text")
    p.add_argument("--category", default="fact", choices=["preference", "fact", "context"])
    p.add_argument("--metadata", help="a JSON object")
    p.add_argument(
        "--dedup",
        action="store_true",
        help="when the user has this text, or a near-duplicate of it, print that memory "
        "(updated to this text) instead of adding a copy",
    )
    p.set_defaults(handler=_add)

    for name, handler, helptext in (
        ("show", _show, "show one memory (exit 3 if there is none)"),
        ("history", _history, "every version of a memory (exit 3 if there is none)"),
    ):
        p = sub.add_parser(name, help=helptext)
        _common(p)
        p.add_argument("id")
        p.set_defaults(handler=handler)

    p = sub.add_parser(
        "delete", help="soft-delete a memory (purged at the next compaction; exit 3 if none)"
    )
    _common(p, json_out=False)
    p.add_argument("id")
    p.set_defaults(handler=_delete)

    p = sub.add_parser(
        "forget",
        help="hard-delete memories (all of the user's, or each --id)",
        description=(
            "Hard-delete every version of the user's memories (all of them, or each --id), "
            "then compact. An --id the user never had exits 3 and nothing is forgotten."
        ),
    )
    _common(p, json_out=False)
    p.add_argument("--id", action="append", help="only this memory (repeatable)")
    p.set_defaults(handler=_forget)

    p = sub.add_parser("prune", help="delete a user's memories by age, category or count")
    _common(p, json_out=False)
    p.add_argument("--older-than-days", type=float)
    p.add_argument("--category", choices=["preference", "fact", "context"])
    p.add_argument("--keep-last", type=int)
    p.add_argument("--hard", action="store_true", help="purge the bytes now")
    p.set_defaults(handler=_prune)

    p = sub.add_parser(
        "export",
        help="export memories as JSONL (docs/export.md)",
        description="Export the memories of every user, or of one user with --user, as JSONL.",
    )
    _common(p, user=None, json_out=False)
    who = p.add_mutually_exclusive_group()
    who.add_argument("--user", help=_USER_HELP[SCOPE])
    who.add_argument(
        "--all-users", action="store_true", help="every user (the default without --user)"
    )
    p.add_argument("-o", "--output", default="-")
    p.add_argument("--vectors", action="store_true", help="include embedding vectors")
    p.set_defaults(handler=_export)

    p = sub.add_parser(
        "import",
        help="import a JSONL export, all of it or nothing (docs/export.md)",
        description=(
            "Import a JSONL export (docs/export.md); creates the store if needed. Every line "
            "is parsed and checked before anything is written: a bad line exits 1 naming it "
            "(line N: ...) and nothing is imported. Without --user each record goes to its own "
            "user_id and a record without one is an error; --user sets the owner of every "
            "record, overriding the file's user_id. A record whose id its user already has (live "
            "or soft-deleted) is skipped."
        ),
    )
    _common(p, user=OWNER, json_out=False)
    p.add_argument("input", nargs="?", default="-", help="the JSONL file (default: stdin)")
    p.set_defaults(handler=_import)

    p = sub.add_parser("compact", help="rewrite the log without dead records")
    _common(p, user=None)
    p.set_defaults(handler=_compact)

    p = sub.add_parser(
        "verify",
        help="check every record and index; --repair fixes",
        description=(
            "Check every record of the log and every index snapshot. Exit 0 when the store is "
            "clean; 1 when it is damaged. With --repair: damaged snapshots are deleted and a "
            "damaged log is compacted, then the store is checked again from a fresh open: "
            "exit 0 when it is clean or fully repaired, 1 when damage remains (e.g. stored "
            "vectors that are not finite, which no repair can fix)."
        ),
    )
    _common(p, user=None)
    p.add_argument("--repair", action="store_true", help="fix what can be fixed, then re-check")
    p.set_defaults(handler=_verify)
