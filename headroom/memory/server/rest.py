"""The ``.memory`` API of one user over REST, and its OpenAPI document.

Every route acts for one end user, found as on the chat route: a user key, else the ``user``
field (JSON body of POST/PATCH, query parameter of GET/DELETE), else ``safety_identifier``,
else the ``X-Headroom-User`` header. No user is 400. The operations are the wrapped client's
``client.memory`` (``AsyncMemoryFacade``): they see every write of a call that returned before.

Errors are JSON (``{"error": {"message", "type", "code"}}``): malformed JSON, an unknown or
mistyped field and every ``InvalidInputError`` of the memory layer are 400; a memory that does
not exist (or is another user's) is 404. Times (``created_at``, ``since``, ``until``) are
epoch seconds or ISO 8601 strings; memories come back with ISO 8601 UTC times.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import HeadroomMemoryError
from ..types import Memory, MemoryVersion
from .app import HttpError, error_for

if TYPE_CHECKING:
    from .app import MemoryServer

_IDENTITY = ("user", "safety_identifier")


def _bad(message: str) -> HttpError:
    return HttpError(400, message, "invalid_request_error", "InvalidInputError")


def _iso(value: datetime) -> str:
    return value.isoformat()


def memory_json(memory: Memory) -> dict[str, Any]:
    """A memory as JSON (times in ISO 8601)."""
    return {
        "id": memory.id,
        "text": memory.text,
        "category": memory.category,
        "created_at": _iso(memory.created_at),
        "updated_at": _iso(memory.updated_at),
        "source": memory.source,
        "metadata": memory.metadata,
    }


def version_json(version: MemoryVersion) -> dict[str, Any]:
    """One version of a memory's history as JSON."""
    out = dataclasses.asdict(version)
    out["at"] = _iso(version.at)
    return out


def _time(name: str, value: Any) -> datetime | float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise _bad(f"{name} must be epoch seconds or an ISO 8601 string; got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    raise _bad(f"{name} must be epoch seconds or an ISO 8601 string; got {value!r}")


def _int(name: str, value: Any, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise _bad(f"{name} must be an integer; got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{name} must be an integer; got {value!r}")
    return value


def _str(name: str, value: Any, required: bool = False) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise _bad(f"{name} must be a string; got {value!r}")
    return value


def _metadata(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, str):  # a query parameter: JSON text
        try:
            value = json.loads(value)
        except ValueError:
            raise _bad("metadata must be a JSON object") from None
    if not isinstance(value, dict):
        raise _bad(f"metadata must be a JSON object; got {value!r}")
    return value


def _fields(data: Mapping[str, Any], allowed: Iterable[str]) -> None:
    unknown = sorted(set(data) - set(allowed) - set(_IDENTITY))
    if unknown:
        raise _bad(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(allowed))}")


async def _json_body(request: Request) -> dict[str, Any]:
    """The JSON object of a write's body ({} for none); a body must say application/json."""
    raw = await request.body()
    if not raw.strip():
        return {}
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind != "application/json" and not kind.endswith("+json"):
        raise HttpError(
            415, f"the body must be sent as application/json; got {kind or 'no content type'}",
            "invalid_request_error",
        )  # fmt: skip
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise _bad(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _bad("the body must be a JSON object")
    return body


Handler = Callable[[Any, dict[str, Any], Request], Awaitable[Response]]


def memory_routes(server: MemoryServer) -> list[Route]:
    """The ``/v1/memory`` routes and ``/openapi.json``, bound to ``server``."""

    def route(path: str, method: str, handler: Handler) -> Route:
        async def endpoint(request: Request) -> Response:
            pinned = server.authorize(request)
            if method in ("POST", "PATCH"):
                data = await _json_body(request)
            else:
                data = dict(request.query_params)
            user = server.user_of(pinned, data, request.headers)
            if user is None:
                raise _bad(
                    "no user: set the user field (query parameter user on GET and DELETE), "
                    "safety_identifier or the X-Headroom-User header"
                )
            try:
                memory = server.wrap(user).memory
                return await handler(memory, data, request)
            except HeadroomMemoryError as exc:
                raise error_for(exc) from None

        return Route(path, endpoint, methods=[method])

    async def search(memory: Any, data: dict[str, Any], request: Request) -> Response:
        allowed = ("query", "top_k", "category", "since", "until", "min_score", "metadata")
        _fields(data, allowed)
        query = _str("query", data.get("query"), required=True)
        min_score = data.get("min_score")
        if min_score is not None and (
            isinstance(min_score, bool) or not isinstance(min_score, (int, float))
        ):
            raise _bad(f"min_score must be a number; got {min_score!r}")
        found = await memory.search(
            query,
            top_k=_int("top_k", data.get("top_k"), 5),
            category=_str("category", data.get("category")),
            since=_time("since", data.get("since")),
            until=_time("until", data.get("until")),
            min_score=min_score,
            metadata=_metadata(data.get("metadata")),
        )
        results = [{"memory": memory_json(m), "score": float(s)} for m, s in found]
        return JSONResponse({"results": results})

    async def add(memory: Any, data: dict[str, Any], request: Request) -> Response:
        _fields(data, ("text", "category", "metadata", "created_at", "dedup"))
        dedup = data.get("dedup", False)
        if not isinstance(dedup, bool):
            raise _bad(f"dedup must be true or false; got {dedup!r}")
        added = await memory.add(
            _str("text", data.get("text"), required=True),
            category=_str("category", data.get("category")) or "fact",
            metadata=_metadata(data.get("metadata")),
            created_at=_time("created_at", data.get("created_at")),
            dedup=dedup,
        )
        return JSONResponse(memory_json(added), status_code=201)

    async def list_all(memory: Any, data: dict[str, Any], request: Request) -> Response:
        _fields(data, ("category", "since", "until", "metadata"))
        found = await memory.get_all(
            category=_str("category", data.get("category")),
            since=_time("since", data.get("since")),
            until=_time("until", data.get("until")),
            metadata=_metadata(data.get("metadata")),
        )
        return JSONResponse({"memories": [memory_json(m) for m in found]})

    def _id(request: Request) -> str:
        return str(request.path_params["memory_id"])

    async def get(memory: Any, data: dict[str, Any], request: Request) -> Response:
        _fields(data, ())
        found = await memory.get(_id(request))
        if found is None:
            raise HttpError(404, f"no memory {_id(request)!r}", "not_found", "MemoryNotFoundError")
        return JSONResponse(memory_json(found))

    async def update(memory: Any, data: dict[str, Any], request: Request) -> Response:
        _fields(data, ("text", "category", "metadata"))
        updated = await memory.update(
            _id(request),
            _str("text", data.get("text"), required=True),
            category=_str("category", data.get("category")),
            metadata=_metadata(data.get("metadata")),
        )
        return JSONResponse(memory_json(updated))

    async def delete(memory: Any, data: dict[str, Any], request: Request) -> Response:
        _fields(data, ())
        await memory.delete(_id(request))
        return JSONResponse({"deleted": _id(request)})

    async def history(memory: Any, data: dict[str, Any], request: Request) -> Response:
        _fields(data, ())
        versions = await memory.history(_id(request))
        if not versions:
            raise HttpError(404, f"no memory {_id(request)!r}", "not_found", "MemoryNotFoundError")
        return JSONResponse({"versions": [version_json(v) for v in versions]})

    async def forget(memory: Any, data: dict[str, Any], request: Request) -> Response:
        _fields(data, ("ids",))
        ids = data.get("ids")
        if ids is not None and (
            not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)
        ):
            raise _bad(f"ids must be a list of strings; got {ids!r}")
        return JSONResponse({"forgotten": await memory.forget(ids)})

    async def export(memory: Any, data: dict[str, Any], request: Request) -> Response:
        _fields(data, ("include_vectors",))
        flag = str(data.get("include_vectors", "false")).lower()
        if flag not in ("true", "false", "1", "0"):
            raise _bad(f"include_vectors must be true or false; got {flag!r}")
        lines = await memory.export(include_vectors=flag in ("true", "1"))
        text = "".join(json.dumps(line, default=str) + "\n" for line in lines)
        return Response(text, media_type="application/x-ndjson")

    async def stats(memory: Any, data: dict[str, Any], request: Request) -> Response:
        _fields(data, ())
        return JSONResponse(json.loads(json.dumps(await memory.stats(), default=str)))

    async def openapi(request: Request) -> Response:
        return JSONResponse(OPENAPI)

    item = "/v1/memory/memories/{memory_id}"
    return [
        route("/v1/memory/search", "POST", search),
        route("/v1/memory/memories", "POST", add),
        route("/v1/memory/memories", "GET", list_all),
        route(item, "GET", get),
        route(item, "PATCH", update),
        route(item, "DELETE", delete),
        route(item + "/history", "GET", history),
        route("/v1/memory/forget", "POST", forget),
        route("/v1/memory/export", "GET", export),
        route("/v1/memory/stats", "GET", stats),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]


# --- the OpenAPI document ---------------------------------------------------------------------


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": _json(_ref("Error"), "bad input (the message names the problem), or no user"),
    "401": _json(_ref("Error"), "the server key is missing or wrong"),
    "403": _json(_ref("Error"), "the user field names another user than the user key's"),
}
_NOT_FOUND = {"404": _json(_ref("Error"), "no such memory for this user")}
_USER_PARAMS = [
    {
        "name": "user",
        "in": "query",
        "schema": {"type": "string"},
        "description": "the end user (else safety_identifier, else X-Headroom-User)",
    },
    {"name": "safety_identifier", "in": "query", "schema": {"type": "string"}},
    {"name": "X-Headroom-User", "in": "header", "schema": {"type": "string"}},
    {
        "name": "X-Headroom-Key",
        "in": "header",
        "schema": {"type": "string"},
        "description": "the server key or a user key, when the server requires one",
    },
]
_ID_PARAM = {"name": "memory_id", "in": "path", "required": True, "schema": {"type": "string"}}
_TIME = {"oneOf": [{"type": "number"}, {"type": "string", "format": "date-time"}]}
_CATEGORY = {"type": "string", "enum": ["preference", "fact", "context"]}
_IDENTITY_PROPS = {"user": {"type": "string"}, "safety_identifier": {"type": "string"}}


def _body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = {
        "type": "object",
        "properties": {**properties, **_IDENTITY_PROPS},
        "required": required,
        "additionalProperties": False,
    }
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _passthrough_body(required: tuple[str, ...]) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "user": {"type": "string", "description": "the end user whose memories are used"},
        "safety_identifier": {"type": "string", "description": "the end user, when no user"},
        "memory": {"type": "string", "enum": ["on", "off", "read", "write"], "default": "on"},
    }
    schema = {"type": "object", "properties": properties, "required": list(required)}
    return {"required": True, "content": {"application/json": {"schema": schema}}}


_UPSTREAM = {
    "200": {
        "description": "the upstream's answer without the memory block (JSON, or "
        "text/event-stream when stream is true)"
    },
    "default": {"description": "the upstream's error, status and body as it sent them"},
}


def _query(*names: str) -> list[dict[str, Any]]:
    types: dict[str, dict[str, Any]] = {
        "category": _CATEGORY,
        "since": _TIME,
        "until": _TIME,
        "metadata": {"type": "string", "description": "a JSON object: {key: value or [values]}"},
        "include_vectors": {"type": "boolean"},
    }
    return [{"name": n, "in": "query", "schema": types[n]} for n in names]


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "headroom memory server",
        "version": "1",
        "description": (
            "The .memory API of one end user. POST /v1/chat/completions is the OpenAI route "
            "with memory for the request's user (the user field, then safety_identifier, then "
            "the X-Headroom-User header); every other /v1 route is passed to the upstream."
        ),
    },
    "paths": {
        "/v1/chat/completions": {
            "post": {
                "summary": "OpenAI chat completions with the end user's memories (streamed or not)",
                "description": (
                    "The upstream's request and response formats. With an end user (user, "
                    "then safety_identifier, then X-Headroom-User) the user's memories are "
                    "injected and the <memory> block the model writes is removed and stored; "
                    "without one the request passes through. memory: off | read | write "
                    "selects the mode of one call."
                ),
                "parameters": _USER_PARAMS[2:],
                "requestBody": _passthrough_body(("model", "messages")),
                "responses": _UPSTREAM,
            }
        },
        "/v1/responses": {
            "post": {
                "summary": "the OpenAI Responses API with the end user's memories",
                "description": "As /v1/chat/completions, for the Responses API's input.",
                "parameters": _USER_PARAMS[2:],
                "requestBody": _passthrough_body(("model", "input")),
                "responses": _UPSTREAM,
            }
        },
        "/v1/memory/search": {
            "post": {
                "summary": "the user's memories most relevant to a query, best first",
                "parameters": _USER_PARAMS[2:],
                "requestBody": _body(
                    {
                        "query": {"type": "string"},
                        "top_k": {"type": "integer", "minimum": 0, "default": 5},
                        "category": _CATEGORY,
                        "since": _TIME,
                        "until": _TIME,
                        "min_score": {"type": "number"},
                        "metadata": {"type": "object"},
                    },
                    ["query"],
                ),
                "responses": {"200": _json(_ref("SearchResults")), **_ERRORS},
            }
        },
        "/v1/memory/memories": {
            "get": {
                "summary": "every live memory of the user that passes the filters, oldest first",
                "parameters": _USER_PARAMS + _query("category", "since", "until", "metadata"),
                "responses": {"200": _json(_ref("MemoryList")), **_ERRORS},
            },
            "post": {
                "summary": "add one memory",
                "parameters": _USER_PARAMS[2:],
                "requestBody": _body(
                    {
                        "text": {"type": "string"},
                        "category": _CATEGORY,
                        "metadata": {"type": "object"},
                        "created_at": _TIME,
                        "dedup": {
                            "type": "boolean",
                            "default": False,
                            "description": "return the stored memory this text duplicates "
                            "(or update a near-duplicate to it) instead of adding a copy",
                        },
                    },
                    ["text"],
                ),
                "responses": {
                    "201": _json(_ref("Memory"), "added (with dedup: the memory it duplicates)"),
                    **_ERRORS,
                },
            },
        },
        "/v1/memory/memories/{memory_id}": {
            "get": {
                "summary": "one memory",
                "parameters": [_ID_PARAM, *_USER_PARAMS],
                "responses": {"200": _json(_ref("Memory")), **_ERRORS, **_NOT_FOUND},
            },
            "patch": {
                "summary": "write a new version of a memory (the old one goes to its history)",
                "parameters": [_ID_PARAM, *_USER_PARAMS[2:]],
                "requestBody": _body(
                    {
                        "text": {"type": "string"},
                        "category": _CATEGORY,
                        "metadata": {"type": "object"},
                    },
                    ["text"],
                ),
                "responses": {"200": _json(_ref("Memory")), **_ERRORS, **_NOT_FOUND},
            },
            "delete": {
                "summary": "soft delete: hidden at once, purged at the next compaction",
                "parameters": [_ID_PARAM, *_USER_PARAMS],
                "responses": {
                    "200": _json({"type": "object", "properties": {"deleted": {"type": "string"}}}),
                    **_ERRORS,
                    **_NOT_FOUND,
                },
            },
        },
        "/v1/memory/memories/{memory_id}/history": {
            "get": {
                "summary": "every version of a memory, oldest first",
                "parameters": [_ID_PARAM, *_USER_PARAMS],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"versions": {"type": "array", "items": _ref("Version")}},
                        }
                    ),
                    **_ERRORS,
                    **_NOT_FOUND,
                },
            }
        },
        "/v1/memory/forget": {
            "post": {
                "summary": "hard delete (every version, then compaction); no ids: all of them",
                "parameters": _USER_PARAMS[2:],
                "requestBody": _body({"ids": {"type": "array", "items": {"type": "string"}}}, []),
                "responses": {
                    "200": _json(
                        {"type": "object", "properties": {"forgotten": {"type": "integer"}}}
                    ),
                    **_ERRORS,
                },
            }
        },
        "/v1/memory/export": {
            "get": {
                "summary": "the user's memories as JSONL (the schema of docs/export.md)",
                "parameters": _USER_PARAMS + _query("include_vectors"),
                "responses": {
                    "200": {
                        "description": "one JSON object per line",
                        "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
                    },
                    **_ERRORS,
                },
            }
        },
        "/v1/memory/stats": {
            "get": {
                "summary": "counts for the user",
                "parameters": _USER_PARAMS,
                "responses": {"200": _json({"type": "object"}), **_ERRORS},
            }
        },
    },
    "components": {
        "schemas": {
            "Memory": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "text": {"type": "string"},
                    "category": _CATEGORY,
                    "created_at": {"type": "string", "format": "date-time"},
                    "updated_at": {"type": "string", "format": "date-time"},
                    "source": {"type": "string"},
                    "metadata": {"type": "object"},
                },
            },
            "Version": {
                "type": "object",
                "properties": {
                    "memory_id": {"type": "string"},
                    "text": {"type": "string"},
                    "category": _CATEGORY,
                    "at": {"type": "string", "format": "date-time"},
                    "operation": {"type": "string", "enum": ["add", "update", "delete", "clear"]},
                    "source": {"type": "string"},
                    "metadata": {"type": "object"},
                },
            },
            "MemoryList": {
                "type": "object",
                "properties": {"memories": {"type": "array", "items": _ref("Memory")}},
            },
            "SearchResults": {
                "type": "object",
                "properties": {
                    "results": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"memory": _ref("Memory"), "score": {"type": "number"}},
                        },
                    }
                },
            },
            "Error": {
                "type": "object",
                "properties": {
                    "error": {
                        "type": "object",
                        "properties": {
                            "message": {"type": "string"},
                            "type": {"type": "string"},
                            "code": {"type": ["string", "null"]},
                        },
                    }
                },
            },
        }
    },
}
