"""The agent's tools: one module each, one small ``Tool`` interface."""

from deepresearch.tools.base import CitationRegistry, Source, Tool, ToolContext, ToolOutput

__all__ = ["CitationRegistry", "Source", "Tool", "ToolContext", "ToolOutput"]
