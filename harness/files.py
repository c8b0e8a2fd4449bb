"""Writing files so that a crash, a full disk or a second process never leaves a half-written one.

Every writer goes through :func:`atomic_path`: the content is written to a temporary file with a name
of its own (pid and a random part, so two processes writing the same target never share one), then
renamed over the target. A failed write removes its temporary file and names the target.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    Raises ``OSError`` naming ``path`` (and the cause, e.g. "No space left on device") when writing
    fails; the temporary file is removed and ``path`` keeps its previous content."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise OSError(
            f"could not write {path}: {error.strerror or error}; its previous content is kept"
        ) from error
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path | str, payload: Any) -> None:
    """Write JSON atomically (see :func:`atomic_path`)."""
    write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str))


def read_jsonl(path: Path | str) -> list[dict[str, Any]]:
    """The records of a JSON-lines file; ``[]`` when it does not exist.

    A torn last line (a crash or a full disk in the middle of a write) is dropped with a warning, so
    that the run can resume; an unreadable line before the last one is an error naming file and line."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):
                warnings.warn(f"{path}:{number}: dropped a torn last line ({error.msg})", stacklevel=2)
                continue
            raise ValueError(f"{path}:{number}: not a JSON record ({error.msg})") from error
    return records
