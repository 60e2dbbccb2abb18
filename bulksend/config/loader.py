"""The campaign file loader: the TOML walker, its one-line errors, and the schema it builds.

How loading works: the TOML document (stdlib :mod:`tomllib`) is walked table by table through
a small reader (:class:`~bulksend.config.table.Table`) that knows the dotted path of every key
it hands out, so an unknown key, a wrong type or a missing file becomes a
:class:`~bulksend.errors.ConfigError` that names the key (``policy.sites."google.com".rate``),
the campaign file, and what to do about it.
Relative paths are resolved against the campaign file's directory. Secrets (DKIM keys, the
smarthost password) are wrapped in :class:`~bulksend.config.schema.Secret`, whose ``repr``
never shows the value. The ``[policy]`` section has its own module,
:mod:`bulksend.config.policy`.

Every key is documented in ``docs/campaign.md``.
"""

from __future__ import annotations

import re
import ssl
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import email_validator

from bulksend.config.egress import load_egress
from bulksend.config.events import load_events
from bulksend.config.policy import load_policy
from bulksend.config.schedule import load_schedule
from bulksend.config.schema import (
    DEFAULT_MAX_MESSAGE_SIZE,
    AttachmentConfig,
    CampaignConfig,
    DkimAlgorithm,
    DkimConfig,
    MessageConfig,
    RecipientsConfig,
    RouteOverride,
    RoutingSection,
    Secret,
    Smarthost,
    SuppressionConfig,
    SuppressionReason,
    TlsMode,
    TlsTrust,
    UnsubscribeConfig,
    pick,
)
from bulksend.config.table import Table, host_keyed, toml_type
from bulksend.config.values import (
    decoding_problem,
    hostname_syntax,
    parse_duration,
    parse_host_port,
    parse_nameserver,
    parse_port,
    parse_size,
)
from bulksend.errors import ConfigError
from bulksend.store_urls import is_postgres_url, split_store_url
from bulksend.text import CONTROL

__all__ = ["load_campaign"]

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


def _address(table: Table, name: str, text: str, *, template_token: bool = False) -> str:
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


def _header_template(table: Table, name: str, text: str) -> str:
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

    root = Table(document, "", source)
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
    unsubscribe = _load_unsubscribe(root, environ)
    verp_key = _load_bounces(root, environ, sender)
    dkim = _load_dkim(root, environ)
    policy = load_policy(root)
    egress = load_egress(root, policy)
    routing = _load_routing(root, environ)
    tls = _load_tls(root)
    suppression = _load_suppression(root)
    journal_url = _load_journal(root)
    schedule = load_schedule(root)
    events = load_events(
        root,
        lambda t: _load_secret(t, "secret_file", "secret_env", environ, strip=True, required=True)[
            0
        ],
    )
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
        journal_url=journal_url,
        tls=tls,
        suppression=suppression,
        egress=egress,
        schedule=schedule,
        events=events,
        verp_key=verp_key,
        warnings=tuple(root.warnings),
    )


def _load_suppression(root: Table) -> SuppressionConfig:
    t = root.sub("suppression")
    if t is None:
        return SuppressionConfig()
    default = SuppressionConfig()
    enabled = t.raw("store") is not False  # `store = false`: no store at all
    store: Path | str | None = t.string("store") if enabled else None
    if is_postgres_url(store):
        try:
            split_store_url(str(store))
        except ValueError:
            raise t.error(
                "store",
                "the URL holds a password (it would show in logs)",
                "Give it with password_file=PATH, PGPASSFILE or PGPASSWORD.",
            ) from None
    elif store is not None:
        store = t.path_("store", must_exist=False)
    limit = pick(t.integer("soft_bounce_limit", minimum=1), default.soft_bounce_limit)
    window = t.converted("soft_bounce_window", parse_duration, "Write a duration like '7d'.")
    expiry = dict(default.expiry)
    table = t.sub("expiry")
    if table is not None:
        names = ", ".join(reason.value for reason in SuppressionReason)
        for name, value in table.items():
            try:
                reason = SuppressionReason(name)
            except ValueError:
                raise table.error(
                    name, "not a suppression reason", f"Use one of {names}."
                ) from None
            if value == "never":
                expiry.pop(reason, None)
                continue
            try:
                expiry[reason] = parse_duration(value)
            except ValueError as exc:
                raise table.error(
                    name, str(exc), "Write a duration like '30d', or 'never'."
                ) from None
    t.finish()
    return SuppressionConfig(
        store=store,
        enabled=enabled,
        soft_bounce_limit=limit,
        soft_bounce_window=pick(window, default.soft_bounce_window),
        expiry=MappingProxyType(expiry),
    )


def _load_journal(root: Table) -> str | None:
    """``[journal] url``: a PostgreSQL journal's URL, never with a password in it (the
    journal checks the rest when it opens)."""
    t = root.sub("journal")
    if t is None:
        return None
    url = t.string("url")
    t.finish()
    if url is None:
        return None
    try:
        parts, _query, _password_file = split_store_url(url)
    except ValueError:
        raise t.error(
            "url",
            "the URL holds a password (it would show in logs)",
            "Give it with password_file=PATH, PGPASSFILE or PGPASSWORD.",
        ) from None
    if not is_postgres_url(url):
        raise t.error(
            "url",
            f"{parts.scheme or url!r} is not a PostgreSQL journal URL",
            "Write postgresql://USER@HOST:PORT/DB?campaign=NAME (a SQLite journal is the "
            "default: leave [journal] out).",
        )
    return url


def _load_tls(root: Table) -> TlsTrust:
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


def _load_message(root: Table, max_size: int, within: Path | None) -> MessageConfig:
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
                    name, f"expected a string, found {toml_type(value)}", "Quote the value."
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


def _load_attachment(t: Table, index: int, item: object, within: Path | None) -> AttachmentConfig:
    import mimetypes  # noqa: PLC0415 - only needed when a campaign has attachments

    key = f"attachments[{index}]"
    if isinstance(item, str):
        table = t.child({"path": item}, "attachments", index)
    elif isinstance(item, dict):
        table = t.child(item, "attachments", index)
    else:
        raise t.error(key, f"expected a path or a table, found {toml_type(item)}", "Fix it.")
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


def _load_envelope_sender(t: Table) -> str:
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


def _load_recipients(root: Table, campaign_id: str) -> RecipientsConfig:
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


def _load_unsubscribe(root: Table, environ: Mapping[str, str]) -> UnsubscribeConfig | None:
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
    key, _ = _load_secret(t, "key_file", "key_env", environ, strip=True, required=False)
    t.finish()
    return UnsubscribeConfig(url=url, mailto=mailto, key=key)


def _load_bounces(root: Table, environ: Mapping[str, str], sender: str) -> Secret | None:
    t = root.sub("bounces")
    if t is None:
        return None
    key, _ = _load_secret(t, "key_file", "key_env", environ, strip=True, required=False)
    if key is not None and "{token}" not in sender:
        raise t.error(
            "key_file" if t.raw("key_file") is not None else "key_env",
            "a VERP key signs the return path's {token}, and [envelope] sender has none",
            "Write the sender like 'bounces+{token}@example.org'.",
        )
    t.finish()
    return key


def _load_dkim(root: Table, environ: Mapping[str, str]) -> tuple[DkimConfig, ...]:
    value = root.raw("dkim")
    if value is None:
        return ()
    if isinstance(value, dict):
        tables = [root.child(value, "dkim")]
    elif isinstance(value, list) and all(isinstance(v, dict) for v in value):
        tables = [root.child(v, "dkim", i) for i, v in enumerate(value)]
    else:
        raise root.error("dkim", "expected [dkim] or [[dkim]] tables", "Fix the section.")
    return tuple(_load_one_dkim(t, environ) for t in tables)


def _load_one_dkim(t: Table, environ: Mapping[str, str]) -> DkimConfig:
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
    t: Table,
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


def _load_routing(root: Table, environ: Mapping[str, str]) -> RoutingSection:
    t = root.sub("routing")
    if t is None:
        return RoutingSection()
    nameservers = t.string_list("nameservers")
    for server in nameservers:
        try:
            parse_nameserver(server)
        except ValueError as exc:
            raise t.error("nameservers", str(exc), "List resolver IP addresses.") from None
    allow_private = t.boolean("allow_private_addresses", default=False)
    dnssec = t.boolean("dnssec", default=False)
    mta_sts = t.boolean("mta_sts", default=True)
    overrides: dict[str, RouteOverride] = {}
    section = t.sub("overrides")
    if section is not None:
        for written, key, value in host_keyed(section, "domain"):
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
        port = pick(smart.converted("port", parse_port, "Use 1-65535."), port)
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
        dnssec=dnssec,
        mta_sts=mta_sts,
    )
