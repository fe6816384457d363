"""The memory protocol: pure functions, no I/O.

``block`` (the ``<memory>`` block: instruction, grammar, parser, renderer), ``stream_filter``
(holds back streamed text that could still start a block), ``injection`` (renders memories into
the prompt as read-only data), ``pipeline`` (inject, instruct, parse, clean, store: plain
functions over a store). Imports only ``errors``, ``types`` and, for types, ``store``.
"""
