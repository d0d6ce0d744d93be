"""`apply --secrets-out PATH`: new clients' secrets go to a JSON file only its owner can read, never to a file
someone else could already read."""

from __future__ import annotations

import json
import os
import secrets
import stat
from pathlib import Path


class SecretFileError(Exception):
    """The secrets file cannot be used; the message never holds a secret."""


def check(path: str | Path) -> dict[str, str]:
    """The secrets the file already holds ({} when it does not exist yet). Refused: a symlink or anything but a
    regular file, a file its group or others may read or write, and content that is not a JSON object."""
    path = Path(path)
    try:
        info = path.lstat()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise SecretFileError(f"--secrets-out {path}: cannot read ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        raise SecretFileError(f"--secrets-out {path}: not a regular file")
    if info.st_mode & 0o077:
        raise SecretFileError(
            f"--secrets-out {path}: mode {stat.S_IMODE(info.st_mode):04o} lets others read or write it; "
            "it must be readable by its owner only (chmod 600), or name a new file"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        raise SecretFileError(f"--secrets-out {path}: not a JSON object of client secrets") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise SecretFileError(f"--secrets-out {path}: not a JSON object of client secrets")
    return data


def write(path: str | Path, new: dict[str, str]) -> None:
    """Add `new` ({client_id: secret}) to the file: written to a fresh 0600 file beside it, then renamed over it,
    so no reader ever sees a partial file or looser permissions."""
    path = Path(path)
    merged = check(path) | new
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(fd, 0o600)  # whatever the umask, and even if an earlier run left a looser temp behind
            f.write(json.dumps(merged, indent=2, sort_keys=True) + "\n")
            f.flush()
            os.fsync(fd)
        os.replace(temp, path)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise SecretFileError(f"--secrets-out {path}: cannot write ({exc.strerror})") from None
