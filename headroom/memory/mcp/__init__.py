"""A Model Context Protocol server over a memory store (the ``mcp`` extra).

``create_server(store, user_id)`` exposes one user's memories as MCP tools (search, list, add,
update, delete, forget, history); ``run_stdio(server)`` serves them over stdin/stdout, as an
MCP host starts it. The command line runs it as ``headroom-memory mcp --db PATH --user ID``.
Importing this package needs the ``mcp`` SDK (``pip install 'headroom-memory[mcp]'``).
"""

from .server import create_server, run_stdio

__all__ = ["create_server", "run_stdio"]
