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
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from .files import read_text
from .errors import MiniGPTError


@dataclass(frozen=True)
class Range:
    """The numbers a setting accepts: an interval, either end open, closed or absent."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, x: float) -> bool:
        if self.low is not None and (x <= self.low if self.low_open else x < self.low):
            return False
        return not (self.high is not None and (x >= self.high if self.high_open else x > self.high))

    def __str__(self) -> str:
        def show(x: float) -> str:
            return str(x) if isinstance(x, int) else f"{x:g}"  # integers in full: 2**63 - 1, not 9.22337e+18

        if self.high is None:
            return f"greater than {show(self.low)}" if self.low_open else f"at least {show(self.low)}"
        return f"in {'(' if self.low_open else '['}{show(self.low)}, {show(self.high)}{')' if self.high_open else ']'}"


BOOL_WORDS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}
AT_LEAST_0, AT_LEAST_1 = Range(0), Range(1)
POSITIVE = Range(0, low_open=True)
UNIT = Range(0, 1, high_open=True)  # dropout rates, Adam's betas
FRACTION = Range(0, 1, low_open=True)  # a factor that may shrink a value but not zero it
SEEDS = Range(0, 2**63 - 2**20)  # what a torch generator holds, with room for the offsets added per process


def setting(default: Any, help: str, choices: Sequence[str] | Mapping[str, Any] | None = None,
            within: Range | None = None, section: str | None = None):
    """A dataclass field with its help text and, when it has them, the values or the range it accepts.

    ``choices`` given as a mapping (a registry, such as the attention backends) is read each time a
    value is checked, so an entry registered later is a valid value. ``section`` starts a group of
    keys in ``--help`` (the fields after it, in declaration order, belong to it until the next)."""
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = choices if isinstance(choices, Mapping) else tuple(choices)
    if section is not None:
        metadata["section"] = section
    if within is not None:
        metadata["within"] = within
    return dataclasses.field(default=default, metadata=metadata)


def check_settings(obj: Any, prefix: str = "") -> None:
    """Each field holds a value of its type (a float finite), one of its ``choices``, inside its range;
    otherwise a ``MiniGPTError`` names the field, what it must be and what it got."""
    for f in dataclasses.fields(obj):
        value, tp, name = getattr(obj, f.name), _python_type(f.type), prefix + f.name
        if tp in (int, float):
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or (tp is int and not isinstance(value, int)):
                raise MiniGPTError(f"{name} must be {'an integer' if tp is int else 'a number'}, got {value!r}")
            if not math.isfinite(value):
                raise MiniGPTError(f"{name} must be a finite number, got {value!r}")
        elif tp in (bool, str) and not isinstance(value, tp):
            raise MiniGPTError(f"{name} must be a {_type_name(tp)}, got {value!r}")
        choices, within = f.metadata.get("choices"), f.metadata.get("within")
        if choices is not None and value not in choices:
            raise MiniGPTError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
        if within is not None and value not in within:
            raise MiniGPTError(f"{name} must be {within}, got {value!r}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _python_type(tp: Any) -> type:
    """A field's type; under ``from __future__ import annotations`` dataclasses store its name."""
    return {"int": int, "float": float, "bool": bool, "str": str}.get(tp, tp) if isinstance(tp, str) else tp


def switch_like(f: dataclasses.Field) -> bool:
    """A string setting whose choices include "true" and "false" (like compile's auto | true | false)
    also takes a boolean: ``compile = true`` in TOML, a bare ``--compile``."""
    return {"true", "false"} <= set(f.metadata.get("choices", ()))


def coerce(key: str, value: Any, tp: Any, source: str, switch: bool = False) -> Any:
    """Convert ``value`` (from TOML or a command-line string) to the field's type, or explain what was
    expected. ``switch``: see ``switch_like``."""
    tp = _python_type(tp)
    if switch and isinstance(value, bool):
        return "true" if value else "false"
    if switch and isinstance(value, str) and value.strip().lower() in BOOL_WORDS:
        return "true" if BOOL_WORDS[value.strip().lower()] else "false"
    if isinstance(value, str) and tp is not str:
        text = value.strip()
        if tp is bool:
            lowered = text.lower()
            if lowered in BOOL_WORDS:
                return BOOL_WORDS[lowered]
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
    """A TOML file as a dict; a missing file, bytes that are not UTF-8 or a syntax error name the file."""
    try:
        return tomllib.loads(read_text(path, "config file"))
    except tomllib.TOMLDecodeError as err:
        raise MiniGPTError(f"{path}: not valid TOML ({err})") from None


def parse_overrides(overrides: Sequence[str], fields: dict[str, dataclasses.Field]) -> dict[str, Any]:
    """``--key=value`` or ``--key value`` items as typed values; a bare ``--flag`` switches a boolean on."""
    values: dict[str, Any] = {}
    items = list(overrides)
    while items:
        item = items.pop(0)
        if not item.startswith("--") or item == "--":
            raise MiniGPTError(f"command line: expected --key=value or --key value, got {item!r}")
        key, has_value, raw = item[2:].partition("=")
        if key not in fields:
            raise unknown_key(key, list(fields), "command line")
        is_bool = _python_type(fields[key].type) is bool or switch_like(fields[key])
        if not has_value:
            follows = items[0] if items and not items[0].startswith("--") else None
            if follows is not None and (not is_bool or follows.lower() in BOOL_WORDS):
                raw = items.pop(0)
            elif is_bool:
                raw = "true"
            else:
                raise MiniGPTError(f"command line: --{key} needs a value (--{key}=VALUE or --{key} VALUE)")
        values[key] = coerce(key, raw, fields[key].type, "command line", switch_like(fields[key]))
    return values


def build_config(cls: type, toml_path: str | Path | None, overrides: Sequence[str] = ()):
    """Read ``toml_path`` (flat ``key = value`` lines), apply ``--key=value`` overrides, construct ``cls``."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if toml_path is not None:
        for key, value in read_toml(toml_path).items():
            if key not in fields:
                raise unknown_key(key, list(fields), str(toml_path))
            values[key] = coerce(key, value, fields[key].type, str(toml_path), switch_like(fields[key]))
    values.update(parse_overrides(overrides, fields))
    return cls(**values)


def sections(cls: type) -> dict[str, list[dataclasses.Field]]:
    """The fields of ``cls`` by section (``setting(section=...)``), sections in order of first appearance;
    a field without one belongs to the section of the field declared before it."""
    grouped: dict[str, list[dataclasses.Field]] = {}
    current = "settings"
    for f in dataclasses.fields(cls):
        current = f.metadata.get("section", current)
        grouped.setdefault(current, []).append(f)
    return grouped


def config_help(cls: type, skip: set[str] = frozenset()) -> str:
    """The keys of ``cls`` (but those named in ``skip``) for ``--help``, grouped under their sections:
    one line per key with its name, default, type, meaning and allowed values."""
    blocks = []
    for name, fields in sections(cls).items():
        lines = [key_help(f) for f in fields if f.name not in skip]
        if lines:
            blocks.append(f"  {name}:\n" + "\n".join(lines))
    return "\n".join(blocks)


def key_help(f: dataclasses.Field) -> str:
    """One ``--help`` line for a setting."""
    default = str(f.default).lower() if isinstance(f.default, bool) else repr(f.default)
    text = f.metadata.get("help", "")
    if "choices" in f.metadata:
        text += f" [{' | '.join(f.metadata['choices'])}]"
    if "within" in f.metadata:
        text += f" [{f.metadata['within']}]"
    return f"    --{f.name}={default}".ljust(46) + f"{_type_name(_python_type(f.type)):<6} {text}"
