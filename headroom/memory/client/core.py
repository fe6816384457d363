"""The per-wrapper side of a call: what every copy of one wrapped client shares.

:class:`Core` holds the store, the injection settings, the writer and the extraction worker of
one ``with_fast_memory`` / ``with_memory`` wrapper and runs the pipeline around a provider
call: :meth:`Core.prepare` before it, :meth:`Core.finish` / :meth:`Core.finish_stream` after
it. It knows no SDK types: it reads ``choices[i].message.content`` and hands raw clients to the
background worker.

Failure policy: nothing here raises into the caller's call. A failure of the memory layer is
logged on the ``headroom.memory`` logger, reported to the observer as ``MemoryEvent.error``,
and the call goes on (without memories, or without storing).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..protocol import relevance
from ..protocol import responses as rsp
from ..protocol.block import MemoryOps, ParsedAnswer
from ..protocol.budget import PromptBudget, fit_input, fit_messages
from ..protocol.pipeline import (
    MemoryEvent,
    Mode,
    Observer,
    Prepared,
    Settings,
    clean_completion,
    content_text,
    instruct,
    is_json_mode,
    last_user_text,
    notify,
    parse_choice,
    prepare,
    store_ops,
)
from ..store.store import MemoryStore
from .background import ExtractionWorker, make_payload, worker_for
from .writer import Writer

logger = logging.getLogger("headroom.memory")

#: How long an injection waits for the same user's previous inline writes (seconds).
OWN_WRITES_WAIT_S = 5.0


@dataclass
class Core:
    """What every copy of one wrapper shares: the store, settings, writer, worker, hook."""

    store: MemoryStore
    settings: Settings
    background: bool
    extraction_model: str | None
    observer: Observer | None
    writer: Writer
    worker_options: dict[str, Any] = field(default_factory=dict)
    worker: ExtractionWorker | None = None
    budget: PromptBudget | None = None

    def event(self, event: MemoryEvent) -> None:
        """Hand ``event`` to the observer; an observer that raises is logged, not raised."""
        notify(self.observer, event)

    def get_worker(self, client: Any) -> ExtractionWorker:
        """The store's extraction worker, with ``client`` registered for this user.

        Looked up in the registry each time, so a worker stopped by ``close_all`` is replaced.
        """
        self.worker = worker_for(self.store, **self.worker_options)
        self.worker.register(self.settings.user_id, client, self.observer, self.settings)
        return self.worker

    # --- the request side --------------------------------------------------------------------

    def _mode_used(self, mode: Mode) -> Mode:
        """The mode the request side runs in (a background wrapper only ever injects)."""
        if self.background:
            return "read" if mode in ("on", "read") else "off"
        if mode in ("on", "read"):
            self.wait_for_own_writes()
        return mode

    def prepare(
        self, kwargs: dict[str, Any], mode: Mode, *, json_mode: bool | None = None
    ) -> Prepared:
        """Inject/instruct; on a memory-layer failure, log and go on with what is safe.

        ``json_mode`` (default: read from ``response_format``) says no block can be appended.
        """
        messages = list(kwargs.get("messages") or [])
        if json_mode is None:
            json_mode = is_json_mode(kwargs.get("response_format"))
        mode_used = self._mode_used(mode)
        try:
            prepared = prepare(self.store, self.settings, messages, mode_used, json_mode=json_mode)
        except Exception as exc:
            logger.warning("headroom.memory: injection failed, calling without memories: %s", exc)
            extract = mode_used in ("on", "write") and not json_mode
            prepared = Prepared(
                messages=instruct(messages) if extract else messages,
                context=None,
                mode=mode_used,
                extract=extract,
                background=False,
                error=exc,
            )
        prepared = self._fit_messages(messages, prepared)
        if self.background and mode in ("on", "write"):
            prepared = replace(prepared, mode=mode, extract=False, background=True)
        return prepared

    def _fit_messages(self, messages: list[Any], prepared: Prepared) -> Prepared:
        """``prepared`` within the prompt budget (``protocol/budget.py``), if there is one.

        An instruction that does not fit sends the turn's extraction to the background queue.
        On a failure (e.g. a malformed conversation), log and send ``prepared`` as it is.
        """
        if self.budget is None:
            return prepared
        instructed = prepared.extract and not prepared.background
        try:
            fitted = fit_messages(
                messages, instructed=instructed, context=prepared.context, budget=self.budget
            )
        except Exception as exc:
            logger.warning("headroom.memory: could not fit the prompt budget: %s", exc)
            return prepared
        return replace(
            prepared,
            messages=fitted.messages,
            context=fitted.context,
            background=prepared.background or (instructed and not fitted.instructed),
        )

    def _fit_input(
        self, result: rsp.PreparedInput, source: object, instructions: object
    ) -> rsp.PreparedInput:
        """The Responses twin of :meth:`_fit_messages`."""
        if self.budget is None:
            return result
        prepared = result.prepared
        instructed = prepared.extract and not prepared.background
        try:
            fitted = fit_input(
                source,
                instructions,
                instructed=instructed,
                context=prepared.context,
                budget=self.budget,
            )
        except Exception as exc:
            logger.warning("headroom.memory: could not fit the prompt budget: %s", exc)
            return result
        prepared = replace(
            prepared,
            messages=fitted.messages,
            context=fitted.context,
            background=prepared.background or (instructed and not fitted.instructed),
        )
        return rsp.PreparedInput(fitted.input, fitted.instructions, prepared)

    def prepare_input(
        self, kwargs: Mapping[str, Any], mode: Mode, *, json_mode: bool
    ) -> rsp.PreparedInput:
        """The Responses twin of :meth:`prepare`: new ``input`` and ``instructions``.

        On a memory-layer failure, log and go on without memories (the instruction is still
        added when the answer is to carry a block).
        """
        mode_used = self._mode_used(mode)
        source, instructions = kwargs.get("input"), kwargs.get("instructions")
        try:
            result = rsp.prepare_input(
                self.store, self.settings, source, instructions, mode_used, json_mode=json_mode
            )
        except Exception as exc:
            logger.warning("headroom.memory: injection failed, calling without memories: %s", exc)
            extract = mode_used in ("on", "write") and not json_mode
            result = rsp.PreparedInput(
                input=source,
                instructions=rsp.with_instruction(instructions) if extract else instructions,
                prepared=Prepared(
                    messages=rsp.input_items(source) or [],
                    context=None,
                    mode=mode_used,
                    extract=extract,
                    background=False,
                    error=exc,
                ),
            )
        result = self._fit_input(result, source, instructions)
        if self.background and mode in ("on", "write"):
            prepared = replace(result.prepared, mode=mode, extract=False, background=True)
            result = replace(result, prepared=prepared)
        return result

    def wait_for_own_writes(self) -> None:
        """Let this user's queued inline writes land before their next injection searches.

        Read your own writes across calls: the answer before this one may still be being
        stored (embedding runs after the response returns). Waits only for this user's writes,
        at most :data:`OWN_WRITES_WAIT_S`; past that, the injection goes on without them.
        """
        user_id = self.settings.user_id
        if not self.writer.wait_key(user_id, OWN_WRITES_WAIT_S):
            logger.warning(
                "headroom.memory: injecting for user %r before their previous memories were "
                "stored (waited %.0f s)",
                user_id,
                OWN_WRITES_WAIT_S,
            )

    # --- the response side -------------------------------------------------------------------

    def finish(
        self,
        client: Any,
        prepared: Prepared,
        request: Mapping[str, Any],
        result: Any,
        streamed: bool = False,
    ) -> None:
        """Clean a completed ChatCompletion in place and store or queue what it carries."""

        def read() -> tuple[str | None, ParsedAnswer | None]:
            choices = getattr(result, "choices", None) or []
            first = choices[0] if choices else None
            answer = getattr(getattr(first, "message", None), "content", None)
            if self.background:
                return answer, None
            return answer, clean_completion(result, prepared.id_map)

        self._finish(client, prepared, request, streamed, read)

    def finish_response(
        self,
        client: Any,
        prepared: Prepared,
        request: Mapping[str, Any],
        result: Any,
        sent_instructions: object = None,
    ) -> None:
        """Clean a completed Responses ``Response`` in place and store or queue what it carries.

        The response's echo of ``instructions`` goes back to the caller's own when the memory
        instruction was appended (``sent_instructions``).

        A background wrapper, and a structured-output call (no block was asked for: cleaning
        could only damage the JSON), leave the response as the provider sent it.
        """

        def read() -> tuple[str | None, ParsedAnswer | None]:
            answer = rsp.response_text(result)
            rsp.restore_instructions(result, sent_instructions, request.get("instructions"))
            if self.background or prepared.background:
                return answer, None
            return answer, rsp.clean_response(result, prepared.id_map)

        self._finish(client, prepared, request, False, read)

    def _finish(
        self,
        client: Any,
        prepared: Prepared,
        request: Mapping[str, Any],
        streamed: bool,
        read: Callable[[], tuple[str | None, ParsedAnswer | None]],
    ) -> None:
        """``read()`` gives the answer's text and, when it cleaned the result, what it parsed;
        the ops are kept when this call extracts inline. Never raises."""
        ops = MemoryOps()
        problems: tuple[str, ...] = ()
        try:
            answer, parsed = read()
            if parsed is not None and prepared.extract and not prepared.background:
                ops, problems = parsed.ops, tuple(parsed.problems)
        except Exception as exc:  # the parser never raises; this guards the unexpected
            logger.exception("headroom.memory: could not clean the answer")
            self.event(MemoryEvent(self.settings.user_id, prepared.mode, "inline", error=exc))
            return
        self.after(client, prepared, request, answer, ops, problems, streamed)

    def finish_stream(
        self,
        client: Any,
        prepared: Prepared,
        request: Mapping[str, Any],
        raw: Mapping[int, str],
        complete: bool,
    ) -> None:
        """End of a stream: parse choice 0's raw text, then store or queue. Never raises."""
        try:
            answer = raw.get(0)
            ops, problems = MemoryOps(), tuple[str, ...]()
            if not self.background and prepared.extract and not prepared.background:
                parsed = parse_choice(answer, prepared.id_map)
                ops, problems = parsed.ops, tuple(parsed.problems)
            self.after(client, prepared, request, answer, ops, problems, True)
        except Exception as exc:
            logger.exception("headroom.memory: finishing a stream failed")
            self.event(MemoryEvent(self.settings.user_id, prepared.mode, "inline", error=exc))

    def after(
        self,
        client: Any,
        prepared: Prepared,
        request: Mapping[str, Any],
        answer: str | None,
        ops: MemoryOps,
        problems: tuple[str, ...],
        streamed: bool,
    ) -> None:
        """Queue the extraction (background) or the store write (inline); tell the observer."""
        user_id = self.settings.user_id
        if problems:
            logger.warning(
                "headroom.memory: memory block for user %r: %s", user_id, "; ".join(problems)
            )
        if prepared.background:
            self.enqueue(client, request, answer, prepared, streamed)
            return
        event = MemoryEvent(
            user_id,
            prepared.mode,
            "inline",
            injected=prepared.shown,
            ops=ops,
            problems=problems,
            streamed=streamed,
            error=prepared.error,
        )
        if not ops.is_empty():
            self.writer.submit(lambda: self._write(ops, event), key=user_id)
        else:
            self.event(event)

    def _write(self, ops: MemoryOps, event: MemoryEvent) -> None:
        try:
            store_ops(self.store, self.settings.user_id, ops, source="inline")
        except Exception as exc:
            logger.warning(
                "headroom.memory: storing memories for user %r failed: %s",
                self.settings.user_id,
                exc,
            )
            event = replace(event, error=exc)
        else:
            relevance.after_write(self.store, self.settings.user_id, self.settings.min_score)
        self.event(event)

    def enqueue(
        self,
        client: Any,
        request: Mapping[str, Any],
        answer: str | None,
        prepared: Prepared,
        streamed: bool,
    ) -> None:
        """Record the turn as a durable extraction job (before the response returns)."""
        user_id = self.settings.user_id
        try:
            if "messages" in request:
                user_text = last_user_text(list(request.get("messages") or []))
            else:
                user_text = rsp.last_user_input_text(request.get("input"))
            if not user_text:
                self.event(MemoryEvent(user_id, prepared.mode, "background", error=prepared.error))
                return
            turn = [{"role": "user", "content": user_text}]
            if answer:
                turn.append({"role": "assistant", "content": content_text(answer)})
            model = self.extraction_model or request.get("model")
            worker = self.get_worker(client)
            worker.submit(user_id, make_payload(turn, model if isinstance(model, str) else None))
        except Exception as exc:
            logger.warning(
                "headroom.memory: queueing extraction for user %r failed: %s", user_id, exc
            )
            self.event(MemoryEvent(user_id, prepared.mode, "background", error=exc))
            return
        self.event(
            MemoryEvent(
                user_id,
                prepared.mode,
                "background",
                injected=prepared.shown,
                streamed=streamed,
                error=prepared.error,
            )
        )

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for inline writes and background extractions; True when nothing is left."""
        done = self.writer.flush(timeout)
        if self.worker is not None:
            done = self.worker.flush(timeout) and done
        return done
