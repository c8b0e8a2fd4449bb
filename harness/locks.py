"""Inter-process exclusion for work that several runs may ask for at once (a shared phase 1, a
preparation, a phase-2 training): the first takes the lock and does the work, the others wait and
say so, then find the work done."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def exclusive(lock_path: Path, *, waiting: str | None = None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` (POSIX; a no-op where ``fcntl`` is missing).

    When another process holds it, print ``waiting for <waiting> (held by another process)`` to
    stderr once and block until it is released.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(
                f"waiting for {waiting or lock_path.parent.name} (held by another process)",
                file=sys.stderr,
                flush=True,
            )
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
