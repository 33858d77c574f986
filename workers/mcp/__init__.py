"""The MCP server: agents' tools and resources over a worker's HTTP API (``learnstream mcp``)."""
from __future__ import annotations

from workers.mcp.server import SERVER_NAME, build_server
from workers.mcp.tools import TOOLS, ToolSpec, body_schema, tool_specs

__all__ = ("SERVER_NAME", "build_server", "TOOLS", "ToolSpec", "body_schema", "tool_specs")
