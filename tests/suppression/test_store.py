"""The suppression store: keys normalised as the recipients reader does, merging, expiry,
domains, soft-bounce counting, and the ``[suppression]`` keys."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from bulksend.campaign import Campaign
from bulksend.config import SuppressionConfig, SuppressionReason
from bulksend.errors import ConfigError, SuppressionError
from bulksend.journal import Category, Outcome
from bulksend.suppression.backend import AnyStore, open_suppression_store
from bulksend.suppression.rules import BounceRecorder, Rules, bounce_reason
from bulksend.suppression.store import (
    Entry,
    Source,
    StoreSuppression,
    SuppressionStore,
    normalise_key,
)
from bulksend.testing.scenario import campaign_toml, write_campaign

DAY = 86400.0
HARD = SuppressionReason.HARD_BOUNCE
SOFT = SuppressionReason.SOFT_BOUNCE


@pytest.fixture
def store(store_spec: Path | str) -> Iterator[AnyStore]:
    with open_suppression_store(store_spec) as opened:
        yield opened


def test_store_file_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    SuppressionStore.open(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_not_a_store_is_a_suppression_error(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    path.write_bytes(b"not a database, just some bytes" * 100)
    with pytest.raises(SuppressionError, match="not a usable suppression store"):
        SuppressionStore.open(path)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("John.Doe@Example.COM", "john.doe@example.com"),
        ("  user@bücher.example ", "user@xn--bcher-kva.example"),
        ("Example.COM", "example.com"),
        ("@example.com", "example.com"),
        ("Example.com.", "example.com"),
    ],
)
def test_keys_are_normalised_as_the_reader_does(text: str, key: str) -> None:
    assert normalise_key(text) == key


@pytest.mark.parametrize(
    "text", ["", "   ", "@", "user@", "@user@", "a b@example.com", "a\x00@x.test", "\udcff@x.test"]
)
def test_malformed_keys_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="neither an address nor a domain"):
        normalise_key(text)


def test_events_merge_into_one_row(store: AnyStore) -> None:
    store.add("a@x.test", SOFT, Source.CAMPAIGN, now=100.0, expires_at=100.0 + 30 * DAY)
    merged = store.add("a@x.test", SuppressionReason.COMPLAINT, Source.ARF, now=200.0)
    assert merged == Entry("a@x.test", SuppressionReason.COMPLAINT, Source.ARF, 100.0, 200.0, 2)
    # A soft bounce after a complaint leaves the complaint (it never expires).
    again = store.add("a@x.test", SOFT, Source.DSN, now=300.0, expires_at=300.0 + DAY)
    assert (again.reason, again.source, again.expires_at, again.count) == (
        SuppressionReason.COMPLAINT,
        Source.ARF,
        None,
        3,
    )
    assert store.get("a@x.test") == again


def test_detail_is_kept_whatever_its_text(store: AnyStore) -> None:
    entry = store.add("a@x.test", HARD, Source.DSN, now=1.0, detail="550 \udcff " + "x" * 600)
    assert entry.detail.startswith("550 ? xxx")
    assert len(entry.detail) == 500
    assert store.get("a@x.test") == entry


def test_a_nul_in_remote_text_is_stored_as_a_mark(store: AnyStore) -> None:
    entry = store.add("a@x.test", HARD, Source.DSN, now=1.0, detail="550 gone\x00\x00 away")
    assert entry.detail == "550 gone?? away"
    assert store.get("a@x.test") == entry


def test_check_honours_expiry_and_domains(store: AnyStore) -> None:
    store.add("a@x.test", SOFT, Source.CAMPAIGN, now=0.0, expires_at=10.0)
    store.add("y.test", SuppressionReason.MANUAL, Source.CLI, now=0.0)
    entry = store.check("A@X.test", now=5.0)
    assert entry is not None
    assert entry.reason is SOFT
    assert store.check("a@x.test", now=10.0) is None  # expired
    domain = store.check("Anyone@Y.TEST", now=1e12)
    assert domain is not None
    assert domain.is_domain
    assert [e.key for e in store.entries()] == ["a@x.test", "y.test"]
    assert [e.key for e in store.entries(now=10.0)] == ["y.test"]
    assert store.remove("y.test")
    assert not store.remove("y.test")
    assert store.check("anyone@y.test") is None


def test_view_sees_other_connections_writes(store: AnyStore) -> None:
    view = StoreSuppression(store)
    view.reload()
    assert "a@x.test" not in view
    # This connection's own write (a run's inline bounce) is no reason to reload.
    store.add("own@x.test", HARD, Source.CAMPAIGN, now=1.0)
    assert not view.changed()
    with open_suppression_store(store.path) as other:
        other.add("A@X.test".lower(), SuppressionReason.UNSUBSCRIBE, Source.HTTP, now=1.0)
        other.add("blocked.test", SuppressionReason.MANUAL, Source.CLI, now=1.0)
    assert view.changed()
    view.reload()
    assert not view.changed()
    assert "A@x.TEST" in view
    assert "someone@Blocked.test" in view
    assert view.reason("a@x.test") == "suppressed (address): unsubscribe via http"
    assert view.reason("b@blocked.test") == "suppressed (domain blocked.test): manual via cli"
    assert view.reason("nobody@x.test") is None


@pytest.mark.parametrize(
    ("category", "reason"),
    [
        (Category.BAD_MAILBOX, HARD),
        (Category.DNS, HARD),
        (Category.MAILBOX_FULL, SOFT),
        (Category.OTHER, SOFT),
        (Category.POLICY, None),
        (Category.TLS, None),
        (Category.MESSAGE_TOO_BIG, None),
    ],
)
def test_bounce_reason(category: Category, reason: SuppressionReason | None) -> None:
    assert bounce_reason(category) is reason


def test_soft_bounces_suppress_once_repeated_within_the_window(
    store: AnyStore, tmp_path: Path
) -> None:
    campaign = write_campaign(
        tmp_path,
        ["a@x.test"],
        toml=campaign_toml(
            extra='[suppression]\nsoft_bounce_limit = 2\nsoft_bounce_window = "1d"\n'
        ),
    )
    rules = Rules(Campaign.load(campaign, {}).config.suppression)
    key = "a@x.test"
    assert rules.apply(store, key, SOFT, Source.DSN, now=0.0) is None
    # The second falls outside the window: the first is forgotten.
    assert rules.apply(store, key, SOFT, Source.DSN, now=2 * DAY) is None
    entry = rules.apply(store, key, SOFT, Source.DSN, now=2.5 * DAY)
    assert entry is not None
    assert entry.reason is SOFT
    assert entry.expires_at == 2.5 * DAY + 30 * DAY
    hard = rules.apply(store, "b@x.test", HARD, Source.CAMPAIGN, now=0.0)
    assert hard is not None
    assert hard.expires_at is None


def test_recorder_notes_only_bounces_the_rules_count(store: AnyStore) -> None:
    recorder = BounceRecorder(store, Rules(SuppressionConfig()))
    recorder.note(
        "Gone@X.test", Outcome.bounced(550, "5.1.1", "no such user", Category.BAD_MAILBOX)
    )
    recorder.note("full@x.test", Outcome.deferred(452, "4.2.2", "full", Category.MAILBOX_FULL))
    recorder.note("spam@x.test", Outcome.bounced(554, "5.7.1", "spam", Category.POLICY))
    made = recorder.write(recorder.take(), now=5.0)
    assert [(e.key, e.reason, e.source, e.detail) for e in made] == [
        ("gone@x.test", HARD, Source.CAMPAIGN, "550 5.1.1 no such user")
    ]
    assert recorder.take() == []


def test_suppression_keys_load(tmp_path: Path) -> None:
    extra = (
        '[suppression]\nstore = "s.sqlite3"\nsoft_bounce_limit = 5\n'
        '[suppression.expiry]\nsoft_bounce = "never"\nhard_bounce = "90d"\n'
    )
    config = Campaign.load(write_campaign(tmp_path, [], toml=campaign_toml(extra=extra)), {})
    section = config.config.suppression
    assert section.store == tmp_path / "s.sqlite3"
    assert section.soft_bounce_limit == 5
    assert section.soft_bounce_window == 7 * DAY
    assert dict(section.expiry) == {HARD: 90 * DAY}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[suppression.expiry]\nbounce = '1d'\n", r"suppression\.expiry\.bounce: not a suppr"),
        ("[suppression.expiry]\nmanual = 'soon'\n", r"suppression\.expiry\.manual: 'soon'"),
        ("[suppression]\nsoft_bounce_limit = 0\n", r"suppression\.soft_bounce_limit: 0 is be"),
        ("[suppression]\nstroe = 'x'\n", "Did you mean `store`"),
        (
            "[suppression]\nstore = 'postgresql://u:secret@db.test/mail'\n",
            r"suppression\.store: the URL holds a password",
        ),
    ],
)
def test_bad_suppression_keys_are_named(tmp_path: Path, extra: str, message: str) -> None:
    path = write_campaign(tmp_path, [], toml=campaign_toml(extra=extra))
    with pytest.raises(ConfigError, match=message):
        Campaign.load(path, {})


def test_a_postgresql_store_url_loads_as_given(tmp_path: Path) -> None:
    url = "postgresql://bulksend@db.test:5432/mail?password_file=/run/secrets/pg"
    extra = f'[suppression]\nstore = "{url}"\n'
    config = Campaign.load(write_campaign(tmp_path, [], toml=campaign_toml(extra=extra)), {})
    assert config.config.suppression.store == url


def test_a_postgresql_store_url_never_holds_a_password() -> None:
    with pytest.raises(SuppressionError, match="must not hold a password"):
        open_suppression_store("postgresql://u:secret@127.0.0.1:1/mail")


def test_a_role_without_create_opens_a_store_set_up_before(postgres_url: str) -> None:
    """Workers may run as a role that can use the store but not create schemas in the
    database (the journal asks no more of a reader)."""
    import psycopg  # noqa: PLC0415 (the PostgreSQL tests' own dependency)

    with open_suppression_store(postgres_url) as owner:  # the owner sets it up once
        owner.add("gone@example.com", SuppressionReason.HARD_BOUNCE, Source.CAMPAIGN, now=1.0)
    database = postgres_url.rpartition("/")[2]
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE worker_{database} LOGIN")
        admin.execute(f"REVOKE CREATE ON DATABASE {database} FROM PUBLIC")
        admin.execute(f"GRANT USAGE ON SCHEMA bulksend_suppression TO worker_{database}")
        admin.execute(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA bulksend_suppression"
            f" TO worker_{database}"
        )
    user = postgres_url.partition("://")[2].partition("@")[0]
    worker_url = postgres_url.replace(f"://{user}@", f"://worker_{database}@", 1)
    with open_suppression_store(worker_url) as worker:
        assert worker.check("gone@example.com") is not None
        worker.add("new@example.com", SuppressionReason.UNSUBSCRIBE, Source.HTTP, now=2.0)
        assert worker.check("new@example.com") is not None
