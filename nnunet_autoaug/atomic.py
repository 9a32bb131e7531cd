"""Replace a file in one step: a reader, or a ``--c`` after a kill, sees the old file or the new one, never a part."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def replace_atomically(path: str | Path, write: Callable[[str], None]) -> None:
    """``write(tmp)`` writes the new content to a temporary file next to ``path``, which then replaces ``path``.

    If ``write`` fails (or the process dies), ``path`` keeps its old content; the temporary file is removed on errors.
    The new file keeps the old file's permissions (a user may have opened a results folder to a group).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(str(tmp))
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomically(path: str | Path, text: str) -> None:
    replace_atomically(path, lambda tmp: Path(tmp).write_text(text))


def write_bytes_atomically(path: str | Path, data: bytes) -> None:
    replace_atomically(path, lambda tmp: Path(tmp).write_bytes(data))
