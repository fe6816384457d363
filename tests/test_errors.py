"""Bad input raises a typed error of headroom.memory.errors at every door (types, store, the
``.memory`` facade of a wrapped client), and messages name the options that really exist."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import openai
import pytest
from store_helpers import HashEmbedder

from headroom.memory import types as T
from headroom.memory import with_fast_memory, with_memory
from headroom.memory.embedders import get_embedder
from headroom.memory.errors import (
    HeadroomMemoryError,
    InvalidInputError,
    InvalidMetadataError,
    InvalidSourceError,
    InvalidTimeError,
    StoreError,
    StoreNotFoundError,
)
from headroom.memory.store.store import MemoryStore

EMBEDDER = HashEmbedder(dim=32)
# Nothing is called over HTTP here: the facade never talks to the model.
BASE_URL = "http://127.0.0.1:9/v1"


def wrapped(tmp_path: Path) -> Any:
    base = openai.OpenAI(base_url=BASE_URL, api_key="test")
    return with_fast_memory(base, user_id="alice", db_path=tmp_path / "db", embedder=EMBEDDER)


def test_the_new_classes_sit_in_the_hierarchy() -> None:
    assert issubclass(InvalidTimeError, InvalidInputError)
    assert issubclass(InvalidTimeError, ValueError)
    assert issubclass(InvalidSourceError, InvalidInputError)
    assert issubclass(StoreNotFoundError, StoreError)
    assert issubclass(StoreNotFoundError, HeadroomMemoryError)


@pytest.mark.parametrize("value", ["yesterday", "2024-01-01", True, math.nan, math.inf, [1], 1e300])
def test_to_timestamp_us_raises_invalid_time(value: object) -> None:
    with pytest.raises(InvalidTimeError):
        T.to_timestamp_us(value)  # type: ignore[arg-type]


def test_to_timestamp_us_still_takes_datetimes_and_epoch_seconds() -> None:
    assert T.to_timestamp_us(None) is None
    assert T.to_timestamp_us(1.5) == 1_500_000
    assert T.to_timestamp_us(datetime(1970, 1, 1, 0, 0, 2, tzinfo=timezone.utc)) == 2_000_000


@pytest.mark.parametrize("value", ["bogus", "", None, ["manual"]])
def test_source_code_raises_invalid_source(value: object) -> None:
    with pytest.raises(InvalidSourceError, match="source must be one of"):
        T.source_code(value)  # type: ignore[arg-type]


@pytest.mark.parametrize("metadata", [["x"], ["ab"], "text", 3, {1: "x"}, {"x": math.nan}])
def test_validate_metadata_raises_invalid_metadata(metadata: object) -> None:
    with pytest.raises(InvalidMetadataError):
        T.validate_metadata(metadata)


def test_facade_add_with_list_metadata_is_typed_and_writes_nothing(tmp_path: Path) -> None:
    client = wrapped(tmp_path)
    with pytest.raises(InvalidMetadataError, match="metadata must be a mapping"):
        client.memory.add("hello", metadata=["x"])
    # A list of two-letter strings would have become {"a": "b"} through dict(); it is refused.
    with pytest.raises(InvalidMetadataError):
        client.memory.add("hello", metadata=["ab"])
    kept = client.memory.add("kept", metadata={"k": "v"})
    with pytest.raises(InvalidMetadataError):
        client.memory.update(kept.id, "changed", metadata=["x"])
    assert [(m.text, m.metadata) for m in client.memory.get_all()] == [("kept", {"k": "v"})]
    client.close()


def test_facade_add_with_a_bad_time_is_typed(tmp_path: Path) -> None:
    client = wrapped(tmp_path)
    for bad in ("yesterday", math.nan, True):
        with pytest.raises(InvalidTimeError, match="a time must be"):
            client.memory.add("hello", created_at=bad)
    with pytest.raises(InvalidTimeError):
        client.memory.search("hello", since="last week")
    with pytest.raises(InvalidTimeError):
        client.memory.prune(older_than="last week")
    assert client.memory.get_all() == []
    client.close()


def test_store_raises_the_same_typed_errors(tmp_path: Path) -> None:
    with MemoryStore(tmp_path / "db", embedder=EMBEDDER) as store:
        with pytest.raises(InvalidTimeError):
            store.add("u", "hello", created_at="yesterday")  # type: ignore[arg-type]
        with pytest.raises(InvalidMetadataError):
            store.add("u", "hello", metadata=["x"])  # type: ignore[arg-type]
        with pytest.raises(InvalidSourceError):
            store.add("u", "hello", source="cli")
        assert store.get_all("u") == []


def test_an_unknown_local_model_names_the_wrappers_option(tmp_path: Path) -> None:
    base = openai.OpenAI(base_url=BASE_URL, api_key="test")
    for wrap in (with_fast_memory, with_memory):
        with pytest.raises(InvalidInputError) as caught:
            wrap(base, user_id="alice", db_path=tmp_path / "db", embedding_model="bogus")
        message = str(caught.value)
        assert "use_local_embeddings=False" in message and "'bogus'" in message
        assert "use use_local=False" not in message
    assert not (tmp_path / "db").exists()  # refused before the store was opened


def test_get_embedder_names_its_own_option() -> None:
    with pytest.raises(InvalidInputError) as caught:
        get_embedder(model="bogus")
    assert "get_embedder(use_local=False" in str(caught.value)
