"""Files: atomic writes (a crash leaves the old file or the new one, never half of one), safetensors with
JSON metadata, JSONL readers that name the failing line."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` so that a crash leaves either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def save_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Tensors (made contiguous, moved to CPU) as one safetensors file, written atomically; never a pickle."""
    from safetensors.torch import save

    blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    return atomic_write_bytes(path, blob)


def read_jsonl(path: str | Path, what: str) -> list[tuple[int, object]]:
    """(line number, parsed object) per non-blank line; a missing file or a line that does not parse is a
    ValueError naming `what` (the argument), the file and the line."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what}: no such file {path}")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{what}: {path}:{n}: not valid JSON ({e.msg})") from None
    return rows


def cache_dir() -> Path:
    """Where converted models and statistics live: $WORKBENCH_CACHE, else the user's cache dir."""
    if os.environ.get("WORKBENCH_CACHE"):
        return Path(os.environ["WORKBENCH_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "workbench"


def append_jsonl(path: str | Path, obj) -> Path:
    """Append one JSON line to a log with a single write on an O_APPEND descriptor (a line is whole or
    absent; several appends never interleave within a line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, (json.dumps(obj) + "\n").encode())
    finally:
        os.close(fd)
    return path
