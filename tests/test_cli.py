"""The headroom-memory command line, in process, on real stores with the real MiniLM model."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from openai_server import ScriptedServer, memory_reply

from headroom.memory.cli.main import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


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
