"""File I/O in one place: reading text and JSON with one-line errors, output folders, atomic writes,
and safetensors files.

Every write goes to a temporary file in the same folder and is renamed over the target, so a crash
leaves either the old file or the new one, never half of one; the file then gets the permissions any
other program's would (0666 less the umask). A run that finds such temporaries left behind by a
killed predecessor removes them (``remove_stale_temporaries``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .errors import MiniGPTError

TEMPORARY = ".{name}.*.tmp"  # how atomic_path names its temporary files (glob pattern)


def read_text(path: str | Path, what: str = "file") -> str:
    """The UTF-8 text of ``path``; a missing file, a folder, or bytes that are not UTF-8 are a
    ``MiniGPTError`` naming the path (``what`` says what it was for, e.g. "prompt file")."""
    path = Path(path)
    if path.is_dir():
        raise MiniGPTError(f"{what} {path} is a folder, not a file")
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MiniGPTError(f"{what} not found: {path}") from None
    except UnicodeDecodeError as err:
        raise MiniGPTError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    except OSError as err:
        raise MiniGPTError(f"{path}: cannot read the {what} ({err.strerror})") from None



def output_dir(path: str | Path, what: str = "out_dir") -> Path:
    """``path`` as a folder that exists and can be written to (created with its parents if need be)."""
    if str(path) == "":
        raise MiniGPTError(f"{what} is empty; name a folder")
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise MiniGPTError(f"{what} {path} is a file, not a folder") from None
    except NotADirectoryError:
        raise MiniGPTError(f"{what} {path} lies under a file, not a folder") from None
    except OSError as err:
        raise MiniGPTError(f"{what} {path} cannot be created ({err.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise MiniGPTError(f"{what} {path} is not writable")
    return path



def output_file(path: str | Path, what: str = "output file") -> Path:
    """``path`` as a file that can be written: not a folder, in a writable folder (created if need be)."""
    if str(path) == "":
        raise MiniGPTError(f"{what} is empty; name a file")
    path = Path(path)
    if path.is_dir():
        raise MiniGPTError(f"{what} {path} is a folder, not a file")
    try:
        output_dir(path.parent)
    except MiniGPTError:
        raise MiniGPTError(f"{what} {path}: its folder cannot be written to (it lies under a file, or is "
                           f"not writable)") from None
    return path



def plain_file_name(name) -> bool:
    """Whether ``name`` (read from a file such as meta.json or an index) names a file directly inside
    a folder: a non-empty string without a folder part, not ``.`` or ``..``, not absolute. The name
    is confined, not what it resolves to, so a symlinked file (Hugging Face's cache) still reads."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name \
        and not Path(name).is_absolute()



def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask



@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``."""
    path = Path(path)
    output_dir(path.parent, what=f"the folder of {path.name}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp made it private; the file gets the usual mode
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)



def check_new_folder(path: str | Path, overwrite: bool) -> Path:
    """``path`` as a folder that ``write_folder`` may fill: not a file, and, unless ``overwrite``, not a
    folder with something in it (checked before the work that makes its contents)."""
    path = Path(path)
    if path.is_file():
        raise MiniGPTError(f"{path} is a file; a folder is written there")
    if path.exists() and not (path.is_dir() and not any(path.iterdir())) and not overwrite:
        raise MiniGPTError(f"{path} already exists; choose another path or pass --overwrite")
    return path



def write_folder(path: str | Path, overwrite: bool, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp)`` into a new folder beside ``path``, then rename it into ``path``'s place: a
    failure leaves nothing behind, and what was at ``path`` goes only once the new folder is whole."""
    path = check_new_folder(path, overwrite)
    output_dir(path.parent, what=f"the folder of {path.name}")
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp made it private; the folder gets the usual mode
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            path.rename(old / "previous")
        tmp.rename(path)
        if old is not None:
            shutil.rmtree(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)



def remove_stale_temporaries(folder: str | Path, names: Iterable[str]) -> list[Path]:
    """Delete the temporary files that ``atomic_path`` leaves when a process dies mid-write, for these
    target ``names`` only (nothing else in the folder is touched); returns what was removed."""
    removed = []
    for name in names:
        for stale in Path(folder).glob(TEMPORARY.format(name=name)):
            stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed



def write_json(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")



def read_json(path: str | Path, what: str = "file") -> dict:
    path = Path(path)
    try:
        return json.loads(read_text(path, what))
    except json.JSONDecodeError as err:
        raise MiniGPTError(f"{path} is not valid JSON ({err.msg} at line {err.lineno})") from None



def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write tensors as safetensors. Tensors must not share storage (tied weights are saved once)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata or {"format": "pt"})
        except SafetensorError as err:  # safetensors wraps the I/O error: "... (os error 28)"
            code = re.search(r"os error (\d+)", str(err))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1)))) from None



def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise MiniGPTError(f"weights file not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise MiniGPTError(f"{path} is not a readable safetensors file (truncated or corrupt?): {err}") from None



def read_header(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file's header."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise MiniGPTError(f"{path} is not a readable safetensors file (truncated or corrupt?): {err}") from None



def read_safetensors_metadata(path: str | Path, key: str) -> dict:
    """The JSON stored under ``key`` in a safetensors header; clear errors if absent or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise MiniGPTError(f"file not found: {path}")
    header = read_header(path)
    if key not in header:
        raise MiniGPTError(f"{path} has no {key!r} metadata (not written by minigpt?)")
    return metadata_json(path, header, key)



def metadata_json(path: Path, header: dict[str, str], key: str) -> dict:
    try:
        meta = json.loads(header[key])
    except json.JSONDecodeError as err:
        raise MiniGPTError(f"{path}: the {key!r} metadata is not valid JSON ({err.msg}); the file is damaged") from None
    if not isinstance(meta, dict):
        raise MiniGPTError(f"{path}: the {key!r} metadata is not a JSON object; the file is damaged")
    return meta
