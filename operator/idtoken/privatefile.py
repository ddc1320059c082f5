"""Creating a private key file once, safely, when several processes may start together."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def write_private_file(path: Path, data: bytes) -> bool:
    """Create ``path`` (mode 0600, its directory 0700 if new) holding ``data``, unless it
    exists. The data is written to a private temporary file and linked into place, so that no
    process reads half a file and two processes starting together keep the same one. True if
    this call created it."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False  # another process created it first; use theirs
        return True
    finally:
        tmp.unlink(missing_ok=True)
