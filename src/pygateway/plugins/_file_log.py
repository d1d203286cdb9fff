"""file-log: append each request's log entry, as one JSON line, to a file (Kong's).

Lines are written by the log queue's sender thread (see `_queue.LogQueue`), never by
the event loop: a slow disk does not hold requests up. The file is opened in append mode
(created with mode 0644) and kept open; with `reopen`, it is opened and closed for every
line, so that a log rotation that moves the file is followed at once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

import attrs

from .._schema import field
from ._log_serializer import check_custom_fields
from ._queue import LogQueue, QueueConfig, QueuedLogger
from ._registry import register

__all__ = ["FileLog"]

# Kong's rule for the path: no shell-special characters.
_PATH = re.compile(r"^[^*&%\\`]+$")
# Lines are written one by one, as they come: no batching delay, a bounded backlog.
_QUEUE = QueueConfig(max_batch_size=1, max_coalescing_delay=0, max_retry_time=0)


def _check_path(value: str) -> str | None:
    if not _PATH.fullmatch(value) or "\0" in value:
        return "not a valid filename"
    return None


@attrs.frozen(kw_only=True)
class FileLog(QueuedLogger):
    """Append one JSON line per request to the file at `path`."""

    name = "file-log"
    priority = 9
    required = ("path",)

    path: str = field(check=_check_path)
    reopen: bool = False
    custom_fields_by_lua: Mapping[str, str] | None = field(None, check=check_custom_fields)

    def _make_queue(self) -> LogQueue:
        return LogQueue(f"file-log {self.path}", _FileWriter(self.path, self.reopen), _QUEUE)


class _FileWriter:
    """Writes lines from the sender thread."""

    def __init__(self, path: str, reopen: bool) -> None:
        self.path = path
        self.reopen = reopen
        self._fd: int | None = None

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def __call__(self, batch: Sequence[bytes]) -> None:
        data = b"".join(entry + b"\n" for entry in batch)
        if self.reopen:
            fd = self._open()
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
            return
        if self._fd is None:
            self._fd = self._open()
        try:
            _write_all(self._fd, data)
        except OSError:
            fd, self._fd = self._fd, None
            os.close(fd)
            raise

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


register(FileLog)
