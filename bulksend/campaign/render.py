"""Rendering: one recipient + the campaign -> the exact bytes of one message.

How this works. Building every message through :mod:`email`'s generator costs far more than
sending it, so :class:`Campaign` splits the work in two:

Once per campaign (``Campaign.from_config``):
  * the Jinja2 templates are compiled in a :class:`~jinja2.sandbox.SandboxedEnvironment` with
    :class:`~jinja2.StrictUndefined` (HTML autoescaped, text not); a value with no template
    syntax is kept as a constant and never goes through Jinja; a template without logic is
    also compiled into a plan (:mod:`bulksend.campaign.plan`: constant text and slots, and for
    a body its lines without a slot quoted-printable encoded once), which renders the same
    bytes without Jinja (``validate`` says which templates take this fast path);
  * every header whose value is constant (MIME-Version, From and Subject when not templated,
    List-Unsubscribe-Post, Feedback-ID, Content-Type) is encoded, folded and, for DKIM,
    canonicalised;
  * the MIME skeleton is laid out with fixed boundaries, and attachments are base64-encoded
    (RFC 2045 §6.8, 76-column lines) into ready bytes.

Once per recipient (``Campaign.render``): render the templates, check every rendered header
value for control characters (header injection; we do not rely on the :mod:`email` package,
which let CR/LF through on older 3.11/3.12 patch levels: CVE-2024-6923), encode the header
values (RFC 2047 encoded-words for non-ASCII, RFC 5322 §2.2.3 folding at 78 columns, never
past 998 octets), quoted-printable-encode the bodies (RFC 2045 §6.7, ``binascii.b2a_qp``, so
lines stay under 76 columns and only 7-bit bytes remain), fill the skeleton, and sign. No
template may produce, and no message may be, more than ``[campaign] max_message_size``: output
is counted as the template generates it, so a runaway template fails its recipient early.

Before anything is sent (``Campaign.check_recipients``): every field a template reads
without a fallback (``| default(...)``, ``is defined``) must be a column of the recipients
file (its CSV header, or a key of one of its first JSON Lines rows), and a sample of the first
rows must render; :class:`RenderBreaker` tells a template problem (many renders fail) from a
few bad rows, then and during the run.

Boundaries are ``=_bs_<hash of the campaign id>_...``. The sequence ``=_`` can never occur in
quoted-printable output (``=`` there is always followed by two hex digits or a line break) nor
in base64 (``=`` only pads the end of the data), so no body can contain a boundary and no scan
is needed (RFC 2046 §5.1.1).

Each message carries (RFC 5322 §3.6) From, To, Subject, Date and a Message-ID that is a hash
of the campaign id and the recipient address, so a retry or an in-doubt resend carries the
same one; RFC 8058 one-click unsubscribe headers (``List-Unsubscribe: <https://...>`` and
``List-Unsubscribe-Post: List-Unsubscribe=One-Click``) when configured; and DKIM signatures
(see :mod:`bulksend.campaign.dkim`) over exactly these bytes. Lines end in CRLF; the data is
not dot-stuffed (the SMTP layer does that). The envelope sender may be per recipient (VERP):
``bounces+{token}@example.org`` with a token from :func:`verp_token`, signed with ``[bounces]``'s
key when it has one (:mod:`bulksend.campaign.verp`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import itertools
import re
import time
from collections.abc import Callable, Collection, Generator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
from jinja2 import nodes
from jinja2.sandbox import SandboxedEnvironment

from bulksend.campaign.dkim import DkimSigner, body_hash, relaxed_header
from bulksend.campaign.plan import BodyPlan, TextPlan, compile_template, qp_body, too_large
from bulksend.campaign.recipients import (
    Recipient,
    RecipientReader,
    Reject,
    load_suppression,
)
from bulksend.campaign.unsubscribe import signing_key, unsubscribe_token
from bulksend.campaign.verp import signed_return_path
from bulksend.config import CampaignConfig, load_campaign
from bulksend.errors import BulksendError, ConfigError
from bulksend.text import CONTROL

__all__ = [
    "Campaign",
    "RenderBreaker",
    "RenderError",
    "RenderedMessage",
    "encode_mailbox",
    "encode_unstructured",
    "encoded_words",
    "verp_decode",
    "verp_token",
]

_MAX_LINE = 998  # RFC 5322 §2.1.1, without CRLF
_FOLD_AT = 78
_TEMPLATE_SYNTAX = re.compile(r"\{\{|\{%|\{#")
_ATOM_PHRASE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]*$")  # atext and spaces
_VERP_SAFE_BYTES = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_"
_VERP_SAFE = frozenset(_VERP_SAFE_BYTES)
_URL_FORBIDDEN = re.compile(r"[\s<>\"\x00-\x1f\x7f]")
_EW_BYTES = 45  # 45 bytes -> 60 base64 chars -> a 72-char encoded-word (<= 75, RFC 2047 §2)


class RenderError(BulksendError):
    """One recipient's message could not be made; the campaign goes on without it."""

    def __init__(self, recipient: str, reason: str, line: int = 0) -> None:
        where = f" (line {line})" if line else ""
        super().__init__(f"{recipient}{where}: {reason}")
        self.recipient = recipient
        self.reason = reason
        self.line = line


class RenderBreaker:
    """Tells a template problem from a few bad rows by counting renders (pure, no I/O).

    A render failure is the sender's fault, never the recipient's. A few failing rows are
    set aside (the journal's ``not_rendered``); but when more than ``ratio`` of the first
    ``window`` renders fail, or ``streak`` fail one after the other, the templates do not fit
    the list, and going on would only set aside the rest of it: :meth:`failed` then returns
    why, and the caller stops.
    """

    __slots__ = ("failures", "last", "ratio", "renders", "run", "streak", "window")

    def __init__(self, *, window: int = 100, ratio: float = 0.1, streak: int = 20) -> None:
        self.window = window
        self.ratio = ratio
        self.streak = streak
        self.renders = 0
        self.failures = 0  # among the first ``window`` renders
        self.run = 0  # failures in a row
        self.last = ""

    def passed(self) -> None:
        """Count a message rendered."""
        self.renders += 1
        self.run = 0

    def failed(self, error: RenderError) -> str | None:
        """Count a render failure; returns why to stop once failures are systematic."""
        self.renders += 1
        self.run += 1
        self.last = error.reason
        if self.renders <= self.window:
            self.failures += 1
        if self.failures > self.window * self.ratio or self.run >= self.streak:
            return self.verdict()
        return None

    def verdict(self) -> str | None:
        """Why to stop, judged on the renders so far: the end of a list shorter than the
        window judges it whole (1 failure of 5 is too many, 1 of 10 is not)."""
        counted = min(self.renders, self.window)
        if self.failures > self.ratio * counted:
            return (
                f"renders fail systematically: {self.failures} of the first {counted} messages "
                f"could not be rendered (last: {self.last})"
            )
        if self.run >= self.streak:
            return (
                f"renders fail systematically: {self.run} messages in a row could not be "
                f"rendered (last: {self.last})"
            )
        return None


@dataclass(frozen=True, slots=True)
class RenderedMessage:
    """A message ready for one SMTP transaction.

    ``data`` has CRLF line endings and is *not* dot-stuffed. ``message_id`` is the header
    value, angle brackets included.
    """

    envelope_sender: str
    recipient: str
    data: bytes
    needs_8bitmime: bool
    needs_smtputf8: bool
    message_id: str


# --------------------------------------------------------------------------------------------
# VERP


def verp_token(address: str) -> str:
    """Encode a recipient address for a VERP return path: ``user=example.com``.

    The local part keeps letters, digits, ``.``, ``-`` and ``_``; every other octet (``+``,
    ``=``, UTF-8 bytes...) becomes ``+XX`` as in RFC 3461 §4 xtext, so the token is a valid
    dot-atom piece and pure ASCII. The domain follows the last ``=``.
    """
    local, _, domain = address.rpartition("@")
    raw = local.encode("utf-8", "surrogatepass")
    if not raw.translate(None, _VERP_SAFE_BYTES):  # every octet kept as it is
        return local + "=" + domain.lower()
    out: list[str] = []
    for byte in raw:
        out.append(chr(byte) if byte in _VERP_SAFE else f"+{byte:02X}")
    return "".join(out) + "=" + domain.lower()


def verp_decode(token: str) -> str:
    """Undo :func:`verp_token`.

    Raises:
        ValueError: the token is not one :func:`verp_token` makes.
    """
    local, sep, domain = token.rpartition("=")
    if not sep:
        raise ValueError(f"{token!r} is not a VERP token")
    raw = bytearray()
    i = 0
    while i < len(local):
        if local[i] == "+":
            raw.append(int(local[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.append(ord(local[i]))
            i += 1
    return raw.decode("utf-8") + "@" + domain


# --------------------------------------------------------------------------------------------
# Header encoding (RFC 5322 §2.2.3 folding, RFC 2047 encoded-words)


def encoded_words(text: str) -> list[str]:
    """Split ``text`` into RFC 2047 ``=?utf-8?b?...?=`` words of at most 75 characters.

    Words never split a UTF-8 sequence, so each decodes on its own (RFC 2047 §5 rule 3).
    """
    data = text.encode("utf-8")
    if len(data) <= _EW_BYTES:
        return [f"=?utf-8?b?{base64.b64encode(data).decode('ascii')}?="]
    words: list[str] = []
    chunk = bytearray()
    for char in text:
        encoded = char.encode("utf-8")
        if len(chunk) + len(encoded) > _EW_BYTES:
            words.append(f"=?utf-8?b?{base64.b64encode(chunk).decode('ascii')}?=")
            chunk = bytearray()
        chunk += encoded
    if chunk:
        words.append(f"=?utf-8?b?{base64.b64encode(chunk).decode('ascii')}?=")
    return words


def _fold(name: str, tokens: Sequence[str]) -> str | None:
    """Join tokens with single spaces after ``name:``, folding before a token at 78 columns.

    Folding never happens before an empty token, so no line is only whitespace. Returns None
    when a line would exceed 998 octets anyway (a single over-long token).
    """
    lines: list[str] = []
    current = name + ":"
    started = False
    for token in tokens:
        if started and token and len(current) + 1 + len(token) > _FOLD_AT:
            lines.append(current)
            current = " " + token
        else:
            current += " " + token
            started = True
    lines.append(current)
    for line in lines:
        if len(line) > _MAX_LINE or (not line.isascii() and len(line.encode()) > _MAX_LINE):
            return None
    return "\r\n".join(lines) + "\r\n"


def _check_value(value: str, what: str) -> None:
    match = CONTROL.search(value)
    if match is not None:
        raise ValueError(
            f"{what} contains the control character {match.group()!r}; a header is one line "
            "of text (check the merge field for line breaks)"
        )


def encode_unstructured(name: str, value: str) -> bytes:
    """Encode an unstructured header (Subject, an extra header) as folded ASCII with CRLF.

    Raises:
        ValueError: the value contains a control character (CR, LF, NUL, TAB...).
    """
    _check_value(value, name)
    if value.isascii() and "=?" not in value:
        if len(name) + 2 + len(value) <= _FOLD_AT:
            return f"{name}: {value}\r\n".encode("ascii")
        folded = _fold(name, value.split(" "))
        if folded is not None:
            return folded.encode("ascii")
    folded = _fold(name, encoded_words(value))
    assert folded is not None
    return folded.encode("ascii")


def _phrase_tokens(display: str) -> list[str]:
    if not display:
        return []
    if display.isascii() and "=?" not in display:
        if _ATOM_PHRASE.match(display) and display.strip() == display and "  " not in display:
            return display.split(" ")
        if len(display) < 900:
            return ['"' + display.replace("\\", "\\\\").replace('"', '\\"') + '"']
    return encoded_words(display)


def encode_mailbox(name: str, display: str, address: str) -> bytes:
    """Encode an address header (From, To, Reply-To): ``Display Name <local@domain>``.

    A non-ASCII display name becomes encoded-words; an ASCII one with specials is quoted.
    The address is written as given (UTF-8 only in an SMTPUTF8 message, RFC 6532 §3.2).

    Raises:
        ValueError: the display name or address contains a control character.
    """
    _check_value(display, f"{name} display name")
    _check_value(address, f"{name} address")
    if not display:
        folded = _fold(name, [address])
    else:
        folded = _fold(name, [*_phrase_tokens(display), f"<{address}>"])
    if folded is None:
        raise ValueError(f"{name} is too long")
    return folded.encode("utf-8")


# --------------------------------------------------------------------------------------------
# Templates


class _FieldFailure(Exception):
    """A template raised while rendering: which one, and what it raised."""

    def __init__(self, field: str, error: Exception) -> None:
        super().__init__(field, error)
        self.field = field
        self.error = error


class _BoundedEnvironment(SandboxedEnvironment):
    """The sandbox, with a cap on what one template may produce (``max_message_size``).

    Output is counted piece by piece as it is generated (:meth:`_Field.render`), and a
    repetition (``"x" * n``) that would exceed the cap is refused before it is built, so a
    runaway template fails its recipient instead of filling memory.
    """

    intercepted_binops = frozenset({"*"})

    def __init__(self, limit: int, **options: Any) -> None:
        super().__init__(**options)
        self.limit = limit

    def call_binop(
        self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any
    ) -> Any:
        for seq, times in ((left, right), (right, left)):
            if (
                isinstance(seq, str | bytes | list | tuple)
                and isinstance(times, int)
                and len(seq) * times > self.limit
            ):
                raise too_large(self.limit)
        return super().call_binop(context, operator, left, right)


class _Field:
    """A header value or body: a constant, or a compiled template.

    ``name`` says where the template is (its campaign key or file). ``variables`` are the
    names the template reads from outside itself (merge fields and globals alike), as
    :func:`jinja2.meta.find_undeclared_variables` finds them; ``required`` those of them it
    reads without a fallback (see :func:`_required`). ``plan`` is the template's compiled
    plan (:mod:`bulksend.campaign.plan`) when it has no logic; Jinja2 renders it otherwise.
    """

    __slots__ = ("body", "constant", "name", "plan", "required", "template", "variables")

    def __init__(
        self,
        name: str,
        constant: str | None,
        template: jinja2.Template | None,
        variables: frozenset[str] = frozenset(),
        required: frozenset[str] = frozenset(),
        *,
        plan: TextPlan | None = None,
        body: bool = False,
    ) -> None:
        self.name = name
        self.constant = constant
        self.template = template
        self.variables = variables
        self.required = required
        self.plan = plan
        # A body's encoded bytes (a constant), or its plan's encoded lines.
        self.body: bytes | BodyPlan | None = None
        if body and constant is not None:
            self.body = qp_body(constant)
        elif body and plan is not None:
            self.body = BodyPlan(plan)

    @property
    def engine(self) -> str:
        """How the template renders: "fast path" (its plan) or "Jinja2"."""
        return "Jinja2" if self.plan is None else "fast path"

    def render(self, context: dict[str, Any]) -> str:
        """Render with ``context``, which must already hold the environment's globals.

        The same as ``template.render(context)`` without its two dict copies per call: the
        message's context (globals + merge fields) is built once and shared by every field.
        Top-level ``{% set %}`` writes go to the template's own context, never to ``context``.
        """
        template = self.template
        if template is None:
            assert self.constant is not None
            return self.constant
        plan = self.plan
        if plan is not None and plan.fits(context):
            try:
                return plan.render(context)
            except Exception as exc:
                raise _FieldFailure(self.name, exc) from exc
        env = template.environment
        assert isinstance(env, _BoundedEnvironment)
        limit = env.limit
        pieces: list[str] = []
        size = 0
        try:
            for piece in template.root_render_func(template.new_context(context, shared=True)):
                size += len(piece)
                if size > limit:
                    raise too_large(limit)
                pieces.append(piece)
        except Exception as exc:
            raise _FieldFailure(self.name, exc) from exc
        return "".join(pieces)

    def encode_body(self, context: dict[str, Any]) -> bytes:
        """Render as a body, quoted-printable encoded (:func:`qp_body`); see ``_compile``."""
        body = self.body
        if isinstance(body, bytes):
            return body
        if body is None or not body.text.fits(context):
            return qp_body(self.render(context))
        try:
            values = body.text.values(context)
        except Exception as exc:
            raise _FieldFailure(self.name, exc) from exc
        return body.encode(values)


def _required(ast: nodes.Template) -> frozenset[str]:
    """The names a template reads that it has no fallback for.

    A name given a default (``{{ x | default('') }}``) or tested (``{% if x is defined %}``)
    anywhere in the template is optional: the template says what happens without it.
    """
    guarded = {
        f.node.name
        for f in ast.find_all(nodes.Filter)
        if f.name in ("default", "d") and isinstance(f.node, nodes.Name)
    } | {
        t.node.name
        for t in ast.find_all(nodes.Test)
        if t.name in ("defined", "undefined") and isinstance(t.node, nodes.Name)
    }
    return frozenset(jinja2.meta.find_undeclared_variables(ast) - guarded)


def _compile(
    env: _BoundedEnvironment,
    name: str,
    source: str,
    where: str,
    *,
    fast_path: bool,
    body: bool = False,
) -> _Field:
    """Compile a header value or (``body``) a body; a plan too, unless ``fast_path`` is off."""
    if not _TEMPLATE_SYNTAX.search(source):
        return _Field(name, source, None, body=body)
    try:
        ast = env.parse(source)
        variables = frozenset(jinja2.meta.find_undeclared_variables(ast))
        plan = compile_template(env, ast, env.limit) if fast_path else None
        template = env.from_string(source)
        return _Field(name, None, template, variables, _required(ast), plan=plan, body=body)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(
            f"{where}: line {exc.lineno}: template error: {exc.message}. Fix the template."
        ) from None


def _b64_lines(data: bytes) -> bytes:
    return b"".join(
        binascii.b2a_base64(data[i : i + 57]).replace(b"\n", b"\r\n")
        for i in range(0, len(data), 57)
    )


def _param(name: str, value: str) -> str:
    """A MIME parameter: quoted ASCII, or RFC 2231 ``name*=utf-8''...`` for anything else."""
    if value.isascii() and not CONTROL.search(value):
        return f'{name}="' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    encoded = "".join(
        chr(b) if (b < 128 and chr(b).isalnum()) or chr(b) in "-._~" else f"%{b:02X}"
        for b in value.encode("utf-8")
    )
    return f"{name}*=utf-8''{encoded}"


_TEXT_PART = (
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n"
)
_HTML_PART = (
    b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n"
)
_TEXT, _HTML = 0, 1


# --------------------------------------------------------------------------------------------
# The campaign


class Campaign:
    """A loaded campaign: config, compiled templates, prepared MIME skeleton and DKIM signers.

    Build it with :meth:`load` (from a file) or :meth:`from_config`; then call :meth:`render`
    for each recipient from :meth:`recipients`.
    """

    def __init__(self, config: CampaignConfig, *, fast_path: bool = True) -> None:
        """Prepare ``config``; ``fast_path=False`` renders every template with Jinja2 (the
        reference the compiled plans are tested against)."""
        self.config = config
        self.signers = tuple(DkimSigner.from_config(d) for d in config.dkim)
        self.warnings: tuple[str, ...] = config.warnings + tuple(
            w for s in self.signers for w in s.warnings
        )
        read = _read_file
        message = config.message
        limit = config.max_message_size
        text_env = _BoundedEnvironment(
            limit, undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True
        )
        html_env = _BoundedEnvironment(
            limit, undefined=jinja2.StrictUndefined, autoescape=True, keep_trailing_newline=True
        )
        where = str(config.source)
        # Both environments have the same (default) globals; see _Field.render.
        self._globals: dict[str, Any] = dict(text_env.globals)

        def header_field(key: str, source: str) -> _Field:
            return _compile(text_env, key, source, f"{where}: {key}", fast_path=fast_path)

        self._subject = header_field("message.subject", message.subject)
        self._from_name = header_field("message.from_name", message.from_name)
        self._to_name = header_field("message.to_name", message.to_name)
        self._extra = tuple(
            (name, header_field(f"message.headers.{name}", value))
            for name, value in message.headers
        )
        self._unsubscribe = (
            None
            if config.unsubscribe is None
            else header_field("unsubscribe.url", config.unsubscribe.url)
        )
        self._unsubscribe_key = signing_key(config.unsubscribe)
        self._text: _Field | None = None
        self._html: _Field | None = None
        if message.text_template is not None:
            path = message.text_template
            source = _read_text(read, path)
            self._text = _compile(
                text_env, str(path), source, str(path), fast_path=fast_path, body=True
            )
        if message.html_template is not None:
            path = message.html_template
            source = _read_text(read, path)
            self._html = _compile(
                html_env, str(path), source, str(path), fast_path=fast_path, body=True
            )

        # Sender side: From domain for Message-ID, VERP template split around {token}.
        self._msgid_domain = message.from_address.rpartition("@")[2]
        before, token, after = config.envelope_sender.partition("{token}")
        self._verp = (before, after) if token else None

        # A campaign whose templates read nothing of the recipient (and no VERP) can send one
        # message to several recipients in one transaction (see render_shared).
        used: set[str] = set().union(*(f.variables for f in self._fields()))
        self.shared = self._verp is None and used <= {"campaign_id", *self._globals}

        # Constant header lines, with their DKIM canonical forms.
        self._from_line = self._constant_mailbox("From", self._from_name, message.from_address)
        self._reply_to_line = (
            None
            if message.reply_to is None
            else _entry("reply-to", encode_mailbox("Reply-To", "", message.reply_to))
        )
        self._subject_line = (
            None
            if self._subject.template is not None
            else _entry("subject", self._constant_unstructured("Subject", self._subject))
        )
        self._mime_version = _entry("mime-version", b"MIME-Version: 1.0\r\n")
        self._unsub_post = (
            None
            if config.unsubscribe is None
            else _entry(
                "list-unsubscribe-post", b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
            )
        )
        self._unsub_mailto = (
            None
            if config.unsubscribe is None or config.unsubscribe.mailto is None
            else f"<mailto:{config.unsubscribe.mailto}>"
        )
        self._feedback = (
            None
            if message.feedback_id is None
            else _entry("feedback-id", encode_unstructured("Feedback-ID", message.feedback_id))
        )
        self._extra_lines = tuple(
            None
            if field.template is not None
            else _entry(name.lower(), self._constant_unstructured(name, field))
            for name, field in self._extra
        )
        self._content_headers, skeleton = self._skeleton(read)
        # The body: constant bytes, and the positions the text and HTML parts fill in.
        self._body_pieces = [p if isinstance(p, bytes) else b"" for p in skeleton]
        parts = {_TEXT: self._text, _HTML: self._html}
        self._body_slots: list[tuple[int, _Field]] = []
        for i, piece in enumerate(skeleton):
            if isinstance(piece, int):
                part = parts[piece]
                assert part is not None
                self._body_slots.append((i, part))
        self._date: tuple[int, tuple[str, bytes, bytes]] = (-1, ("date", b"", b""))

    # -- construction helpers ---------------------------------------------------------------

    def _constant_unstructured(self, name: str, field: _Field) -> bytes:
        assert field.constant is not None
        try:
            return encode_unstructured(name, field.constant)
        except ValueError as exc:
            raise ConfigError(f"{self.config.source}: {field.name}: {exc}.") from None

    def _constant_mailbox(
        self, name: str, display: _Field, address: str
    ) -> tuple[str, bytes, bytes] | None:
        if display.template is not None:
            return None
        assert display.constant is not None
        try:
            return _entry(name.lower(), encode_mailbox(name, display.constant, address))
        except ValueError as exc:
            raise ConfigError(f"{self.config.source}: {display.name}: {exc}.") from None

    def _skeleton(
        self, read: Callable[[Path], bytes]
    ) -> tuple[list[tuple[str, bytes, bytes]], list[bytes | int]]:
        """Lay out the top-level content headers and the body with slots for the parts."""
        digest = hashlib.blake2b(self.config.id.encode(), digest_size=8).hexdigest()
        alt = f"=_bs_{digest}_alt"
        mixed = f"=_bs_{digest}_mix"
        bodies: list[tuple[bytes, int]] = []
        if self._text is not None:
            bodies.append((_TEXT_PART, _TEXT))
        if self._html is not None:
            bodies.append((_HTML_PART, _HTML))

        attachments: list[bytes] = []
        for attachment in self.config.message.attachments:
            data = read(attachment.path)
            disposition = "attachment; " + _param("filename", attachment.filename)
            head = (
                f"Content-Type: {attachment.content_type}; {_param('name', attachment.filename)}"
                f"\r\nContent-Disposition: {disposition}\r\n"
                "Content-Transfer-Encoding: base64\r\n\r\n"
            )
            if max(len(line) for line in head.split("\r\n")) > _MAX_LINE:
                raise ConfigError(
                    f"{self.config.source}: message.attachments: the file name "
                    f"{attachment.filename!r} is too long. Shorten it."
                )
            attachments.append(head.encode("ascii") + _b64_lines(data))

        pieces: list[bytes | int] = []
        if len(bodies) == 1:
            inner_type = bodies[0][0]
            inner: list[bytes | int] = [bodies[0][1]]
        else:
            inner_type = f'Content-Type: multipart/alternative; boundary="{alt}"\r\n'.encode()
            inner = []
            for part_headers, slot in bodies:
                inner += [f"--{alt}\r\n".encode() + part_headers + b"\r\n", slot, b"\r\n"]
            inner.append(f"--{alt}--\r\n".encode())

        if not attachments:
            top = inner_type
            pieces = inner
        else:
            top = f'Content-Type: multipart/mixed; boundary="{mixed}"\r\n'.encode()
            pieces = [f"--{mixed}\r\n".encode() + inner_type + b"\r\n", *inner]
            for part in attachments:
                pieces += [f"\r\n--{mixed}\r\n".encode() + part]
            pieces.append(f"\r\n--{mixed}--\r\n".encode())

        content: list[tuple[str, bytes, bytes]] = []
        for line in top.split(b"\r\n"):
            if line:
                name = line.partition(b":")[0].decode().lower()
                content.append(_entry(name, line + b"\r\n"))
        # Merge adjacent constant byte pieces so render joins as few pieces as possible.
        merged: list[bytes | int] = []
        for piece in pieces:
            if isinstance(piece, bytes) and merged and isinstance(merged[-1], bytes):
                merged[-1] += piece
            else:
                merged.append(piece)
        return content, merged

    # -- public API ---------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path, environ: Mapping[str, str]) -> Campaign:
        """Load a campaign file and prepare it (see :func:`bulksend.config.load_campaign`).

        Raises:
            ConfigError: the campaign file, a template, an attachment or a DKIM key is wrong.
        """
        return cls(load_campaign(path, environ))

    @classmethod
    def from_config(cls, config: CampaignConfig) -> Campaign:
        """Prepare a campaign from an already loaded config."""
        return cls(config)

    def recipients(self, on_reject: Callable[[Reject], None] | None = None) -> RecipientReader:
        """A reader over the campaign's recipients file, with its suppression list applied."""
        config = self.config.recipients
        suppression = None if config.suppression is None else load_suppression(config.suppression)
        return RecipientReader(
            path=config.file,
            format=config.format,
            email_column=config.email_column,
            suppression=suppression,
            on_reject=on_reject,
            allow_test_domain=config.allow_test_domain,
            encoding=config.encoding,
        )

    def check_recipients(self, sample: int = 100) -> None:
        """Check the templates against the recipients file, before anything is sent.

        Every field a template reads without a fallback must be a column of the file (its
        CSV header, or a key of one of the first ``sample`` JSON Lines rows), and no more of
        the first ``sample`` recipients may fail to render than :class:`RenderBreaker`
        allows (a few bad rows are set aside when sending; more mean the templates are wrong).

        Raises:
            ConfigError: a template reads a missing field, or the sample does not render.
        """
        reader = iter(self.recipients())
        try:
            rows = list(itertools.islice(reader, sample))
        finally:
            if isinstance(reader, Generator):
                reader.close()  # the file it reads
        if not rows:
            return  # nothing to check against (and nothing to send)
        columns = {name for row in rows for name in row.fields}
        self._check_fields(columns)
        breaker = RenderBreaker(window=sample)
        now = time.time()
        for row in rows:
            try:
                self.render(row, now=now)
            except RenderError as exc:
                breaker.failed(exc)
            else:
                breaker.passed()
        stop = breaker.verdict()
        if stop is not None:
            raise ConfigError(
                f"{self.config.recipients.file}: {stop}. Fix the template or the recipients file."
            )

    def _check_fields(self, columns: Collection[str]) -> None:
        provided = {"email", "campaign_id", "message_id", *self._globals}
        if self._unsubscribe is not None:
            provided.add("unsubscribe_url")
        if self._unsubscribe_key is not None:
            provided.add("unsubscribe_token")
        for field in self._fields():
            missing = sorted(field.required - provided - set(columns))
            if missing:
                where = field.name
                if where.startswith(("message.", "unsubscribe.")):
                    where = f"{self.config.source}: {where}"
                raise ConfigError(
                    f"{where}: the template reads {missing[0]!r}, which the recipients file "
                    f"{self.config.recipients.file} does not have (columns: "
                    f"{', '.join(sorted(columns))}). Fix the field name, add the column, or "
                    f"give it a default: {{{{ {missing[0]} | default('') }}}}"
                )

    def _fields(self) -> list[_Field]:
        """Every templated part of the message, in message order."""
        fields = (
            self._from_name,
            self._to_name,
            self._subject,
            self._unsubscribe,
            *(f for _name, f in self._extra),
            self._text,
            self._html,
        )
        return [f for f in fields if f is not None]

    def engines(self) -> list[tuple[str, str]]:
        """Each template (its campaign key or file) and how it renders: "fast path" (a
        compiled plan, :mod:`bulksend.campaign.plan`) or "Jinja2" (it uses logic)."""
        return [(f.name, f.engine) for f in self._fields() if f.template is not None]

    def message_id(self, address: str) -> str:
        """The Message-ID of this campaign's message to ``address`` (stable across retries)."""
        key = f"{self.config.id}\0{address}".encode("utf-8", "surrogatepass")
        return f"<{hashlib.blake2b(key, digest_size=16).hexdigest()}@{self._msgid_domain}>"

    def envelope_sender(self, address: str) -> str:
        """The MAIL FROM address for a recipient (VERP applied when configured)."""
        if self._verp is None:
            return self.config.envelope_sender
        if (key := self.config.verp_key) is not None:  # signed (bulksend.campaign.verp)
            return signed_return_path(
                key.reveal().encode(), *self._verp, address, verp_token(address)
            )
        return self._verp[0] + verp_token(address) + self._verp[1]

    def render(self, recipient: Recipient, *, now: float | None = None) -> RenderedMessage:
        """Make the message for one recipient.

        Args:
            recipient: from :meth:`recipients` (or built by hand: it is checked again here).
            now: the Date header's time (Unix seconds); the current time by default.

        Raises:
            RenderError: this recipient's message cannot be made (a missing merge field, a
                control character headed for a header, a template error). Other recipients
                are unaffected.
        """
        try:
            return self._render(recipient, now)
        except RenderError:
            raise
        except Exception as exc:
            raise RenderError(recipient.address, _reason(exc), recipient.line) from None

    def _render(self, recipient: Recipient, now: float | None) -> RenderedMessage:
        address = recipient.address
        if (
            CONTROL.search(address)
            or " " in address
            or "<" in address
            or ">" in address
            or "@" not in address
        ):
            raise RenderError(address, "the address is not a valid mailbox", recipient.line)
        smtputf8 = recipient.needs_smtputf8 or not address.isascii()
        header_address = (recipient.display_address or address) if smtputf8 else address
        message_id = self.message_id(address)
        sender = self.envelope_sender(address)
        if CONTROL.search(sender) or " " in sender or len(sender.encode()) > 254:
            raise RenderError(address, f"envelope sender {sender!r} is not valid", recipient.line)

        context: dict[str, Any] = {**self._globals, **recipient.fields}
        context["email"] = recipient.display_address or address
        context["campaign_id"] = self.config.id
        context["message_id"] = message_id
        if self._unsubscribe_key is not None:
            context["unsubscribe_token"] = unsubscribe_token(
                self._unsubscribe_key, self.config.id, address
            )
        data = self._assemble(context, header_address, message_id, now)
        return RenderedMessage(
            envelope_sender=sender,
            recipient=address,
            data=data,
            needs_8bitmime=not data.isascii(),
            needs_smtputf8=smtputf8,
            message_id=message_id,
        )

    def render_shared(self, addresses: Sequence[str], *, now: float | None = None) -> bytes:
        """One message for several recipients of a :attr:`shared` campaign.

        Its To is ``undisclosed-recipients:;`` (RFC 5322 §3.4 group syntax: no recipient
        sees another) and its Message-ID is derived from the campaign and the recipients.

        Raises:
            RenderError: the campaign is not shared, or its templates fail.
        """
        first = addresses[0] if addresses else ""
        if not self.shared:
            raise RenderError(first, "the campaign's messages are personalised: one per recipient")
        message_id = self.message_id("\n".join(addresses))
        context: dict[str, Any] = {
            **self._globals,
            "campaign_id": self.config.id,
            "message_id": message_id,
        }
        try:
            return self._assemble(context, None, message_id, now)
        except Exception as exc:
            raise RenderError(first, _reason(exc)) from None

    def _assemble(
        self,
        context: dict[str, Any],
        header_address: str | None,
        message_id: str,
        now: float | None,
    ) -> bytes:
        """Headers, body and DKIM signatures: the message's bytes."""
        headers = self._headers(context, header_address, message_id, now)

        pieces = list(self._body_pieces)
        for position, field in self._body_slots:
            pieces[position] = field.encode_body(context)
        body = b"".join(pieces)

        head = b"".join(h[1] for h in headers)
        if self.signers:
            bh = body_hash(body)
            stamp = int(time.time() if now is None else now)
            signatures = b"".join(
                signer.sign(headers, body, timestamp=stamp, bh=bh)
                for signer in reversed(self.signers)
            )
            head = signatures + head
        size = len(head) + 2 + len(body)
        if size > self.config.max_message_size:
            raise ValueError(
                f"the message is {size:,} bytes, over max_message_size "
                f"({self.config.max_message_size:,} bytes)"
            )
        return head + b"\r\n" + body

    def _headers(
        self,
        context: dict[str, object],
        header_address: str | None,
        message_id: str,
        now: float | None,
    ) -> list[tuple[str, bytes, bytes | None]]:
        """Render and encode the header section; sets ``unsubscribe_url`` in the context."""
        headers: list[tuple[str, bytes, bytes | None]] = []
        if self._from_line is not None:
            headers.append(self._from_line)
        else:
            display = self._from_name.render(context)
            from_line = encode_mailbox("From", display, self.config.message.from_address)
            headers.append(("from", from_line, None))
        if self._reply_to_line is not None:
            headers.append(self._reply_to_line)
        if header_address is None:
            headers.append(_UNDISCLOSED)
        else:
            to_display = self._to_name.render(context)
            headers.append(("to", encode_mailbox("To", to_display, header_address), None))
        if self._subject_line is not None:
            headers.append(self._subject_line)
        else:
            subject = self._subject.render(context)
            headers.append(("subject", encode_unstructured("Subject", subject), None))
        headers.append(self._date_line(now))
        headers.append(("message-id", f"Message-ID: {message_id}\r\n".encode(), None))
        headers.append(self._mime_version)
        if self._unsubscribe is not None:
            url = self._unsubscribe.render(context)
            _check_url(url)
            context["unsubscribe_url"] = url
            values = [f"<{url}>"]
            if self._unsub_mailto is not None:
                values = [f"<{url}>,", self._unsub_mailto]
            folded = _fold("List-Unsubscribe", values)
            if folded is None:
                raise ValueError("the unsubscribe URL is longer than a header line may be")
            headers.append(("list-unsubscribe", folded.encode("ascii"), None))
            assert self._unsub_post is not None
            headers.append(self._unsub_post)
        if self._feedback is not None:
            headers.append(self._feedback)
        for (name, field), constant in zip(self._extra, self._extra_lines, strict=True):
            if constant is not None:
                headers.append(constant)
            else:
                value = field.render(context)
                headers.append((name.lower(), encode_unstructured(name, value), None))
        headers.extend(self._content_headers)
        return headers

    def _date_line(self, now: float | None) -> tuple[str, bytes, bytes]:
        second = int(time.time() if now is None else now)
        cached_second, entry = self._date
        if cached_second != second:
            stamp = format_datetime(datetime.fromtimestamp(second, UTC))
            entry = _entry("date", f"Date: {stamp}\r\n".encode("ascii"))
            self._date = (second, entry)
        return entry


def _reason(exc: Exception) -> str:
    """Why a message could not be made, naming the template that failed."""
    where = ""
    if isinstance(exc, _FieldFailure):
        where, exc = f"{exc.field}: ", exc.error
    if isinstance(exc, jinja2.UndefinedError):
        return (
            f"{where}{exc.message}: add the field to the recipients file or give the template "
            "a default (`{{ name | default('') }}`)"
        )
    if isinstance(exc, jinja2.TemplateError | ValueError | UnicodeError):
        return f"{where}{exc}"
    return f"{where}template failed: {type(exc).__name__}: {exc}"  # a template's own error


def _entry(name: str, line: bytes) -> tuple[str, bytes, bytes]:
    """A header as (lower-case name, raw line, relaxed canonical form)."""
    head, _, value = line.partition(b":")
    return (name, line, relaxed_header(head, value[:-2]))


def _check_url(url: str) -> None:
    if CONTROL.search(url):
        raise ValueError("the unsubscribe URL contains a control character")
    if not url.isascii() or _URL_FORBIDDEN.search(url) or not url.lower().startswith("https://"):
        raise ValueError(
            f"the unsubscribe URL {url!r} is not a plain https:// URL (percent-encode merge "
            "values with `| urlencode`)"
        )


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror}). Check the path.") from None


def _read_text(read: Callable[[Path], bytes], path: Path) -> str:
    try:
        return read(path).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the template is not UTF-8. Save it as UTF-8.") from None


_UNDISCLOSED = _entry("to", b"To: undisclosed-recipients:;\r\n")
