"""Files: atomic writes (a crash leaves the old file or the new one, never half of one), safetensors with
JSON metadata, and the one file reader (`read_text`, `read_json`, `read_jsonl`, `read_safetensors`): every
problem with a file (missing, a folder, not UTF-8, not JSON, not safetensors, truncated, NaN or infinity inside)
is a ValueError "argument: file: problem", raised before anything uses the file."""
from __future__ import annotations

import json
import math
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


def finite_json(obj):
    """`obj` with every non-finite float (Python or numpy) replaced by the string "inf", "-inf" or "nan": JSON has
    no such numbers (json.dumps would write the non-standard `Infinity`); `float(s)` and numpy read them back."""
    import numpy as np

    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return finite_json(obj.tolist())
    if isinstance(obj, (float, np.floating)):
        x = float(obj)
        return x if math.isfinite(x) else "nan" if x != x else ("inf" if x > 0 else "-inf")
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def dumps_json(obj, **kw) -> str:
    """Strict JSON text (see `finite_json`); `kw` as for json.dumps."""
    return json.dumps(finite_json(obj), allow_nan=False, **kw)


def write_json(path: str | Path, obj, **kw) -> Path:
    """`obj` as strict JSON (non-finite numbers as strings, see `finite_json`), written atomically."""
    return atomic_write_text(path, dumps_json(obj, **kw))


def save_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Tensors (made contiguous, moved to CPU) as one safetensors file, written atomically; never a pickle.
    Non-finite values are refused (a diverged training run must not save a file every reader refuses)."""
    from safetensors.torch import save

    from .checks import finite_tensor

    for k, v in tensors.items():
        finite_tensor(v.detach(), f"{Path(path).name}: tensor {k!r}")

    blob = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    return atomic_write_bytes(path, blob)


class FileProblem(ValueError):
    """A file that cannot be used: "argument: file: problem"."""


def _file(path, arg: str) -> Path:
    path = Path(path)
    if path.is_dir():
        raise FileProblem(f"{arg}: {path}: is a folder; expected a file")
    if not path.is_file():
        raise FileProblem(f"{arg}: no such file {path}")
    return path


def read_text(path: str | Path, arg: str) -> str:
    """A UTF-8 text file's contents; missing, unreadable or non-UTF-8 files are "arg: file: problem"."""
    path = _file(path, arg)
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise FileProblem(f"{arg}: {path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})") \
            from None
    except OSError as e:
        raise FileProblem(f"{arg}: {path}: cannot be read ({e.strerror})") from None


def _no_constant(name: str):
    raise ValueError(f"{name}: a non-finite number")


def parse_json(text: str, arg: str, where) -> object:
    """JSON text (`where`: the file, or file:line) -> object; NaN / Infinity are refused (not JSON, and
    numbers that mean nothing)."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise FileProblem(f"{arg}: {where}: not valid JSON ({e.msg}, line {e.lineno} column {e.colno})") from None
    except ValueError as e:
        raise FileProblem(f"{arg}: {where}: {e}; expected finite numbers") from None


def read_json(path: str | Path, arg: str) -> object:
    """A JSON file's object (see `parse_json`)."""
    path = _file(path, arg)
    return parse_json(read_text(path, arg), arg, path)


def read_jsonl(path: str | Path, what: str) -> list[tuple[int, object]]:
    """(line number, parsed object) per non-blank line; a missing file or a line that does not parse is a
    ValueError naming `what` (the argument), the file and the line."""
    path = _file(path, what)
    rows = []
    for n, line in enumerate(read_text(path, what).splitlines(), 1):
        if line.strip():
            try:
                rows.append((n, json.loads(line, parse_constant=_no_constant)))
            except json.JSONDecodeError as e:
                raise FileProblem(f"{what}: {path}:{n}: not valid JSON ({e.msg})") from None
            except ValueError as e:
                raise FileProblem(f"{what}: {path}:{n}: {e}; expected finite numbers") from None
    return rows


def read_safetensors(path: str | Path, arg: str, *, finite: bool = True) -> tuple[dict, dict[str, str]]:
    """(tensors, metadata) of a safetensors file (never a pickle). A missing, truncated or foreign file, or
    (with `finite`) a tensor holding NaN or infinity, is "arg: file: problem"."""
    from safetensors import safe_open

    from .checks import finite_tensor

    path = _file(path, arg)
    try:
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own types (SafetensorError, ...) for bad files
        raise FileProblem(f"{arg}: {path}: not a readable safetensors file, truncated or corrupt "
                          f"({type(e).__name__}: {e})") from None
    if finite:
        for k, t in tensors.items():
            try:
                finite_tensor(t, f"tensor {k!r}")
            except ValueError as e:
                raise FileProblem(f"{arg}: {path}: {e}") from None
    return tensors, meta


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
        os.write(fd, (dumps_json(obj) + "\n").encode())
    finally:
        os.close(fd)
    return path
