"""Reading the files adaptkit is given, behind one error type (`FileError`) that names the file, says what is
wrong with it and what to do.

A missing, empty, truncated or foreign file must never surface as a library's traceback (`UnicodeDecodeError`,
`SafetensorError`, `EOFError`, ...), and a missing local file must never be looked up on the network instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import stat
import zipfile
from pathlib import Path
from typing import Any

import yaml

from adaptkit.errors import FileError


def require_file(path: str | Path, what: str, fix: str = "") -> Path:
    """`path` if it is a regular, non-empty file; otherwise a FileError saying what it is instead.

    FIFOs and devices are refused before they are opened (opening a FIFO blocks until a writer comes).
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise FileError(path, f"{what} is missing", fix) from None
    except OSError as error:
        raise FileError(path, f"{what} cannot be read ({error.strerror})", fix) from None
    if stat.S_ISDIR(mode):
        raise FileError(path, f"is a folder, expected the {what}", fix)
    if not stat.S_ISREG(mode):
        raise FileError(path, f"is not a regular file (a FIFO, socket or device), expected the {what}; not opened")
    if path.stat().st_size == 0:
        raise FileError(path, f"{what} is empty (0 bytes)", fix or "the file was not written completely")
    return path


def read_text(path: str | Path, what: str) -> str:
    """A text file as UTF-8 (a byte-order mark is accepted); anything else is refused with the reason."""
    path = require_file(path, what)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise FileError(path, f"{what} cannot be read ({error.strerror})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        looks = " (it looks like UTF-16)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in data[:64] else ""
        raise FileError(path, f"{what} is not UTF-8 text{looks}: byte {data[error.start]:#04x} at offset "
                              f"{error.start}", "save it as UTF-8") from None


def yaml_problem(error: yaml.YAMLError) -> str:
    """'line 3, column 7: ...' from a YAML error (PyYAML's marks count from 0)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or " ".join(str(error).split())
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


def read_yaml(path: str | Path, what: str) -> Any:
    try:
        return yaml.safe_load(read_text(path, what))
    except yaml.YAMLError as error:
        raise FileError(path, f"{what} is not valid YAML ({yaml_problem(error)})") from None


def read_json(path: str | Path, what: str) -> Any:
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise FileError(path, f"{what} is not valid JSON (line {error.lineno}, column {error.colno}: "
                              f"{error.msg})") from None


def read_safetensors(path: str | Path, what: str, fix: str = "") -> tuple[dict[str, Any], dict[str, str]]:
    """(tensors, metadata) of a safetensors file; truncated, random or empty files are refused."""
    from safetensors import SafetensorError, safe_open

    path = require_file(path, what, fix)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise FileError(path, f"{what} is not a readable safetensors file, truncated or corrupt ({error})",
                        fix) from None
    return tensors, metadata


def load_torch(path: str | Path, what: str, fix: str = "") -> Any:
    """A torch file loaded with `weights_only=True` (never runs pickled code); unreadable files are refused."""
    import torch

    path = require_file(path, what, fix)
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; random or truncated bytes are not one
        raise FileError(path, f"{what} is not a readable torch file, truncated or corrupt (not a torch archive)", fix)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise FileError(path, f"{what}: refusing to load: the file holds pickled code or objects other than tensors "
                              f"(loaded with weights_only=True; never run code from a checkpoint). Detail: "
                              f"{str(error).splitlines()[0]}", fix) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise FileError(path, f"{what} is not a readable torch file, truncated or corrupt "
                              f"({str(error).splitlines()[0]})", fix) from None


def sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def writable_folder(path: str | Path, what: str = "output folder", create: bool = True) -> Path:
    """Create `path` (and its parents) if needed and check files can be written there, before any work.

    With `create=False` nothing is created: the folder, or the nearest folder above it that exists, must be
    writable (a command that may still refuse its input checks so, and leaves nothing behind when it does).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileError(path, f"the {what} is a file, not a folder", "choose another --out")
    if not create:
        existing = next(parent for parent in (path.absolute(), *path.absolute().parents) if parent.exists())
        if not existing.is_dir():
            raise FileError(path, f"the {what} cannot be created ({existing} is a file)", "choose another --out")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise FileError(path, f"the {what} is not writable", "choose another --out or fix its permissions")
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FileError(path, f"the {what} cannot be created ({error.strerror})", "choose another --out") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise FileError(path, f"the {what} is not writable", "choose another --out or fix its permissions")
    return path


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write `path` whole or not at all: the data goes to a temporary name beside it, then one rename (atomic
    on one filesystem) puts it in place, so a run killed mid-write never leaves half a file under the name."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if isinstance(data, str):
            temporary.write_text(data)
        else:
            temporary.write_bytes(data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path
