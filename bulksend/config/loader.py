"""The campaign file loader: the TOML walker, its one-line errors, and the schema it builds.

How loading works: the TOML document (stdlib :mod:`tomllib`) is walked table by table through
a small reader (``_Table``) that knows the dotted path of every key it hands out, so an unknown
key, a wrong type or a missing file becomes a :class:`~bulksend.errors.ConfigError` that names
the key (``policy.sites."google.com".rate``), the campaign file, and what to do about it.
Relative paths are resolved against the campaign file's directory. Secrets (DKIM keys, the
smarthost password) are wrapped in :class:`~bulksend.config.schema.Secret`, whose ``repr``
never shows the value.

Every key is documented in ``docs/campaign.md``.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import ssl
import stat
import tomllib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import email_validator

from bulksend.config.schema import (
    DEFAULT_MAX_MESSAGE_SIZE,
    AttachmentConfig,
    BackoffRule,
    CampaignConfig,
    DkimAlgorithm,
    DkimConfig,
    LimitsOverride,
    MessageConfig,
    RecipientsConfig,
    RetryPolicy,
    RouteOverride,
    RoutingSection,
    Secret,
    SendingPolicy,
    SiteLimits,
    Smarthost,
    Timeouts,
    TlsMode,
    TlsTrust,
    UnsubscribeConfig,
    pick,
)
from bulksend.config.values import (
    CONTROL,
    decoding_problem,
    hostname_syntax,
    parse_domain,
    parse_duration,
    parse_host_port,
    parse_rate,
    parse_size,
)
from bulksend.errors import ConfigError

__all__ = ["load_campaign"]

_T = TypeVar("_T")

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_CAMPAIGN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_FIELD_NAME = re.compile(r"^[!-9;-~]{1,76}$")  # RFC 5322 §3.6.8 ftext
_RESERVED_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "sender",
        "reply-to",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "feedback-id",
        "dkim-signature",
        "return-path",
        "received",
    }
)


def _key_part(name: str) -> str:
    return name if _BARE_KEY.match(name) else '"' + name.replace('"', '\\"') + '"'


class _Table:
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

    def _get(self, name: str, required: bool) -> Any:
        self.used.add(name)
        if name not in self.data:
            if required:
                raise self.error(name, "missing", f"Add `{name} = ...` to [{self.path or '.'}].")
            return None
        return self.data[name]

    def typed(self, name: str, kind: type[_T], what: str, *, required: bool = False) -> _T | None:
        value = self._get(name, required)
        if value is None:
            return None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(
                name, f"expected {what}, found {_toml_type(value)} {value!r}", f"Write {what}."
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
        value = self._get(name, False)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(
                name, f"expected a number, found {_toml_type(value)} {value!r}", "Write a number."
            )
        return float(value)

    def converted(self, name: str, convert: Callable[[Any], _T], hint: str) -> _T | None:
        value = self._get(name, False)
        if value is None:
            return None
        try:
            return convert(value)
        except (ValueError, TypeError) as exc:
            raise self.error(name, str(exc), hint) from None

    def sub(self, name: str, *, required: bool = False) -> _Table | None:
        value = self.typed(name, dict, "a table", required=required)
        if value is None:
            return None
        return _Table(value, self.key(name), self.source, self.warnings)

    def string_list(self, name: str) -> list[str]:
        value = self.typed(name, list, "a list of strings")
        if value is None:
            return []
        for item in value:
            if not isinstance(item, str):
                raise self.error(
                    name, f"expected strings, found {_toml_type(item)} {item!r}", "Quote each."
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


def _toml_type(value: object) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def _resolve(table: _Table, name: str, text: str, *, must_exist: bool) -> Path:
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


def _address(table: _Table, name: str, text: str, *, template_token: bool = False) -> str:
    """Validate a configured address; return it with the domain in A-labels, lower case."""
    probe = text.replace("{token}", "token") if template_token else text
    if CONTROL.search(text):
        raise table.error(name, "contains a control character", "Remove it.")
    try:
        checked = email_validator.validate_email(
            probe, check_deliverability=False, test_environment=True
        )
    except email_validator.EmailNotValidError as exc:
        raise table.error(name, f"{text!r} is not a valid address ({exc})", "Fix it.") from None
    if not checked.local_part.isascii():
        raise table.error(
            name,
            f"{text!r} has a non-ASCII local part",
            "Use an ASCII address so every server can take the message.",
        )
    local = text.rsplit("@", 1)[0]
    return f"{local}@{checked.ascii_domain}"


def _header_template(table: _Table, name: str, text: str) -> str:
    if CONTROL.search(text):
        raise table.error(
            name,
            "contains a line break or control character",
            "Header values are one line; write it on one line.",
        )
    return text


def load_campaign(path: str | Path, environ: Mapping[str, str]) -> CampaignConfig:
    """Load and check a campaign file.

    Args:
        path: the campaign TOML file; relative paths inside it are read from its directory.
        environ: the environment, for ``dkim.key_env`` and ``routing.smarthost.password_env``
            (the CLI passes ``os.environ``; nothing below it reads the environment).

    Raises:
        ConfigError: the file cannot be read or parsed, or a key is unknown, of the wrong type,
            out of range, or names a missing file. The message names the key and the file.
    """
    source = Path(path).expanduser().absolute()
    try:
        raw = source.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{source}: cannot read the campaign file ({exc.strerror}). Check the path."
        ) from None
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not UTF-8 text. Save the file as UTF-8.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: invalid TOML: {exc}. Fix the syntax there.") from None

    root = _Table(document, "", source)
    campaign = root.sub("campaign", required=True)
    assert campaign is not None
    campaign_id = campaign.req_string("id")
    if not _CAMPAIGN_ID.match(campaign_id):
        raise campaign.error(
            "id",
            f"{campaign_id!r} is not a valid campaign id",
            "Use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.",
        )
    ehlo_hostname = campaign.string("ehlo_hostname")
    if ehlo_hostname is not None and not hostname_syntax(ehlo_hostname):
        raise campaign.error(
            "ehlo_hostname",
            f"{ehlo_hostname!r} is not a host name",
            "Use this host's public name (e.g. 'mta1.example.org') or an address literal.",
        )
    max_size = pick(
        campaign.converted("max_message_size", parse_size, "Write bytes or a size like '25MB'."),
        DEFAULT_MAX_MESSAGE_SIZE,
    )
    allow_outside = campaign.boolean("allow_outside_paths", default=False)
    campaign.finish()

    message = _load_message(root, max_size, None if allow_outside else source.parent)
    envelope = root.sub("envelope", required=True)
    assert envelope is not None
    sender = _load_envelope_sender(envelope)
    envelope.finish()
    recipients = _load_recipients(root, campaign_id)
    unsubscribe = _load_unsubscribe(root)
    dkim = _load_dkim(root, environ)
    policy = _load_policy(root)
    routing = _load_routing(root, environ)
    tls = _load_tls(root)
    root.finish()
    return CampaignConfig(
        source=source,
        id=campaign_id,
        message=message,
        envelope_sender=sender,
        recipients=recipients,
        unsubscribe=unsubscribe,
        dkim=dkim,
        policy=policy,
        routing=routing,
        ehlo_hostname=ehlo_hostname,
        max_message_size=max_size,
        allow_outside_paths=allow_outside,
        tls=tls,
        warnings=tuple(root.warnings),
    )


def _load_tls(root: _Table) -> TlsTrust:
    t = root.sub("tls")
    if t is None:
        return TlsTrust()
    ca_file = t.path_("ca_file")
    t.finish()
    if ca_file is None:
        return TlsTrust()
    try:
        pem = ca_file.read_text("ascii")
        ssl.create_default_context(cadata=pem)  # parses every certificate in it
    except (OSError, UnicodeDecodeError, ssl.SSLError, ValueError) as exc:
        raise t.error(
            "ca_file",
            f"cannot load CA certificates from {str(ca_file)!r} ({exc})",
            "Give a file of PEM certificates ('-----BEGIN CERTIFICATE-----').",
        ) from None
    return TlsTrust(ca_file=ca_file, ca_certs=pem)


def _load_message(root: _Table, max_size: int, within: Path | None) -> MessageConfig:
    t = root.sub("message", required=True)
    assert t is not None
    from_address = _address(t, "from", t.req_string("from"))
    reply_to_text = t.string("reply_to")
    reply_to = None if reply_to_text is None else _address(t, "reply_to", reply_to_text)
    subject = _header_template(t, "subject", t.req_string("subject"))
    from_name = _header_template(t, "from_name", t.string("from_name") or "")
    to_name = _header_template(t, "to_name", t.string("to_name") or "")
    text_template = t.path_("text", within=within)
    html_template = t.path_("html", within=within)
    if text_template is None and html_template is None:
        raise t.error(
            "text", "no body template", 'Set `text = "body.txt"`, `html = "body.html"` or both.'
        )
    feedback_id = t.string("feedback_id")
    if feedback_id is not None and (not feedback_id.isascii() or CONTROL.search(feedback_id)):
        raise t.error("feedback_id", "must be printable ASCII on one line", "Fix the value.")

    attachments: list[AttachmentConfig] = []
    raw_attachments = t.typed("attachments", list, "an array of paths or tables") or []
    encoded = 0
    for index, item in enumerate(raw_attachments):
        attachment = _load_attachment(t, index, item, within)
        attachments.append(attachment)
        # Base64 in 76-column lines: 78 bytes for every 57 of the file.
        encoded += -(-attachment.path.stat().st_size // 57) * 78
        if encoded > max_size:
            raise ConfigError(
                f"{t.source}: {t.key('attachments')}[{index}]: {attachment.path.name!r} makes "
                f"every message over {max_size:,} bytes ({encoded:,} bytes of attachments once "
                "base64-encoded). Link to the file instead, or raise `max_message_size` in "
                "[campaign]."
            )

    headers: list[tuple[str, str]] = []
    extra = t.sub("headers")
    if extra is not None:
        for name, value in extra.items():
            if not _FIELD_NAME.match(name):
                raise extra.error(
                    name, "not a valid header name", "Use printable ASCII without ':' or spaces."
                )
            if name.lower() in _RESERVED_HEADERS:
                raise extra.error(
                    name,
                    "bulksend writes this header itself",
                    "Remove it; set it through its own key in [message] if there is one.",
                )
            if not isinstance(value, str):
                raise extra.error(
                    name, f"expected a string, found {_toml_type(value)}", "Quote the value."
                )
            headers.append((name, _header_template(extra, name, value)))
    t.finish()
    return MessageConfig(
        from_address=from_address,
        subject=subject,
        from_name=from_name,
        reply_to=reply_to,
        to_name=to_name,
        text_template=text_template,
        html_template=html_template,
        attachments=tuple(attachments),
        feedback_id=feedback_id,
        headers=tuple(headers),
    )


def _load_attachment(t: _Table, index: int, item: object, within: Path | None) -> AttachmentConfig:
    import mimetypes  # noqa: PLC0415 - only needed when a campaign has attachments

    key = f"attachments[{index}]"
    if isinstance(item, str):
        table = _Table({"path": item}, t.key("attachments") + f"[{index}]", t.source)
    elif isinstance(item, dict):
        table = _Table(item, t.key("attachments") + f"[{index}]", t.source)
    else:
        raise t.error(key, f"expected a path or a table, found {_toml_type(item)}", "Fix it.")
    path = table.path_("path", required=True, within=within)
    assert path is not None
    guessed, _ = mimetypes.guess_type(path.name)
    content_type = table.string("content_type") or guessed or "application/octet-stream"
    if not re.match(r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+$", content_type):
        raise table.error("content_type", f"{content_type!r} is not a MIME type", "Fix it.")
    filename = table.string("filename") or path.name
    if CONTROL.search(filename):
        raise table.error("filename", "contains a control character", "Rename it.")
    table.finish()
    return AttachmentConfig(path=path, content_type=content_type.lower(), filename=filename)


def _load_envelope_sender(t: _Table) -> str:
    sender = t.req_string("sender")
    local, _, _domain = sender.rpartition("@")
    if sender.count("{token}") > 1 or ("{token}" not in local and "{token}" in sender):
        raise t.error(
            "sender",
            "{token} may appear once, in the local part",
            "Write it like 'bounces+{token}@example.org'.",
        )
    stripped = sender.replace("{token}", "")
    if "{" in stripped or "}" in stripped:
        raise t.error("sender", "only {token} may be substituted", "Remove the other braces.")
    return _address(t, "sender", sender, template_token=True)


def _load_recipients(root: _Table, campaign_id: str) -> RecipientsConfig:
    t = root.sub("recipients", required=True)
    assert t is not None
    file = t.path_("file", required=True)
    assert file is not None
    fmt = t.string("format")
    if fmt is None:
        suffix = file.suffix.lower()
        fmt = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(suffix)
        if fmt is None:
            raise t.error(
                "format",
                f"cannot tell the format of {file.name!r} from its extension",
                'Set `format = "csv"` or `format = "jsonl"`.',
            )
    elif fmt not in ("csv", "jsonl"):
        raise t.error("format", f"{fmt!r} is not a known format", 'Use "csv" or "jsonl".')
    rejects = t.path_("rejects", must_exist=False) or file.parent / f"{campaign_id}.rejects.csv"
    email_column = t.string("email_column") or "email"
    suppression = t.path_("suppression")
    allow_test = t.boolean("allow_test_domain", default=False)
    encoding = t.string("encoding") or "utf-8"
    try:
        b"a".decode(encoding, "ignore")  # a text encoding, not a codec such as "base64"
    except LookupError:
        raise t.error(
            "encoding", f"{encoding!r} is not a known encoding", 'Use e.g. "utf-8" or "latin-1".'
        ) from None
    problem = decoding_problem(file, encoding)
    if problem is not None:
        raise ConfigError(problem)
    t.finish()
    return RecipientsConfig(
        file=file,
        format=fmt,
        rejects=rejects,
        email_column=email_column,
        suppression=suppression,
        allow_test_domain=allow_test,
        encoding=encoding,
    )


def _load_unsubscribe(root: _Table) -> UnsubscribeConfig | None:
    t = root.sub("unsubscribe")
    if t is None:
        return None
    url = _header_template(t, "url", t.req_string("url"))
    if not url.lower().startswith("https://"):
        raise t.error(
            "url", "must be an https:// URL", "RFC 8058 one-click unsubscribe needs HTTPS."
        )
    mailto_text = t.string("mailto")
    mailto = None if mailto_text is None else _address(t, "mailto", mailto_text)
    t.finish()
    return UnsubscribeConfig(url=url, mailto=mailto)


def _load_dkim(root: _Table, environ: Mapping[str, str]) -> tuple[DkimConfig, ...]:
    value = root._get("dkim", False)
    if value is None:
        return ()
    if isinstance(value, dict):
        tables = [_Table(value, "dkim", root.source, root.warnings)]
    elif isinstance(value, list) and all(isinstance(v, dict) for v in value):
        tables = [_Table(v, f"dkim[{i}]", root.source, root.warnings) for i, v in enumerate(value)]
    else:
        raise root.error("dkim", "expected [dkim] or [[dkim]] tables", "Fix the section.")
    return tuple(_load_one_dkim(t, environ) for t in tables)


def _load_one_dkim(t: _Table, environ: Mapping[str, str]) -> DkimConfig:
    domain = t.req_string("domain")
    selector = t.req_string("selector")
    for name, label in (("domain", domain), ("selector", selector)):
        if not re.match(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$", label):
            raise t.error(name, f"{label!r} is not a DNS name", "Use letters, digits, '.', '-'.")
    algorithm_text = t.string("algorithm") or "rsa-sha256"
    try:
        algorithm = DkimAlgorithm(algorithm_text)
    except ValueError:
        raise t.error(
            "algorithm",
            f"{algorithm_text!r} is not supported",
            'Use "rsa-sha256" or "ed25519-sha256".',
        ) from None
    secret, origin = _load_secret(t, "key_file", "key_env", environ, strip=False, required=True)
    assert secret is not None
    t.finish()
    return DkimConfig(
        domain=domain.lower(),
        selector=selector,
        algorithm=algorithm,
        private_key=secret,
        key_origin=origin,
    )


def _load_secret(
    t: _Table,
    file_key: str,
    env_key: str,
    environ: Mapping[str, str],
    *,
    strip: bool,
    required: bool,
) -> tuple[Secret | None, str]:
    file_path = t.path_(file_key)
    env_name = t.string(env_key)
    if file_path is not None and env_name is not None:
        raise t.error(env_key, f"both {file_key} and {env_key} are set", "Keep one of them.")
    if file_path is not None:
        try:
            text = file_path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise t.error(file_key, f"cannot read {str(file_path)!r} ({exc})", "Fix it.") from None
        origin = f"{t.key(file_key)} = {str(file_path)!r} in {t.source}"
        mode = file_path.stat().st_mode
        if mode & 0o077:
            # ssh refuses such a key; we warn instead (secrets mounted by Docker or Kubernetes
            # are often 0644), but say so on every load.
            t.warnings.append(
                f"{t.source}: {t.key(file_key)}: {str(file_path)!r} is readable by others "
                f"(mode {stat.S_IMODE(mode):04o}); run `chmod 600 {file_path}`."
            )
    elif env_name is not None:
        if env_name not in environ:
            raise t.error(
                env_key,
                f"environment variable {env_name!r} is not set",
                f"Export {env_name} before running, or use {file_key}.",
            )
        text = environ[env_name]
        origin = f"{t.key(env_key)} = {env_name!r} in {t.source}"
    else:
        if required:
            raise t.error(
                file_key,
                f"neither {file_key} nor {env_key} is set",
                f"Set {file_key} to a file path or {env_key} to an environment variable name.",
            )
        return None, ""
    if strip:
        text = text.strip("\r\n")
    if not text.strip():
        key = file_key if file_path is not None else env_key
        raise t.error(key, "the secret is empty", "Put the value there.")
    return Secret(text), origin


def _load_override(t: _Table) -> LimitsOverride:
    override = LimitsOverride(
        max_connections=t.integer("max_connections", minimum=1),
        rate=t.converted("rate", parse_rate, "Write a rate like '50/s' or '3000/h'."),
        connection_rate=t.converted(
            "connection_rate", parse_rate, "Write a rate like '5/s' or '100/m'."
        ),
        messages_per_connection=t.integer("messages_per_connection", minimum=1),
        recipients_per_transaction=t.integer("recipients_per_transaction", minimum=1),
        idle_timeout=t.converted("idle_timeout", parse_duration, "Write a duration like '30s'."),
        tls=t.converted("tls", TlsMode, 'Use "none", "opportunistic" or "required".'),
    )
    t.finish()
    return override


def _host_keyed(table: _Table, what: str) -> Iterator[tuple[str, str, Any]]:
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


def _load_policy(root: _Table) -> SendingPolicy:
    t = root.sub("policy")
    if t is None:
        return SendingPolicy()
    defaults_table = t.sub("defaults")
    defaults = SiteLimits()
    if defaults_table is not None:
        defaults = _load_override(defaults_table).apply(defaults)

    def keyed(name: str, what: str) -> Mapping[str, LimitsOverride]:
        section = t.sub(name)
        result: dict[str, LimitsOverride] = {}
        if section is not None:
            for written, key, value in _host_keyed(section, what):
                if not isinstance(value, dict):
                    raise section.error(
                        written, "expected a table", f"Write [policy.{name}.{written}]."
                    )
                result[key] = _load_override(_Table(value, section.key(written), t.source))
        return MappingProxyType(result)

    domains = keyed("domains", "domain")
    sites = keyed("sites", "domain or host suffix")
    max_total = t.integer("max_total_connections", minimum=1)
    total_rate = t.converted("total_rate", parse_rate, "Write a rate like '500/s'.")

    timeouts = Timeouts()
    timeouts_table = t.sub("timeouts")
    if timeouts_table is not None:
        values = {}
        for name in Timeouts.__dataclass_fields__:
            seconds = timeouts_table.converted(name, parse_duration, "Write seconds or '5m'.")
            if seconds is not None:
                if seconds <= 0:
                    raise timeouts_table.error(name, "must be positive", "Use a value > 0.")
                values[name] = seconds
        timeouts_table.finish()
        timeouts = Timeouts(**values)

    retry = RetryPolicy()
    retry_table = t.sub("retry")
    if retry_table is not None:
        hint = "Write seconds or a duration like '5m'."
        initial = retry_table.converted("initial", parse_duration, hint)
        maximum = retry_table.converted("maximum", parse_duration, hint)
        max_age = retry_table.converted("max_age", parse_duration, hint)
        factor = retry_table.number("factor")
        jitter = retry_table.number("jitter")
        if factor is not None and factor < 1:
            raise retry_table.error("factor", f"{factor} is below 1", "Use a factor >= 1.")
        if jitter is not None and not 0 <= jitter < 1:
            raise retry_table.error("jitter", f"{jitter} is out of range", "Use 0 <= jitter < 1.")
        retry_table.finish()
        retry = RetryPolicy(
            initial=pick(initial, retry.initial),
            factor=pick(factor, retry.factor),
            maximum=pick(maximum, retry.maximum),
            jitter=pick(jitter, retry.jitter),
            max_age=pick(max_age, retry.max_age),
        )

    rules: list[BackoffRule] = []
    raw_rules = t.typed("backoff", list, "an array of [[policy.backoff]] tables") or []
    for index, item in enumerate(raw_rules):
        if not isinstance(item, dict):
            raise t.error(f"backoff[{index}]", "expected a table", "Write [[policy.backoff]].")
        rules.append(_load_backoff(_Table(item, f"{t.key('backoff')}[{index}]", t.source)))
    t.finish()
    return SendingPolicy(
        defaults=defaults,
        domains=domains,
        sites=sites,
        max_total_connections=pick(max_total, 500),
        total_rate=total_rate,
        timeouts=timeouts,
        retry=retry,
        backoff=tuple(rules),
    )


def _load_backoff(t: _Table) -> BackoffRule:
    code_value = t._get("code", False)
    code: str | None = None
    if code_value is not None:
        code = str(code_value).lower() if not isinstance(code_value, bool) else ""
        if not re.match(r"^[245][0-9x][0-9x]$", code):
            raise t.error("code", f"{code_value!r} is not a reply code", "Use 421, '4xx' or '45x'.")
    enhanced = t.string("enhanced_code")
    if enhanced is not None and not re.match(r"^[245](\.\d{1,3}){0,2}$", enhanced):
        raise t.error("enhanced_code", f"{enhanced!r} is not an enhanced code", "Use '4.7.28'.")
    text = t.string("text")
    pattern = None
    if text is not None:
        try:
            pattern = re.compile(text)
        except re.error as exc:
            raise t.error("text", f"invalid regular expression ({exc})", "Fix it.") from None
    reduce_to = t.integer("reduce_connections", minimum=1)
    factor = t.number("rate_factor")
    if factor is not None and not 0 < factor <= 1:
        raise t.error("rate_factor", f"{factor} is out of range", "Use 0 < rate_factor <= 1.")
    suspend = t.converted("suspend", parse_duration, "Write a duration like '10m'.")
    duration = t.converted("duration", parse_duration, "Write a duration like '10m'.")
    if code is None and enhanced is None and pattern is None:
        raise t.error("code", "the rule matches nothing", "Set code, enhanced_code or text.")
    if reduce_to is None and factor is None and suspend is None:
        raise t.error(
            "suspend", "the rule does nothing", "Set reduce_connections, rate_factor or suspend."
        )
    t.finish()
    return BackoffRule(
        code=code,
        enhanced_code=enhanced,
        text=pattern,
        reduce_connections=reduce_to,
        rate_factor=factor,
        suspend=suspend,
        duration=pick(duration, 600.0),
    )


def _load_routing(root: _Table, environ: Mapping[str, str]) -> RoutingSection:
    t = root.sub("routing")
    if t is None:
        return RoutingSection()
    nameservers = t.string_list("nameservers")
    for server in nameservers:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise t.error(
                "nameservers", f"{server!r} is not an IP address", "List resolver IP addresses."
            ) from None
    allow_private = t.boolean("allow_private_addresses", default=False)
    overrides: dict[str, RouteOverride] = {}
    section = t.sub("overrides")
    if section is not None:
        for written, key, value in _host_keyed(section, "domain"):
            if not isinstance(value, str):
                raise section.error(
                    written, "expected 'host[:port]'", "Quote it: 'mx.example:2525'."
                )
            try:
                host, port = parse_host_port(value, 25)
            except ValueError as exc:
                raise section.error(
                    written, str(exc), "Write 'host', 'host:port' or '[ip]:port'."
                ) from None
            overrides[key] = RouteOverride(host=host, port=port)
    smarthost = None
    smart = t.sub("smarthost")
    if smart is not None:
        host_text = smart.req_string("host")
        try:
            host, port = parse_host_port(host_text, 587)
        except ValueError as exc:
            raise smart.error("host", str(exc), "Write 'host' or 'host:port'.") from None
        port_value = smart.integer("port", minimum=1)
        if port_value is not None:
            if port_value > 65535:
                raise smart.error("port", f"{port_value} is out of range", "Use 1-65535.")
            port = port_value
        username = smart.string("username")
        password, _ = _load_secret(
            smart, "password_file", "password_env", environ, strip=True, required=False
        )
        if password is not None and username is None:
            raise smart.error("username", "a password is set but no username", "Set username.")
        tls = smart.converted("tls", TlsMode, 'Use "none", "opportunistic" or "required".')
        smart.finish()
        smarthost = Smarthost(
            host=host,
            port=port,
            username=username,
            password=password,
            tls=pick(tls, TlsMode.REQUIRED),
        )
    t.finish()
    return RoutingSection(
        nameservers=tuple(nameservers),
        allow_private_addresses=allow_private,
        overrides=MappingProxyType(overrides),
        smarthost=smarthost,
    )
