"""The identity of a campaign run, as the journal stores and compares it on resume.

One part per campaign-file setting or file, so a refusal can name what changed; the
sending-policy sections (:data:`POLICY_SECTIONS`) may change on resume, the content may not.
"""

from __future__ import annotations

import hashlib
import json
import os
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from bulksend.errors import JournalError


def hash_files(paths: Iterable[str | os.PathLike[str]]) -> str:
    """SHA-256 over the contents of ``paths`` in order (names do not matter), as hex.

    Raises:
        JournalError: a file cannot be read.
    """
    total = hashlib.sha256()
    for path in paths:
        try:
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, "sha256").digest()
        except OSError as e:
            raise JournalError(
                f"cannot read {os.fspath(path)!r} to identify the campaign: {e}"
            ) from e
        total.update(digest)
    return total.hexdigest()


#: Sections of the campaign file that say how to send, not what (rates, connections,
#: timeouts, retries, routes, where the journal is): a change to them is allowed on resume,
#: and reported.
POLICY_SECTIONS: Final = ("policy", "routing", "journal", "schedule", "events")
_FILE_PART: Final = "campaign file: "


def _campaign_file_parts(campaign: str | os.PathLike[str]) -> dict[str, str]:
    """One identity part per setting of the campaign file, holding its value (JSON).

    Parts are named ``campaign file: <section.key>``, so a refusal can show what changed
    from what to what; comments and layout are not part of the identity.

    Raises:
        JournalError: the file cannot be read or is not TOML.
    """
    try:
        with open(campaign, "rb") as f:
            data = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise JournalError(
            f"cannot read {os.fspath(campaign)!r} to identify the campaign: {e}"
        ) from e
    parts: dict[str, str] = {}

    def walk(prefix: str, table: Mapping[str, Any]) -> None:
        for key, value in table.items():
            if isinstance(value, dict):
                walk(f"{prefix}{key}.", value)
            else:
                parts[f"{_FILE_PART}{prefix}{key}"] = json.dumps(value, sort_keys=True, default=str)

    walk("", data)
    return parts


def _is_policy_part(part: str) -> bool:
    """Whether an identity part is a sending-policy setting (may change on resume)."""
    return part.startswith(_FILE_PART) and (
        part.removeprefix(_FILE_PART).split(".", 1)[0] in POLICY_SECTIONS
    )


def _describe_changes(
    stored: Mapping[str, str], given: Mapping[str, str], parts: Sequence[str]
) -> str:
    """``a.b ("old" -> "new"), templates`` for the changed ``parts`` (at most 8 named)."""
    shown = []
    for part in parts[:8]:
        name = part.removeprefix(_FILE_PART)
        if part.startswith(_FILE_PART):
            name += f" ({stored.get(part, 'unset')} -> {given.get(part, 'unset')})"
        shown.append(name)
    more = f" and {len(parts) - 8} more" if len(parts) > 8 else ""
    return ", ".join(shown) + more


def campaign_identity(
    campaign: str | os.PathLike[str],
    templates: Iterable[str | os.PathLike[str]],
    recipients: str | os.PathLike[str],
    attachments: Iterable[str | os.PathLike[str]] = (),
) -> dict[str, str]:
    """The identity of a campaign run: one part per setting or file, so a change can be named.

    Content parts (what is sent: the campaign file's settings outside
    :data:`POLICY_SECTIONS`, the templates, the recipients file, each attachment's bytes as
    a part of its own, "attachment <path>") refuse a resume when they change, unless forced;
    policy parts (how it is sent) may change (see :func:`_is_policy_part`).
    """
    identity = {
        **_campaign_file_parts(campaign),
        "templates": hash_files(templates),
        "recipients file": hash_files([recipients]),
    }
    for path in attachments:
        identity[f"attachment {os.fspath(path)}"] = hash_files([path])
    return identity


def _normalise_identity(identity: str | bytes | Mapping[str, str | bytes]) -> dict[str, str]:
    if isinstance(identity, bytes):
        return {"campaign": identity.hex()}
    if isinstance(identity, str):
        return {"campaign": identity}
    return {k: v.hex() if isinstance(v, bytes) else v for k, v in identity.items()}
