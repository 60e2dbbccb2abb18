"""The reader of campaign-file tables: every key it hands out knows its dotted path.

A :class:`Table` wraps one TOML table (:mod:`tomllib`'s dict) with the file it came from and
the dotted path that leads to it, and records which keys were read. So a wrong type, a missing
key, a missing file or a key that nothing read (:meth:`Table.finish`) becomes one
:class:`~bulksend.errors.ConfigError` line that names the file, the key as written in TOML
(``policy.sites."google.com".rate``) and what to do about it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from bulksend.config.values import parse_domain
from bulksend.errors import ConfigError

__all__ = ["Table", "host_keyed", "toml_type"]

_T = TypeVar("_T")

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key_part(name: str) -> str:
    return name if _BARE_KEY.match(name) else '"' + name.replace('"', '\\"') + '"'


class Table:
    """A TOML table that remembers its dotted path and which keys were read."""

    def __init__(
        self,
        data: Mapping[str, Any],
        path: str,
        source: Path,
        warnings: list[str] | None = None,
    ) -> None:
        self.data = data
        self.path = path
        self.source = source
        self.used: set[str] = set()
        #: Shared by every table of one file: problems worth a warning, not an error.
        self.warnings: list[str] = [] if warnings is None else warnings

    def key(self, name: str) -> str:
        part = _key_part(name)
        return f"{self.path}.{part}" if self.path else part

    def error(self, name: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.key(name)}: {problem}. {fix}")

    def __contains__(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str, *, required: bool = False) -> Any:
        """The value as TOML gave it (None when absent), marked as read."""
        self.used.add(name)
        if name not in self.data:
            if required:
                raise self.error(name, "missing", f"Add `{name} = ...` to [{self.path or '.'}].")
            return None
        return self.data[name]

    def typed(self, name: str, kind: type[_T], what: str, *, required: bool = False) -> _T | None:
        value = self.raw(name, required=required)
        if value is None:
            return None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(
                name, f"expected {what}, found {toml_type(value)} {value!r}", f"Write {what}."
            )
        return value

    def string(self, name: str, *, required: bool = False) -> str | None:
        return self.typed(name, str, "a string", required=required)

    def req_string(self, name: str) -> str:
        value = self.string(name, required=True)
        assert value is not None
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self.typed(name, bool, "true or false")
        return default if value is None else value

    def integer(self, name: str, *, minimum: int = 0) -> int | None:
        value = self.typed(name, int, "an integer")
        if value is not None and value < minimum:
            raise self.error(name, f"{value} is below {minimum}", f"Use a value >= {minimum}.")
        return value

    def number(self, name: str) -> float | None:
        value = self.raw(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(
                name, f"expected a number, found {toml_type(value)} {value!r}", "Write a number."
            )
        return float(value)

    def converted(self, name: str, convert: Callable[[Any], _T], hint: str) -> _T | None:
        value = self.raw(name)
        if value is None:
            return None
        try:
            return convert(value)
        except (ValueError, TypeError) as exc:
            raise self.error(name, str(exc), hint) from None

    def sub(self, name: str, *, required: bool = False) -> Table | None:
        value = self.typed(name, dict, "a table", required=required)
        if value is None:
            return None
        return self.child(value, name)

    def child(self, data: Mapping[str, Any], name: str, index: int | None = None) -> Table:
        """The table ``data`` found at key ``name`` (item ``index`` of its array) of this one."""
        path = self.key(name) if index is None else f"{self.key(name)}[{index}]"
        return Table(data, path, self.source, self.warnings)

    def string_list(self, name: str) -> list[str]:
        value = self.typed(name, list, "a list of strings")
        if value is None:
            return []
        for item in value:
            if not isinstance(item, str):
                raise self.error(
                    name, f"expected strings, found {toml_type(item)} {item!r}", "Quote each."
                )
        return list(value)

    def path_(
        self,
        name: str,
        *,
        required: bool = False,
        must_exist: bool = True,
        within: Path | None = None,
    ) -> Path | None:
        """A file path; with ``within``, one that must lie in that directory."""
        text = self.string(name, required=required)
        if text is None:
            return None
        path = _resolve(self, name, text, must_exist=must_exist)
        if within is not None and not path.resolve().is_relative_to(within.resolve()):
            raise self.error(
                name,
                f"{text!r} is outside the campaign directory {str(within)!r}",
                "Move the file into it, or set `allow_outside_paths = true` in [campaign].",
            )
        return path

    def finish(self) -> None:
        """Refuse any key that was not read: a typo must never be ignored silently."""
        for name in self.data:
            if name not in self.used:
                close = difflib.get_close_matches(name, list(self.used), n=1)
                hint = f"Did you mean `{close[0]}`?" if close else ""
                allowed = ", ".join(sorted(self.used)) or "none"
                raise self.error(
                    name, "unknown key", f"{hint} Keys allowed here: {allowed}.".lstrip()
                )

    def items(self) -> Iterator[tuple[str, Any]]:
        self.used.update(self.data)
        return iter(self.data.items())


def toml_type(value: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _resolve(table: Table, name: str, text: str, *, must_exist: bool) -> Path:
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = table.source.parent / path
    if must_exist and not path.is_file():
        raise table.error(
            name,
            f"file {str(path)!r} does not exist or is not a file",
            "Fix the path (relative paths are read from the campaign file's directory).",
        )
    if not must_exist and not path.parent.is_dir():
        raise table.error(
            name, f"directory {str(path.parent)!r} does not exist", "Create it or fix the path."
        )
    return path


def host_keyed(table: Table, what: str) -> Iterator[tuple[str, str, Any]]:
    """``(key as written, key in A-labels, value)`` for each key of a table of domains.

    Keys may be U-labels (``"müller.de"``), any case, with a final dot (or, for MX suffixes,
    a leading one); two keys that name the same domain are refused.
    """
    seen: dict[str, str] = {}
    for name, value in table.items():
        try:
            key = parse_domain(name.lstrip("."))
        except ValueError as exc:
            raise table.error(
                name, f"not a {what} ({exc})", "Use a name like 'example.com' or 'müller.de'."
            ) from None
        if key in seen:
            raise table.error(
                name, f"names the same domain as {seen[key]!r} ({key})", "Keep one of them."
            )
        seen[key] = name
        yield name, key, value
