"""Typed configuration dataclasses from TOML files and ``--key=value`` overrides.

A schema is a dataclass whose fields are declared with ``setting(default, help, choices)``: the
help text and the allowed values are stated once there and used by validation and ``--help``.
``build_config`` reads a flat TOML file, applies command-line overrides and constructs the schema;
an unknown key or a value of the wrong type is a ``MiniGPTError`` naming the file (or "command
line") and the key.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from .errors import MiniGPTError


def setting(default: Any, help: str, choices: Sequence[str] | None = None):
    """A dataclass field with its help text and, for a string, the values it may take."""
    metadata = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    return dataclasses.field(default=default, metadata=metadata)


def check_choices(obj: Any, prefix: str = "") -> None:
    """Every field declared with ``choices`` holds one of them, or a ``MiniGPTError`` names it."""
    for f in dataclasses.fields(obj):
        choices = f.metadata.get("choices")
        if choices is not None and getattr(obj, f.name) not in choices:
            raise MiniGPTError(f"{prefix}{f.name} must be one of {', '.join(choices)}; got {getattr(obj, f.name)!r}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _python_type(tp: Any) -> type:
    """A field's type; under ``from __future__ import annotations`` dataclasses store its name."""
    return {"int": int, "float": float, "bool": bool, "str": str}.get(tp, tp) if isinstance(tp, str) else tp


def coerce(key: str, value: Any, tp: Any, source: str) -> Any:
    """Convert ``value`` (from TOML or a command-line string) to the field's type, or explain what was expected."""
    tp = _python_type(tp)
    if isinstance(value, str) and tp is not str:
        text = value.strip()
        if tp is bool:
            lowered = text.lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
        else:
            try:
                number = float(text) if tp is float else int(text)
            except ValueError:
                pass
            else:
                return number
        raise MiniGPTError(f"{source}: {key} expects {_type_name(tp)}, got {value!r}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise MiniGPTError(f"{source}: {key} expects {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def unknown_key(key: str, known: Sequence[str], source: str) -> MiniGPTError:
    """The error for a key no schema has, with the closest known key as a suggestion."""
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else "; run with --help to list the keys"
    return MiniGPTError(f"{source}: unknown key {key!r}{hint}")


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict; a missing file or a syntax error names the file."""
    path = Path(path)
    if not path.is_file():
        raise MiniGPTError(f"config file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise MiniGPTError(f"{path}: not valid TOML ({err})") from None


def parse_overrides(overrides: Sequence[str], fields: dict[str, dataclasses.Field]) -> dict[str, Any]:
    """``--key=value`` items as typed values; a bare ``--flag`` switches a boolean on."""
    values: dict[str, Any] = {}
    for item in overrides:
        if not item.startswith("--"):
            raise MiniGPTError(f"command line: expected --key=value, got {item!r}")
        key, has_value, raw = item[2:].partition("=")
        if key not in fields:
            raise unknown_key(key, list(fields), "command line")
        if not has_value:
            if _python_type(fields[key].type) is not bool:
                raise MiniGPTError(f"command line: expected --key=value, got {item!r}")
            raw = "true"
        values[key] = coerce(key, raw, fields[key].type, "command line")
    return values


def build_config(cls: type, toml_path: str | Path | None, overrides: Sequence[str] = ()):
    """Read ``toml_path`` (flat ``key = value`` lines), apply ``--key=value`` overrides, construct ``cls``."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if toml_path is not None:
        for key, value in read_toml(toml_path).items():
            if key not in fields:
                raise unknown_key(key, list(fields), str(toml_path))
            values[key] = coerce(key, value, fields[key].type, str(toml_path))
    values.update(parse_overrides(overrides, fields))
    return cls(**values)


def config_help(cls: type, skip: type | None = None) -> str:
    """One line per key: name, default, type, meaning and allowed values (for ``--help``); keys of ``skip`` left out."""
    lines = []
    skipped = {f.name for f in dataclasses.fields(skip)} if skip else set()
    for f in dataclasses.fields(cls):
        if f.name in skipped:
            continue
        default = str(f.default).lower() if isinstance(f.default, bool) else repr(f.default)
        text = f.metadata.get("help", "")
        if "choices" in f.metadata:
            text += f" [{' | '.join(f.metadata['choices'])}]"
        lines.append(f"  --{f.name}={default}".ljust(44) + f"{_type_name(_python_type(f.type)):<6} {text}")
    return "\n".join(lines)
