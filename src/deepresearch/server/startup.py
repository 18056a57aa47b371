"""Checks before the server starts, so a bad data dir is one line naming the setting
rather than a traceback from inside the app's start-up."""

from __future__ import annotations

import fcntl
import os
import tempfile

from deepresearch.config import Settings
from deepresearch.errors import ConfigurationError


def check_data_dir(settings: Settings) -> None:
    """The data dir exists (or can be made), is writable, and no other server holds it."""
    folder = settings.data_dir
    where = f"DEEPRESEARCH_DATA_DIR ({folder})"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(f"{where}: cannot create it: {exc.strerror or exc}") from exc
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ConfigurationError(f"{where}: cannot write there: {exc.strerror or exc}") from exc
    lock_path = settings.database_path.with_suffix(".lock")
    try:
        descriptor = os.open(lock_path, os.O_WRONLY | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ConfigurationError(f"{where}: cannot open {lock_path.name}: {exc.strerror}") from exc
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        raise ConfigurationError(
            f"{where}: another deepresearch process is using it: stop it, or give this one "
            "its own data dir"
        ) from exc
    finally:
        os.close(descriptor)  # released: the store takes it for good when it opens
