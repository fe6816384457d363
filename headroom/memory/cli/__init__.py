"""The ``headroom-memory`` command line, the offline demo and its scripted LLM endpoint.

The top layer: it may import every other layer; nothing imports it.
"""
