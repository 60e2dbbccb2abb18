"""Recipients: a streaming reader with validation, de-duplication and suppression.

How this works. A recipients file (CSV with a header row, or JSON Lines) is read one row at a
time by a generator, so a file of millions of rows never sits in memory: only the current row
and two fingerprint tables do.

Each row is checked in order:

1. the row itself parses (CSV column count, JSON object);
2. the address is valid (``email_validator`` without DNS; RFC 5321 §4.5.3.1 lengths); the
   domain is converted to A-labels for the envelope (RFC 5890), the local part is kept as
   written (RFC 5321 §2.4: it is case-sensitive), and a non-ASCII local part marks the
   recipient as needing SMTPUTF8 (RFC 6531);
3. the address is not a duplicate of an earlier row (same local part, domain compared without
   case);
4. the address is not on the suppression list (compared without case *at all*: an
   unsubscribe for ``John@x`` also stops ``john@x``; erring towards not sending is the safe
   side of a legal obligation).

A row that fails any step is not sent: it is handed to ``on_reject`` (normally a
:class:`RejectsFile`, a CSV of line number, raw email and reason created with mode 0600, since
it holds personal data) and reading goes on. Only a file-level problem (the file is missing,
the CSV has no email column, a byte that is not valid in the file's encoding, UTF-8 unless
``[recipients] encoding`` says otherwise) raises :class:`~bulksend.errors.ConfigError`.

Memory: de-duplication and suppression keep 8-byte fingerprints of the normalised address
(Python's string hash: SipHash, keyed anew in every process unless ``PYTHONHASHSEED`` fixes
the key, so nobody can make up addresses that collide, as they could against an unkeyed
8-byte digest; a fingerprint never leaves its process) in an open-addressing table
(:class:`FingerprintSet`) held in an ``array('Q')``: 16-32 bytes per distinct address (48 for
a moment while the table doubles), so 1M recipients cost 16-32 MiB instead of the ~100 MiB a
``set`` of strings would. Two different addresses share a
64-bit fingerprint with probability about n²/2⁶⁵ (3e-8 for a million), in which case the second
is dropped as a duplicate.
"""

from __future__ import annotations

import _csv
import codecs
import contextlib
import csv
import enum
import io
import json
import os
import re
from array import array
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final

import email_validator

from bulksend.config import decoding_problem
from bulksend.errors import ConfigError
from bulksend.files import private_fd

__all__ = [
    "FingerprintSet",
    "Recipient",
    "RecipientReader",
    "Reject",
    "RejectKind",
    "RejectsFile",
    "SuppressionFile",
    "load_suppression",
    "normalise_address",
    "numbered_rows",
]

_SURROGATE = re.compile(r"[\ud800-\udfff]")
_RAW_EMAIL_LIMIT = 320


# RFC 5322 dot-atom of ASCII atext, at most 64 octets (RFC 5321 §4.5.3.1.1): the local parts
# email-validator accepts unchanged, so a row with one at a known domain skips re-validation.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_LOCAL = re.compile(rf"(?=.{{1,64}}\Z){_ATEXT}(?:\.{_ATEXT})*\Z")
_DOMAIN_CACHE = 1_000_000  # distinct domains remembered (memory stays bounded)


@dataclass(frozen=True, slots=True)
class Recipient:
    """One valid recipient.

    ``address`` is what goes into RCPT TO: the local part as written, the domain in A-labels
    and lower case. ``display_address`` keeps the Unicode domain (for SMTPUTF8 headers).
    """

    address: str
    fields: Mapping[str, object]
    line: int = 0
    display_address: str = ""
    needs_smtputf8: bool = False

    @property
    def domain(self) -> str:
        """The envelope domain (A-labels, lower case)."""
        return self.address.rpartition("@")[2]


class RejectKind(enum.Enum):
    """Why a row was not sent."""

    INVALID = "invalid"
    DUPLICATE = "duplicate"
    SUPPRESSED = "suppressed"


@dataclass(frozen=True, slots=True)
class Reject:
    """A row that will not be sent, with where it is in the file and why."""

    line: int
    raw_email: str
    reason: str
    kind: RejectKind = RejectKind.INVALID


_UNSIGNED: Final = 2**64 - 1


class FingerprintSet:
    """A set of 64-bit fingerprints in one flat array (open addressing, linear probing).

    8 bytes a slot, between a quarter and a half of the slots used: 16-32 bytes per entry,
    against ~70-100 bytes for a Python ``set`` of ints or strings.
    """

    __slots__ = ("_count", "_mask", "_slots")

    def __init__(self, capacity: int = 1024) -> None:
        size = 1
        while size < capacity * 2:
            size *= 2
        self._slots = array("Q", bytes(8 * size))
        self._mask = size - 1
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @staticmethod
    def fingerprint(key: str) -> int:
        """The 64-bit fingerprint of a key in this process (never 0: 0 marks an empty slot)."""
        return (hash(key) & _UNSIGNED) or 1

    def add(self, key: str) -> bool:
        """Add a key; return False when it (or its fingerprint) was already there."""
        return self._add(self.fingerprint(key))

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        fp = self.fingerprint(key)
        slots, mask = self._slots, self._mask
        i = fp & mask
        while True:
            value = slots[i]
            if value == fp:
                return True
            if value == 0:
                return False
            i = (i + 1) & mask

    def _add(self, fp: int) -> bool:
        slots, mask = self._slots, self._mask
        i = fp & mask
        while True:
            value = slots[i]
            if value == fp:
                return False
            if value == 0:
                slots[i] = fp
                self._count += 1
                if self._count * 2 > mask + 1:
                    self._grow()
                return True
            i = (i + 1) & mask

    def _grow(self) -> None:
        old = self._slots
        size = (self._mask + 1) * 2
        self._slots = array("Q", bytes(8 * size))
        self._mask = size - 1
        self._count = 0
        for fp in old:
            if fp:
                self._add(fp)


def normalise_address(address: str) -> str:
    """The suppression key of an address: trimmed, case-folded, domain in A-labels."""
    address = address.strip()
    local, at, domain = address.rpartition("@")
    if not at:
        return address.lower()
    if not domain.isascii():
        # An invalid domain is kept as written: it can match no valid recipient anyway.
        with contextlib.suppress(email_validator.EmailNotValidError):
            domain = email_validator.validate_email(
                f"x@{domain}", check_deliverability=False, test_environment=True
            ).ascii_domain
    return f"{local.lower()}@{domain.lower()}"


def load_suppression(path: Path) -> FingerprintSet:
    """Read a suppression file: one address a line; blank lines and ``#`` comments ignored.

    Raises:
        ConfigError: the file cannot be read.
    """
    table = FingerprintSet()
    try:
        with path.open(encoding="utf-8", errors="surrogateescape") as lines:
            for line in lines:
                text = line.strip()
                if text and not text.startswith("#"):
                    table.add(normalise_address(text))
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read the suppression file ({exc.strerror}). Check "
            "recipients.suppression."
        ) from None
    return table


class SuppressionFile:
    """A suppression file that a long run re-reads when it changes.

    ``address in suppression`` compares as the reader does (:func:`normalise_address`).
    :meth:`changed` is one ``stat``: cheap enough to ask every few seconds.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self._table = FingerprintSet()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None  # gone for a moment (replaced by a rename): keep what was read
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def changed(self) -> bool:
        """Whether the file changed (size, mtime or inode) since it was last read."""
        stamp = self._stat()
        return stamp is not None and stamp != self._stamp

    def reload(self) -> None:
        """Read the file again (a change made during the read is seen by the next check).

        Raises:
            ConfigError: the file cannot be read.
        """
        stamp = self._stat()
        self._table = load_suppression(self.path)
        self._stamp = stamp

    def __contains__(self, address: object) -> bool:
        return isinstance(address, str) and normalise_address(address) in self._table


class RejectsFile:
    """The rejects CSV (``line,email,reason``), created with mode 0600: it holds addresses.

    Use as a context manager, or call :meth:`close`. Instances are callable, so one can be
    passed straight as ``on_reject``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            fd = private_fd(path, os.O_WRONLY | os.O_TRUNC)
        except OSError as exc:
            raise ConfigError(
                f"{path}: cannot create the rejects file ({exc.strerror}). Check "
                "recipients.rejects."
            ) from None
        self._file = open(fd, "w", encoding="utf-8", newline="", errors="backslashreplace")  # noqa: SIM115
        self._writer = csv.writer(self._file)
        self._writer.writerow(["line", "email", "reason"])
        self.count = 0

    def __call__(self, reject: Reject) -> None:
        self._writer.writerow([reject.line, reject.raw_email, reject.reason])
        self.count += 1

    def close(self) -> None:
        """Flush and close the file."""
        self._file.close()

    def __enter__(self) -> RejectsFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def numbered_rows(reader: _csv.Reader) -> Iterator[tuple[int, list[str] | csv.Error]]:
    """A ``csv.reader``'s rows from where it stands, each with the line it starts on.

    A row that cannot be read comes as its :class:`csv.Error`, and reading goes on.
    """
    last_line = reader.line_num
    while True:
        start = last_line + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            last_line = reader.line_num
            yield start, exc
            continue
        last_line = reader.line_num
        yield start, row


class _RowError(Exception):
    """A row cannot be used; the message is the reason written to the rejects file."""


@dataclass(slots=True)
class RecipientReader:
    """Stream valid recipients from a CSV or JSON Lines file.

    Iterating opens the file and yields :class:`Recipient` objects one by one; rows that are
    not sent go to ``on_reject``. ``stats`` counts what was seen.

    Raises (while iterating):
        ConfigError: the file cannot be read or decoded, or a CSV file has no email column.
    """

    path: Path
    format: str = "csv"
    email_column: str = "email"
    suppression: FingerprintSet | None = None
    on_reject: Callable[[Reject], None] | None = None
    allow_test_domain: bool = False
    encoding: str = "utf-8"
    #: raw domain -> (A-label domain, display domain), for domains already validated.
    _domains: dict[str, tuple[str, str]] = field(default_factory=dict, repr=False)

    def __iter__(self) -> Iterator[Recipient]:
        seen = FingerprintSet()
        for line, raw_email, fields, problem in self._rows():
            if problem is not None:
                self._reject(Reject(line, raw_email, problem))
                continue
            try:
                recipient = self._validate(raw_email, fields, line)
            except _RowError as exc:
                self._reject(Reject(line, raw_email, str(exc)))
                continue
            if not seen.add(recipient.address):
                self._reject(Reject(line, raw_email, "duplicate address", RejectKind.DUPLICATE))
                continue
            if self.suppression is not None and (
                normalise_address(recipient.address) in self.suppression
            ):
                self._reject(
                    Reject(line, raw_email, "on the suppression list", RejectKind.SUPPRESSED)
                )
                continue
            yield recipient

    def raw_emails(self) -> Iterator[str]:
        """The email column of every row, unvalidated (a cheap pass, e.g. to plan shards)."""
        for _line, raw_email, _fields, _problem in self._rows():
            yield raw_email

    def _rows(self) -> Iterator[tuple[int, str, dict[str, object], str | None]]:
        rows = self._csv_rows() if self.format == "csv" else self._jsonl_rows()
        try:
            yield from rows
        except UnicodeDecodeError as exc:
            # The loader checked the whole file; it must have changed since.
            problem = decoding_problem(self.path, self.encoding) or f"{self.path}: {exc}"
            raise ConfigError(problem) from None

    def _reject(self, reject: Reject) -> None:
        if self.on_reject is not None:
            if len(reject.raw_email) > _RAW_EMAIL_LIMIT:
                reject = Reject(
                    reject.line,
                    reject.raw_email[:_RAW_EMAIL_LIMIT] + "...",
                    reject.reason,
                    reject.kind,
                )
            self.on_reject(reject)

    def _validate(self, raw_email: str, fields: dict[str, object], line: int) -> Recipient:
        email = raw_email.strip()
        if not email:
            raise _RowError("empty email")
        if _SURROGATE.search(email):  # a JSON "\\udcXX" escape
            raise _RowError("email contains an unpaired surrogate")
        local, _, raw_domain = email.rpartition("@")
        known = self._domains.get(raw_domain) if _PLAIN_LOCAL.match(local) else None
        if known is not None:
            # Fast path: a plain dot-atom local part (which email-validator accepts as is) at
            # a domain already validated once. A list has far fewer domains than rows.
            ascii_domain, display_domain = known
        else:
            try:
                checked = email_validator.validate_email(
                    email,
                    check_deliverability=False,
                    test_environment=self.allow_test_domain,
                )
            except email_validator.EmailNotValidError as exc:
                raise _RowError(f"invalid address: {exc}") from None
            local = checked.local_part
            ascii_domain = checked.ascii_domain.lower()
            display_domain = checked.domain
            if len(self._domains) < _DOMAIN_CACHE:
                self._domains[raw_domain] = (ascii_domain, display_domain)
        address = f"{local}@{ascii_domain}"
        # RFC 5321 §4.5.3.1.3: path <= 256 octets with <> (63 characters are at most 252).
        if len(address) > 63 and len(address.encode("utf-8")) > 254:
            raise _RowError("address longer than 254 octets")
        smtputf8 = not local.isascii()
        return Recipient(
            address=address,
            fields=fields,
            line=line,
            display_address=f"{local}@{display_domain}",
            needs_smtputf8=smtputf8,
        )

    def _open(self) -> io.TextIOWrapper:
        # A UTF-8 file may start with a byte order mark (Excel writes one): skip it.
        utf8 = codecs.lookup(self.encoding).name == "utf-8"
        try:
            return open(self.path, encoding="utf-8-sig" if utf8 else self.encoding, newline="")
        except OSError as exc:
            raise ConfigError(
                f"{self.path}: cannot read the recipients file ({exc.strerror}). Check "
                "recipients.file."
            ) from None

    def _csv_rows(self) -> Iterator[tuple[int, str, dict[str, object], str | None]]:
        with self._open() as stream:
            reader = csv.reader(stream)
            try:
                header = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise ConfigError(f"{self.path}: line 1: unreadable header ({exc}).") from None
            names = [name.strip() for name in header]
            lowered = [name.lower() for name in names]
            if self.email_column.lower() not in lowered:
                raise ConfigError(
                    f"{self.path}: line 1: no {self.email_column!r} column in the header "
                    f"({', '.join(names)}). Add it, or set recipients.email_column."
                )
            email_index = lowered.index(self.email_column.lower())
            width = len(names)
            for start, row in numbered_rows(reader):
                if isinstance(row, csv.Error):
                    yield start, "", {}, f"unreadable CSV row: {row}"
                    continue
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # a blank line is not a recipient
                if len(row) != width:
                    raw = row[email_index] if email_index < len(row) else ""
                    yield start, raw, {}, f"expected {width} columns, found {len(row)}"
                    continue
                fields: dict[str, object] = dict(zip(names, row, strict=True))
                raw_email = row[email_index]
                fields[names[email_index]] = raw_email
                yield start, raw_email, fields, None

    def _jsonl_rows(self) -> Iterator[tuple[int, str, dict[str, object], str | None]]:
        with self._open() as stream:
            for number, text in enumerate(stream, start=1):
                if not text.strip():
                    continue
                try:
                    value = json.loads(text)
                except ValueError as exc:
                    yield number, "", {}, f"invalid JSON: {exc}"
                    continue
                if not isinstance(value, dict):
                    yield number, "", {}, "a line must be a JSON object"
                    continue
                raw_email = value.get(self.email_column)
                if not isinstance(raw_email, str):
                    what = "missing" if raw_email is None else "not a string"
                    yield number, "", {}, f"{self.email_column!r} is {what}"
                    continue
                yield number, raw_email, value, None
