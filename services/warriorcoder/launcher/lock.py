"""One supervisor per data directory: an exclusive lock held for the whole run.

Usage::

    with DataDirLock(Path("arena-data")):   # raises DataDirLocked naming the holder's pid
        ...                                 # start nats-server on the store, the services, ...

Two ``warriorcoder up`` on one directory would run two nats-servers on one JetStream store and
lose or double its state. The lock is ``flock`` on ``DATA_DIR/.lock``: the kernel drops it when
the holder dies, even by SIGKILL, so a crashed run never blocks the next one. The holder writes
its pid into the file, for the refusal's message. The file descriptor is not inherited by
children (Python opens files non-inheritable), so a child that outlives its supervisor does not
keep the directory locked.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

from warriorcoder.errors import ArenaError

__all__ = ["DataDirLock", "DataDirLocked"]


class DataDirLocked(ArenaError, RuntimeError):
    """Another process holds the data directory."""

    reason = "data_dir_locked"

    def __init__(self, data_dir: Path, holder: int | None) -> None:
        who = f"pid {holder}" if holder is not None else "another process"
        super().__init__(
            f"{data_dir} is in use by {who} (another `warriorcoder up`?): one run per data "
            "directory; stop that one or use another --data-dir"
        )
        self.data_dir = data_dir
        self.holder = holder


class DataDirLock:
    """``flock(LOCK_EX | LOCK_NB)`` on ``data_dir/.lock`` while entered."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise DataDirLocked(self.data_dir, holder) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing the last descriptor drops the lock

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).decode().strip())
    return None
