"""The memory server: an OpenAI-compatible HTTP server with memory (``headroom-memory serve``).

A client in any language points its base URL at it. ``POST /v1/chat/completions`` goes through
the Python wrappers (``with_fast_memory`` / ``with_memory``) for the request's end user; every
other ``/v1`` route is passed to the upstream untouched; ``/v1/memory/...`` is the ``.memory``
API of one user over REST, described by ``/openapi.json``.

Modules: ``app`` (the Starlette application: identity, keys, the chat route, passthrough,
shutdown), ``rest`` (the ``/v1/memory`` routes and the OpenAPI document). Layer: above
``client``, below ``cli``; the openai SDK client it wraps is handed in by the caller
(``ServerConfig`` plus an ``SdkFactory``), so this package never imports the SDK itself.
"""

from __future__ import annotations

from .app import MemoryServer, SdkFactory, ServerConfig, create_app

__all__ = ["MemoryServer", "SdkFactory", "ServerConfig", "create_app"]
