"""The HTTP transport: an app factory, thin routes, the only SSE encoder."""

from deepresearch.server.app import create_app

__all__ = ["create_app"]
