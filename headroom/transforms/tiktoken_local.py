"""Exact token counts with tiktoken, but only when that needs no network.

tiktoken is an optional extra (``pip install headroom-memory[tiktoken]``). On first use of an
encoding it downloads the encoding file and caches it; a request path must never wait on that
download (or hang on a machine without network). So before asking tiktoken for an encoding we
check, without any network call, that its cache already holds the file:

- the cache directory is the one tiktoken uses: ``$TIKTOKEN_CACHE_DIR``, else
  ``$DATA_GYM_CACHE_DIR``, else ``<tempdir>/data-gym-cache``; an empty value disables the cache,
  and then nothing counts as local;
- the file is named by the SHA-1 of its source address (tiktoken's own naming) and must match
  the SHA-256 tiktoken expects; otherwise tiktoken would delete it and download it again.

Only then is ``tiktoken.get_encoding`` called; it reads the verified file and never downloads
(this relies on tiktoken's cache naming; a test pins it against the installed tiktoken).
To pre-fill the cache on a machine with network access: ``python -c "import tiktoken;
tiktoken.get_encoding('o200k_base')"`` (with ``TIKTOKEN_CACHE_DIR`` set if the default temporary
directory is cleared between runs).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["KNOWN_ENCODINGS", "cached_encoding_file", "load_local_encoding", "tiktoken_cache_dir"]

_BLOB = "https://openaipublic.blob.core.windows.net/encodings/"

#: Encodings we can verify offline: name -> (tiktoken's source address, expected SHA-256).
KNOWN_ENCODINGS: dict[str, tuple[str, str]] = {
    "o200k_base": (
        _BLOB + "o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
    "cl100k_base": (
        _BLOB + "cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
}


def tiktoken_cache_dir() -> Path | None:
    """The directory tiktoken caches encoding files in, or None when its cache is disabled."""
    for variable in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if variable in os.environ:
            value = os.environ[variable]
            return Path(value) if value else None
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def cached_encoding_file(name: str) -> Path | None:
    """The verified cache file of encoding ``name``, or None if it is absent, damaged or unknown.

    Reads the file to check its SHA-256 (a few MB, once per process in practice); never
    touches the network.
    """
    known = KNOWN_ENCODINGS.get(name)
    cache = tiktoken_cache_dir()
    if known is None or cache is None:
        return None
    source, expected_sha256 = known
    path = cache / hashlib.sha1(source.encode()).hexdigest()
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != expected_sha256:
        return None
    return path


def load_local_encoding(name: str) -> Callable[[str], int] | None:
    """A text -> token count function for encoding ``name``, if it loads without network.

    Returns None when tiktoken is not installed, the encoding is not one of
    :data:`KNOWN_ENCODINGS`, or its file is not in tiktoken's cache. Special-token strings in
    the text (``<|endoftext|>``) are counted as ordinary text, as the API does for user content.
    """
    if cached_encoding_file(name) is None:
        return None
    try:  # imported by name: tiktoken is optional, and type checking must pass without it
        tiktoken = importlib.import_module("tiktoken")
    except ImportError:
        return None
    try:
        encoding = tiktoken.get_encoding(name)
    except Exception:  # a damaged or unreadable file: fall back to the estimate
        return None

    def count(text: str) -> int:
        return len(encoding.encode_ordinary(text))

    return count
