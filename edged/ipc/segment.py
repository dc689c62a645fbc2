"""Named shared-memory segments in /dev/shm, owned by the process that creates them.

We map files under /dev/shm ourselves instead of using `multiprocessing.shared_memory`:
Python 3.11's resource_tracker registers every *attach* and unlinks the segment when the
attaching process exits, which would tear a live ring away from a restarted worker.
Here only the creator (the supervisor) ever unlinks.

Names are `edged.<owner pid>-<token>.<kind>`; at start, segments whose owner pid is dead are
removed, and segments of a live owner are left alone.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
import threading
from pathlib import Path

import numpy as np
import structlog

log = structlog.get_logger()

SHM_DIR = Path("/dev/shm")
PREFIX = "edged."

_fence_lock = threading.Lock()


def fence() -> None:
    """Order our shared-memory stores/loads around a seqlock update.

    Python has no memory-barrier primitive; acquiring and releasing a lock runs atomic
    read-modify-write instructions with acquire/release semantics, which keeps the slot
    sequence numbers ordered against the payload on weakly ordered CPUs (ARM boards).
    """
    with _fence_lock:
        pass


def new_run_id() -> str:
    return f"{os.getpid()}-{secrets.token_hex(4)}"


def segment_name(run_id: str, kind: str) -> str:
    return f"{PREFIX}{run_id}.{kind}"


class Segment:
    """A mapping of /dev/shm/<name>; `create` makes it, `attach` opens an existing one."""

    def __init__(self, name: str, mm: mmap.mmap, owner: bool) -> None:
        self.name = name
        self.size = len(mm)
        self._mm = mm
        self.owner = owner

    @classmethod
    def create(cls, name: str, size: int) -> Segment:
        path = SHM_DIR / name
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        try:
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        return cls(name, mm, owner=True)

    @classmethod
    def attach(cls, name: str) -> Segment:
        fd = os.open(SHM_DIR / name, os.O_RDWR)
        try:
            mm = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        return cls(name, mm, owner=False)

    def array(self, dtype: np.dtype | type, count: int, offset: int) -> np.ndarray:
        return np.frombuffer(self._mm, dtype=dtype, count=count, offset=offset)

    def close(self) -> None:
        # BufferError: numpy views are still alive; the mapping goes away with them.
        with contextlib.suppress(BufferError):
            self._mm.close()

    def unlink(self) -> None:
        """Remove the name; only the creator calls this."""
        if not self.owner:
            raise RuntimeError(f"segment {self.name} is not owned by this process")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(SHM_DIR / self.name)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_segments(shm_dir: Path = SHM_DIR) -> list[str]:
    """Unlink edged segments left behind by a supervisor that died; returns their names."""
    removed = []
    for path in shm_dir.glob(f"{PREFIX}*"):
        owner = path.name[len(PREFIX):].split("-", 1)[0]
        if not owner.isdigit() or _pid_alive(int(owner)):
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except PermissionError:
            # Another user's segment in a sticky /dev/shm: not ours to remove.
            log.warning("ipc.stale_segment_kept", segment=path.name, reason="permission denied")
            continue
        removed.append(path.name)
    if removed:
        log.warning("ipc.stale_segments_removed", segments=removed)
    return removed


def list_segments(run_id: str, shm_dir: Path = SHM_DIR) -> list[str]:
    return sorted(p.name for p in shm_dir.glob(f"{PREFIX}{run_id}.*"))
