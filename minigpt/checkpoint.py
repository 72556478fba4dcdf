"""File I/O in one place: reading text and JSON with one-line errors, output folders, atomic writes,
safetensors, and the training checkpoint format.

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


WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # what torch.compile and DDP put before every name


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The model inside torch.compile's and DDP's wrappers."""
    while isinstance(getattr(module, "_orig_mod", None), torch.nn.Module) or \
            isinstance(module, torch.nn.parallel.DistributedDataParallel):
        module = module._orig_mod if hasattr(module, "_orig_mod") else module.module
    return module


def plain_name(name: str) -> str:
    """A parameter's name without the prefixes a compiled or DDP-wrapped model's state dict carries."""
    while name.startswith(WRAPPER_PREFIXES):
        name = name.split(".", 1)[1]
    return name


def load_weights(module: torch.nn.Module, state: dict[str, torch.Tensor], source: str,
                 optional: Iterable[str] = ()) -> None:
    """Copy ``state`` into ``module``; a tensor of the wrong shape, a missing or an unexpected one is
    a ``MiniGPTError`` naming ``source`` and the tensors (``optional`` names may be missing). Names
    saved from a compiled or DDP-wrapped model (``_orig_mod.``, ``module.``) are read as the plain ones."""
    module = unwrap(module)
    state = {plain_name(k): v for k, v in state.items()}
    expected = module.state_dict()
    for name, tensor in state.items():
        if name in expected and expected[name].shape != tensor.shape:
            raise MiniGPTError(f"{source}: {name} has shape {tuple(tensor.shape)}, the model expects "
                               f"{tuple(expected[name].shape)} (do the config and the weights belong together?)")
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in set(optional)]
    if missing or unexpected:
        def few(names: list[str]) -> str:
            return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")

        parts = ([f"missing {few(missing)}"] if missing else []) + ([f"unexpected {few(unexpected)}"] if unexpected else [])
        raise MiniGPTError(f"{source}: does not fit the model: {'; '.join(parts)}")


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise MiniGPTError(f"weights file not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise MiniGPTError(f"{path} is not a readable safetensors file (truncated or corrupt?): {err}") from None


# ----------------------------------------------------------------------------- training checkpoints
#
# One safetensors file holds everything needed to sample from or resume a run, so it is written
# with a single atomic rename and can never be half old, half new:
#   tensors   "model.<name>"            weights (a tied LM head is stored once, as the embedding)
#             "optim.<param>.<name>"    AdamW moments and step counts
#             "rng.<name>"              torch RNG states (uint8)
#   metadata  "minigpt"                 JSON: format, model config, tokenizer, iteration, losses,
#                                       optimizer hyper-parameters, grad-scaler state, train config

FORMAT = "minigpt-checkpoint-1"
LAST, BEST = "ckpt_last.safetensors", "ckpt_best.safetensors"


def find_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint a training out_dir offers for inference: the best, else the last, else None."""
    for name in (BEST, LAST):
        if (Path(out_dir) / name).is_file():
            return Path(out_dir) / name
    return None


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with shared tensors kept once (the first name wins), under plain names."""
    seen: set[int] = set()
    out = {}
    for name, tensor in unwrap(model).state_dict().items():
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        out[name] = tensor
    return out


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    meta: dict,
    optimizer: torch.optim.Optimizer | None = None,
    rng: dict[str, torch.Tensor] | None = None,
) -> None:
    """Atomically write ``model`` (+ optimizer and RNG state when given) and the JSON ``meta``."""
    tensors = {f"model.{k}": v for k, v in model_tensors(model).items()}
    meta = dict(meta, format=FORMAT)
    if optimizer is not None:
        state = optimizer.state_dict()
        for idx, per_param in state["state"].items():
            for name, value in per_param.items():
                tensors[f"optim.{idx}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
        meta["optimizer_param_groups"] = state["param_groups"]
    for name, value in (rng or {}).items():
        tensors[f"rng.{name}"] = value
    save_tensors(path, tensors, metadata={"minigpt": json.dumps(meta)})


class Checkpoint:
    """A loaded checkpoint: ``meta`` (dict) and its tensors, split by kind."""

    def __init__(self, path: Path, tensors: dict[str, torch.Tensor], meta: dict):
        self.path, self.meta = path, meta
        self.model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        self.rng = {k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}
        self._optim = {k[6:]: v for k, v in tensors.items() if k.startswith("optim.")}

    def load_model(self, model: torch.nn.Module) -> None:
        """Copy the weights into ``model``; any mismatch is an error naming the tensors."""
        stored = set(model_tensors(model))
        tied = [k for k in unwrap(model).state_dict() if k not in stored]  # a tied copy is stored once, under its first name
        load_weights(model, self.model, str(self.path), optional=tied)

    def require(self, *keys: str) -> None:
        """Each key is in the metadata, or a ``MiniGPTError`` says which is not."""
        for key in keys:
            if key not in self.meta:
                raise MiniGPTError(f"{self.path}: the checkpoint's metadata has no {key!r} (damaged, or not written "
                                   f"by this version of minigpt)")

    def optimizer_state(self) -> dict | None:
        if "optimizer_param_groups" not in self.meta:
            return None
        state: dict[int, dict] = {}
        for key, value in self._optim.items():
            idx, name = key.split(".", 1)
            state.setdefault(int(idx), {})[name] = value
        return {"state": state, "param_groups": self.meta["optimizer_param_groups"]}


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint``; a truncated or foreign file is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise MiniGPTError(f"checkpoint not found: {path}")
    header = _read_header(path)
    if "minigpt" not in header:
        raise MiniGPTError(f"{path} is a safetensors file but not a minigpt checkpoint (no 'minigpt' metadata)")
    meta = _metadata_json(path, header, "minigpt")
    if meta.get("format") != FORMAT:
        raise MiniGPTError(f"{path}: unsupported checkpoint format {meta.get('format')!r}; expected {FORMAT!r}")
    return Checkpoint(path, load_tensors(path), meta)


def _read_header(path: Path) -> dict[str, str]:
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
    header = _read_header(path)
    if key not in header:
        raise MiniGPTError(f"{path} has no {key!r} metadata (not written by minigpt?)")
    return _metadata_json(path, header, key)


def _metadata_json(path: Path, header: dict[str, str], key: str) -> dict:
    try:
        meta = json.loads(header[key])
    except json.JSONDecodeError as err:
        raise MiniGPTError(f"{path}: the {key!r} metadata is not valid JSON ({err.msg}); the file is damaged") from None
    if not isinstance(meta, dict):
        raise MiniGPTError(f"{path}: the {key!r} metadata is not a JSON object; the file is damaged")
    return meta
