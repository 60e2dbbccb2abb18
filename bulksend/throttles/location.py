"""Where a shared throttle store is, and its password: never in the URL.

``redis://host:port/db`` (``rediss://`` for TLS), optionally ``?password_file=PATH``: the
password is the file's first line (a mounted Secret, say), or else the environment variable
:data:`THROTTLE_PASSWORD_ENV`. A URL that holds a password is refused: it would show in
process lists, shell history and logs. The same rule as the PostgreSQL journal's URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bulksend.errors import ConfigError
from bulksend.store_urls import read_password_file, split_store_url, without_query

__all__ = ["THROTTLE_PASSWORD_ENV", "StoreLocation", "parse_store_url"]

#: The shared throttle store's password when no ``password_file`` is given.
THROTTLE_PASSWORD_ENV: Final = "BULKSEND_THROTTLE_PASSWORD"  # noqa: S105 (a variable name)


@dataclass(frozen=True, slots=True)
class StoreLocation:
    """The store's URL (without our parameter) and where its password comes from."""

    url: str
    password_file: Path | None

    def password(self, environ: Mapping[str, str]) -> str | None:
        """The password: ``password_file``'s first line, else the environment's, else None.

        Raises:
            ConfigError: the password file cannot be read.
        """
        if self.password_file is None:
            return environ.get(THROTTLE_PASSWORD_ENV) or None
        try:
            return read_password_file(self.password_file) or None
        except OSError as e:
            raise ConfigError(
                f"cannot read the throttle store's password file {str(self.password_file)!r}: "
                f"{e.strerror}"
            ) from None


def parse_store_url(value: str) -> StoreLocation:
    """``redis://host:port/db[?password_file=PATH]``, checked.

    Raises:
        ValueError: another scheme, no host, or a password in the URL (the message says
            what to write instead).
    """
    try:
        parts, _rest, password_file = split_store_url(value)
    except ValueError:
        raise ValueError(
            "leave the password out of the URL (it would show in logs): give "
            f"?password_file=PATH or set ${THROTTLE_PASSWORD_ENV}"
        ) from None
    if parts.scheme not in {"redis", "rediss"} or not parts.hostname:
        raise ValueError("write the store as redis://host:port/db (rediss:// for TLS)")
    return StoreLocation(without_query(value, "password_file"), password_file)
