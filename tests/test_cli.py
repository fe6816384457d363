"""The headroom-memory command line on real stores: in process through ``main``, and as a
subprocess where stderr must show one line and no traceback. Commands that embed use the real
MiniLM model; stores that are only read are written with the deterministic HashEmbedder."""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _native_helpers import FRAME_HEADER, crc32c, frames, mask, patch, segments
from openai_server import ScriptedServer, memory_reply
from store_helpers import HashEmbedder

from headroom.memory.cli.main import build_parser, main
from headroom.memory.embedders.openai_embedder import OpenAIEmbedder
from headroom.memory.embedders.resolve import MODEL_ID as MINILM_ID
from headroom.memory.store.store import MemoryStore


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_add_keeps_copies_unless_dedup(tmp_path: Path, capsys) -> None:
    db = str(tmp_path / "db")
    ids = [run(capsys, "add", "--db", db, "--user", "u", "Likes tea")[1].strip() for _ in "ab"]
    assert len(set(ids)) == 2
    code, out, _ = run(capsys, "add", "--db", db, "--user", "u", "likes tea.", "--dedup")
    assert code == 0 and out.strip() in ids  # a stored memory, not a third copy
    with MemoryStore(db) as store:
        assert [m.text for m in store.get_all("u")] == ["Likes tea", "Likes tea"]


def test_add_list_search_show_history_delete(tmp_path: Path, capsys) -> None:
    db = str(tmp_path / "db")
    code, out, _ = run(capsys, "add", "--db", db, "--user", "u", "User prefers tea", "--category",
                       "preference")  # fmt: skip
    assert code == 0
    memory_id = out.strip()
    run(capsys, "add", "--db", db, "--user", "u", "User lives in Oslo")
    code, out, _ = run(capsys, "list", "--db", db, "--user", "u", "--json")
    assert code == 0 and [m["text"] for m in json.loads(out)] == [
        "User prefers tea",
        "User lives in Oslo",
    ]
    code, out, _ = run(capsys, "search", "--db", db, "--user", "u", "hot drinks", "--json")
    assert json.loads(out)[0]["id"] == memory_id
    code, out, _ = run(capsys, "search", "--db", db, "--user", "u", "hot drinks")
    assert "score" in out.splitlines()[0] and "User prefers tea" in out
    assert run(capsys, "show", "--db", db, "--user", "u", memory_id)[0] == 0
    code, out, _ = run(capsys, "history", "--db", db, "--user", "u", memory_id, "--json")
    assert [v["operation"] for v in json.loads(out)] == ["add"]
    code, _, err = run(capsys, "show", "--db", db, "--user", "other", memory_id)
    assert code == 3 and "no memory" in err
    assert run(capsys, "delete", "--db", db, "--user", "u", memory_id)[0] == 0
    assert run(capsys, "delete", "--db", db, "--user", "u", memory_id)[0] == 3
    code, out, _ = run(capsys, "stats", "--db", db, "--user", "u", "--json")
    assert json.loads(out)["total_chunks"] == 1


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["add", "--db", str(tmp_path / "db"), "x", "--category", "hobby"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2


def test_bad_input_exits_1_with_a_message(tmp_path: Path, capsys) -> None:
    code, _, err = run(capsys, "add", "--db", str(tmp_path / "db"), "--user", "u", "   ")
    assert code == 1 and "must not be empty" in err


def test_export_import_forget_compact_verify(tmp_path: Path, capsys) -> None:
    db, db2, dump = str(tmp_path / "db"), str(tmp_path / "db2"), str(tmp_path / "dump.jsonl")
    for text in ("SECRET-one", "kept two"):
        run(capsys, "add", "--db", db, "--user", "u", text)
    assert run(capsys, "export", "--db", db, "--all-users", "-o", dump)[0] == 0
    assert len(Path(dump).read_text().splitlines()) == 2
    code, out, _ = run(capsys, "import", "--db", db2, dump)
    assert code == 0 and "imported 2" in out
    code, out, _ = run(capsys, "export", "--db", db2, "--user", "u")
    assert out.splitlines() == Path(dump).read_text().splitlines()
    assert run(capsys, "forget", "--db", db2, "--user", "u")[0] == 0
    blob = b"".join(p.read_bytes() for p in Path(db2).rglob("*") if p.is_file())
    assert b"SECRET-one" not in blob
    code, out, _ = run(capsys, "compact", "--db", db, "--json")
    assert code == 0 and "bytes_after" in json.loads(out)
    code, out, _ = run(capsys, "verify", "--db", db, "--json")
    assert code == 0 and json.loads(out)["ok"] is True
    # A torn tail (a crash mid-write) is truncated on open and reported by verify.
    segment = max(Path(db).glob("*.log"))
    with open(segment, "ab") as fh:
        fh.write(b"\x00torn")
    code, out, _ = run(capsys, "verify", "--db", db, "--json")
    report = json.loads(out)
    assert code == 1 and report["ok"] is False and report["recovered_torn_tail_bytes"] == 5
    assert report["records"] == 3  # two memories and the embedding model record
    code, out, _ = run(capsys, "verify", "--db", db, "--json")  # the open truncated it
    assert code == 0 and json.loads(out)["ok"] is True


def test_chat_shows_injected_and_extracted(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ScriptedServer() as server:
        server.push(
            memory_reply("Nice!", "User plays the cello"),
            memory_reply("You play the cello."),
        )
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        monkeypatch.setattr("sys.stdin", io.StringIO("I play the cello\nWhat instrument?\n\n"))
        code, out, err = run(capsys, "chat", "--db", str(tmp_path / "db"), "--user", "u",
                             "--base-url", server.base_url, "--model", "m")  # fmt: skip
    assert code == 0
    assert "Nice!" in out and "<memory>" not in out
    assert "[extracted +fact] User plays the cello" in err
    assert "[injected m1" in err and "User plays the cello" in err.split("[injected m1")[1]


def test_reembed_to_an_api_model(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    db = str(tmp_path / "db")
    run(capsys, "add", "--db", db, "--user", "u", "User likes jazz")
    with ScriptedServer() as server:
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        code, out, _ = run(capsys, "reembed", "--db", db, "--model",
                           "openai:text-embedding-3-small", "--dimensions", "64")  # fmt: skip
        assert code == 0 and "re-embedded 1" in out
        code, out, _ = run(capsys, "search", "--db", db, "--user", "u", "User likes jazz", "--json")
        assert code == 0 and json.loads(out)[0]["text"] == "User likes jazz"


# --- issue #11 item 8: what the README promises --------------------------------------------------

ENV_WITHOUT_OPENAI = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}


def cli(*argv: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Any:
    """The real console entry point in a subprocess (so a traceback would show on stderr)."""
    return subprocess.run(
        [sys.executable, "-m", "headroom.memory.cli", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV_WITHOUT_OPENAI if env is None else env,
        input=stdin,
    )


def one_line(err: str) -> str:
    """stderr of a failed command: exactly one line, no traceback."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("headroom-memory: "), err
    return lines[0]


def hash_store(db: Path, memories: dict[str, list[str]]) -> dict[str, list[str]]:
    """A store written with the deterministic HashEmbedder; returns the ids per user."""
    ids: dict[str, list[str]] = {}
    with MemoryStore(db, embedder=HashEmbedder(dim=8)) as store:
        for user, texts in memories.items():
            ids[user] = [store.add(user, text).id for text in texts]
    return ids


def record(text: str, user: str | None = None, memory_id: str | None = None) -> str:
    fields: dict[str, Any] = {"text": text, "category": "fact"}
    if user is not None:
        fields["user_id"] = user
    if memory_id is not None:
        fields["id"] = memory_id
    return json.dumps(fields)


def test_import_user_sets_the_owner_of_every_record(tmp_path: Path, capsys) -> None:
    db, dump = str(tmp_path / "db"), tmp_path / "dump.jsonl"
    dump.write_text(record("User likes tea") + "\n" + record("User owns a bike", "else") + "\n")
    code, out, err = run(capsys, "import", dump.as_posix(), "--db", db, "--user", "u")
    assert (code, out.strip()) == (0, "imported 2 memories"), err
    code, out, _ = run(capsys, "list", "--db", db, "--user", "u", "--json")
    assert sorted(m["text"] for m in json.loads(out)) == ["User likes tea", "User owns a bike"]
    code, out, _ = run(capsys, "stats", "--db", db, "--json")
    assert json.loads(out)["users"] == 1  # the file's user "else" was overridden
    # From standard input (no FILE, or "-") too.
    result = cli("import", "--db", db, "--user", "v", stdin=record("User rides trains") + "\n")
    assert result.returncode == 0 and result.stdout.strip() == "imported 1 memories", result.stderr


def test_import_without_user_needs_a_user_id_in_every_record(tmp_path: Path, capsys) -> None:
    db, dump = tmp_path / "db", tmp_path / "dump.jsonl"
    dump.write_text(record("User likes tea", "u") + "\n" + record("User owns a bike") + "\n")
    code, _, err = run(capsys, "import", dump.as_posix(), "--db", str(db))
    assert code == 1 and "line 2: user_id is missing" in one_line(err)
    assert not db.exists()  # checked before the store was opened


def test_import_a_bad_line_imports_nothing_and_names_the_line(tmp_path: Path) -> None:
    db, dump = tmp_path / "db", tmp_path / "dump.jsonl"
    hash_store(db, {"u": ["User has a cat"]})
    before = sorted((p.name, p.read_bytes()) for p in db.iterdir())
    good = record("User likes tea", "u")
    dump.write_text(f"{good}\n{{not json\n{record('User owns a bike', 'u')}\n")
    result = cli("import", str(dump), "--db", str(db))
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert "line 2: not valid JSON" in line and "(column 2)" in line
    assert "nothing was imported" in line
    # Every line or none: the first good line was not written either.
    assert sorted((p.name, p.read_bytes()) for p in db.iterdir()) == before
    for bad, why in (
        ('["a list"]', "line 2: a record must be a JSON object"),
        (json.dumps({"user_id": "u", "text": " "}), "line 2: memory text must not be empty"),
        (json.dumps({"user_id": "u", "text": "x", "category": "hobby"}), "line 2: category"),
        (
            json.dumps({"user_id": "u", "text": "x", "created_at": "yesterday"}),
            "line 2: created_at",
        ),
        (json.dumps({"user_id": "u", "text": "x", "metadata": [1]}), "line 2: metadata"),
    ):
        dump.write_text(f"{good}\n{bad}\n")
        result = cli("import", str(dump), "--db", str(db))
        assert result.returncode == 1 and why in one_line(result.stderr), (bad, result.stderr)
    dump.write_bytes(good.encode() + b"\n\xff\xfe\n")
    result = cli("import", str(dump), "--db", str(db))
    assert result.returncode == 1 and "line 2: not UTF-8 text" in one_line(result.stderr)
    assert sorted((p.name, p.read_bytes()) for p in db.iterdir()) == before
    result = cli("import", str(tmp_path / "missing.jsonl"), "--db", str(db))
    assert result.returncode == 1 and "missing.jsonl" in one_line(result.stderr)


def test_api_store_without_an_api_key_is_one_line_and_exit_1(tmp_path: Path) -> None:
    db = tmp_path / "db"
    with ScriptedServer() as server:
        embedder = OpenAIEmbedder(base_url=server.base_url, api_key="test", dimensions=16)
        with MemoryStore(db, embedder=embedder) as store:
            store.add("u", "User likes jazz")
    for argv in (("search", "jazz"), ("add", "User likes blues")):
        result = cli(*argv, "--db", str(db), "--user", "u")
        assert result.returncode == 1, result.stderr
        assert "OPENAI_API_KEY" in one_line(result.stderr)
    # Without a key the chat cannot start either: one line, exit 1, no store created.
    chat = cli("chat", "--db", str(tmp_path / "chat.db"), "--user", "u", stdin="hi\n\n")
    assert chat.returncode == 1 and "OPENAI_API_KEY" in one_line(chat.stderr)
    assert not (tmp_path / "chat.db").exists()


READ_COMMANDS: list[tuple[str, ...]] = [
    ("stats",),
    ("list", "--user", "u"),
    ("search", "--user", "u", "tea"),
    ("show", "--user", "u", "some-id"),
    ("history", "--user", "u", "some-id"),
    ("export",),
    ("verify",),
    ("verify", "--repair"),
    ("delete", "--user", "u", "some-id"),
    ("forget", "--user", "u"),
    ("prune", "--user", "u", "--keep-last", "1"),
    ("compact",),
    ("reembed", "--model", "all-MiniLM-L6-v2"),
]


@pytest.mark.parametrize("argv", READ_COMMANDS, ids=[" ".join(a) for a in READ_COMMANDS])
def test_read_commands_never_create_a_store(tmp_path: Path, capsys, argv: tuple[str, ...]) -> None:
    typo = tmp_path / "typo.db"
    code, _, err = run(capsys, *argv, "--db", str(typo))
    assert code == 3 and one_line(err) == f"headroom-memory: no store at {typo}"
    assert not typo.exists()
    # A directory without a log segment or a LOCK file is not a store either; it stays empty.
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, *argv, "--db", str(empty))
    assert code == 3 and one_line(err) == f"headroom-memory: no store at {empty}"
    assert list(empty.iterdir()) == []


def test_export_to_a_file_from_no_store_writes_no_file(tmp_path: Path, capsys) -> None:
    out_file = tmp_path / "out.jsonl"
    code, _, _ = run(capsys, "export", "--db", str(tmp_path / "typo.db"), "-o", str(out_file))
    assert code == 3 and not out_file.exists()


def test_missing_ids_exit_3_everywhere(tmp_path: Path, capsys) -> None:
    db = tmp_path / "db"
    ids = hash_store(db, {"u": ["User has a cat", "User has a dog"]})
    for argv in (("show", "nosuch"), ("history", "nosuch"), ("delete", "nosuch"),
                 ("forget", "--id", "nosuch"), ("forget", "--id", ids["u"][0], "--id", "nosuch"),
                 ("show", ids["u"][0], "--user", "other")):  # fmt: skip
        code, _, err = run(
            capsys, *argv, "--db", str(db), *(() if "--user" in argv else ("--user", "u"))
        )
        assert code == 3, argv
        assert "nosuch" in one_line(err) or "other" in err
    # Nothing was forgotten by the refused forget; a real --id is forgotten.
    code, out, _ = run(capsys, "list", "--db", str(db), "--user", "u", "--json")
    assert [m["id"] for m in json.loads(out)] == ids["u"]
    assert run(capsys, "forget", "--db", str(db), "--user", "u", "--id", ids["u"][0])[0] == 0
    # A soft-deleted memory can still be forgotten by id (its history is still there).
    assert run(capsys, "delete", "--db", str(db), "--user", "u", ids["u"][1])[0] == 0
    assert run(capsys, "forget", "--db", str(db), "--user", "u", "--id", ids["u"][1])[0] == 0
    assert run(capsys, "history", "--db", str(db), "--user", "u", ids["u"][1])[0] == 3


def test_user_rule_required_for_one_user_whole_store_otherwise(tmp_path: Path, capsys) -> None:
    db = tmp_path / "db"
    hash_store(db, {"alice": ["User has a cat", "User has a dog"], "bob": ["User has a fish"]})
    for argv in (("list",), ("search", "cat"), ("add", "x"), ("show", "i"), ("history", "i"),
                 ("delete", "i"), ("forget",), ("prune", "--keep-last", "1"),
                 ("chat",)):  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--db", str(db)])
        assert exc.value.code == 2, argv
        assert "--user" in capsys.readouterr().err
    code, out, _ = run(capsys, "stats", "--db", str(db), "--json")
    stats = json.loads(out)
    assert code == 0 and (stats["total_chunks"], stats["users"]) == (3, 2)
    code, out, _ = run(capsys, "stats", "--db", str(db), "--user", "bob", "--json")
    assert json.loads(out)["total_chunks"] == 1
    code, out, _ = run(capsys, "export", "--db", str(db))
    assert sorted(json.loads(line)["user_id"] for line in out.splitlines()) == [
        "alice", "alice", "bob"]  # fmt: skip
    code, out, _ = run(capsys, "export", "--db", str(db), "--user", "bob")
    assert [json.loads(line)["text"] for line in out.splitlines()] == ["User has a fish"]
    with pytest.raises(SystemExit) as exc:
        main(["export", "--db", str(db), "--user", "bob", "--all-users"])
    assert exc.value.code == 2
    capsys.readouterr()
    helps = {name: _help(capsys, name) for name in ("list", "stats", "export", "import")}
    assert "(required)" in helps["list"] and "every user" in helps["stats"]
    assert all("3 not found" in text for text in helps.values())
    assert "every user" in helps["export"] and "overriding the file's user_id" in helps["import"]
    assert "3 not found" in _help(capsys) and "require --user" in _help(capsys)


def _help(capsys: pytest.CaptureFixture[str], *command: str) -> str:
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_stats_json_names_the_model_the_store_was_written_with(tmp_path: Path, capsys) -> None:
    db = str(tmp_path / "db")
    assert run(capsys, "add", "--db", db, "--user", "u", "User likes tea")[0] == 0
    code, out, _ = run(capsys, "stats", "--db", db, "--json")
    assert code == 0 and json.loads(out)["embedding_model"] == MINILM_ID
    hash_db = tmp_path / "hash"
    hash_store(hash_db, {"u": ["User likes tea"]})
    code, out, _ = run(capsys, "stats", "--db", str(hash_db), "--json")
    assert json.loads(out)["embedding_model"] == "test/hash-8"


def test_bad_metadata_is_one_line_and_exit_1(tmp_path: Path, capsys) -> None:
    db = tmp_path / "db"
    for metadata, why in (("nope", "--metadata is not valid JSON"), ('["x"]', "mapping")):
        code, _, err = run(
            capsys, "add", "--db", str(db), "--user", "u", "x", "--metadata", metadata
        )
        assert code == 1 and why in one_line(err)
    code, _, err = run(capsys, "add", "--db", str(db), "--user", "", "x")
    assert code == 1 and "user_id must not be empty" in one_line(err)
    assert not db.exists()  # bad input never creates a store


def test_reembed_names_its_real_options(tmp_path: Path, capsys) -> None:
    db = tmp_path / "db"
    hash_store(db, {"u": ["User likes tea"]})
    code, _, err = run(capsys, "reembed", "--db", str(db), "--model", "bogus")
    assert code == 1 and "openai:MODEL" in one_line(err) and "use_local" not in err


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                for inner, leaf in _subcommands(sub):
                    yield f"{name} {inner}", leaf


def test_every_command_runs_under_the_guard() -> None:
    commands = dict(_subcommands(build_parser()))
    assert {"stats", "import", "verify", "model download", "model info", "chat", "reembed",
            "demo"} <= set(commands)  # fmt: skip
    for name, sub in commands.items():
        handler = sub.get_default("handler")
        if handler is not None:
            assert getattr(handler, "guarded", False), f"{name} does not run under guard"


def _nan_vector(db: Path) -> None:
    """Overwrite one float of the first stored vector with NaN, with a valid frame checksum."""
    segment = segments(db)[0]
    frame = next(f for f in frames(segment) if any(e["vector"] is not None for e in f.entries))
    dim = len(next(e["vector"] for e in frame.entries if e["vector"] is not None))
    data = bytearray(segment.read_bytes())
    start, end = frame.offset + FRAME_HEADER, frame.offset + FRAME_HEADER + frame.length
    data[end - 4 * dim : end - 4 * dim + 4] = struct.pack("<f", math.nan)
    checksum = mask(crc32c(bytes(data[start:end]), crc32c(b"\x01")))
    data[frame.offset + 9 : frame.offset + 13] = struct.pack("<I", checksum)
    segment.write_bytes(bytes(data))


def test_verify_repair_exit_codes(tmp_path: Path, capsys) -> None:
    # A corrupt frame in the middle of a segment: the repair compacts it away -> exit 0.
    db = tmp_path / "db"
    hash_store(db, {"u": ["User has a cat", "User has a dog", "User has a fish"]})
    segment = segments(db)[0]
    patch(segment, list(frames(segment))[2].offset + FRAME_HEADER + 10, b"\xff\xff\xff")
    code, _, err = run(capsys, "verify", "--db", str(db))
    assert code == 1 and "the store is damaged" in one_line(err)
    # As a process too: the library's recovery warning is not repeated beside the report.
    result = cli("verify", "--db", str(db))
    assert result.returncode == 1 and "the store is damaged" in one_line(result.stderr)
    result = cli("list", "--db", str(db), "--user", "u")
    assert result.returncode == 0
    assert one_line(result.stderr).startswith("headroom-memory: warning: the store at")
    code, out, err = run(capsys, "verify", "--db", str(db), "--repair", "--json")
    report = json.loads(out)
    assert code == 0, err
    assert report["repaired"] is True and report["after_repair"]["ok"] is True
    assert run(capsys, "verify", "--db", str(db))[0] == 0
    # A vector that is not finite: no repair fixes it -> exit 1, one line saying what remains.
    bad = tmp_path / "bad"
    hash_store(bad, {"u": ["User has a cat", "User has a dog"]})
    _nan_vector(bad)
    code, out, err = run(capsys, "verify", "--db", str(bad), "--repair")
    assert code == 1 and "damage remains after the repair: 1 stored vectors" in one_line(err)
    assert "after repair: ok" in out
    # A clean store: 0 with or without --repair.
    clean = tmp_path / "clean"
    hash_store(clean, {"u": ["User has a cat"]})
    assert run(capsys, "verify", "--db", str(clean), "--repair")[0] == 0
    assert run(capsys, "verify", "--db", str(clean))[0] == 0
