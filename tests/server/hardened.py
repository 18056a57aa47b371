"""The real app under uvicorn with the connection bounds ``serve`` uses (as every test's is)."""

from tests.support import running_app as hardened_app
from tests.support import serving

__all__ = ["hardened_app", "serving"]
