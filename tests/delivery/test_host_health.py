"""A site's host health, TLS memory and retire rule, without sockets, under trio's MockClock."""

from __future__ import annotations

import trio
import trio.testing

from bulksend.config import TlsMode
from bulksend.delivery.pool import HostHealth, must_retire


async def test_a_failing_host_backs_off_doubling_up_to_ten_minutes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hosts = HostHealth()
    waits = []
    for _ in range(7):
        assert hosts.ready("mx1", trio.current_time())
        hosts.failed("mx1", trio.current_time())
        started = trio.current_time()
        while not hosts.ready("mx1", trio.current_time()):
            await trio.sleep(1)
        waits.append(trio.current_time() - started)
    assert waits == [30, 60, 120, 240, 480, 600, 600]
    assert hosts.ready("mx2", trio.current_time())  # per host: the others are tried


async def test_senders_failing_at_once_count_as_one_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    hosts = HostHealth()
    first_try = trio.current_time()  # two senders start trying mx1 now
    await trio.sleep(5)
    hosts.failed("mx1", first_try)  # the first gives up
    hosts.failed("mx1", first_try)  # the second, which tried at the same time
    await trio.sleep(25)
    assert hosts.ready("mx1", trio.current_time())  # 30 s after it was tried: one failure
    hosts.failed("mx1", trio.current_time())
    assert not hosts.ready("mx1", trio.current_time() + 59)  # the second failure: 60 s


async def test_a_success_resets_the_backoff(autojump_clock: trio.testing.MockClock) -> None:
    hosts = HostHealth()
    for _ in range(3):
        hosts.failed("mx1", trio.current_time())
        await trio.sleep(600)
    hosts.succeeded("mx1")
    hosts.failed("mx1", trio.current_time())
    await trio.sleep(30)
    assert hosts.ready("mx1", trio.current_time())  # back to 30 s, not 240 s


def test_a_host_whose_starttls_failed_is_reached_in_plaintext_under_opportunistic_tls() -> None:
    hosts = HostHealth()
    assert hosts.tls_mode("mx1", TlsMode.OPPORTUNISTIC) is TlsMode.OPPORTUNISTIC
    assert hosts.starttls_failed("mx1", TlsMode.OPPORTUNISTIC, authenticating=False)
    assert hosts.tls_mode("mx1", TlsMode.OPPORTUNISTIC) is TlsMode.NONE
    assert hosts.tls_mode("mx2", TlsMode.OPPORTUNISTIC) is TlsMode.OPPORTUNISTIC
    # A policy that requires TLS never falls back, whatever happened before.
    assert hosts.tls_mode("mx1", TlsMode.REQUIRED) is TlsMode.REQUIRED


def test_no_plaintext_fallback_when_tls_is_required_or_credentials_go_over_it() -> None:
    hosts = HostHealth()
    assert not hosts.starttls_failed("mx1", TlsMode.REQUIRED, authenticating=False)
    assert not hosts.starttls_failed("mx2", TlsMode.OPPORTUNISTIC, authenticating=True)
    assert hosts.tls_mode("mx1", TlsMode.OPPORTUNISTIC) is TlsMode.OPPORTUNISTIC
    assert hosts.tls_mode("mx2", TlsMode.OPPORTUNISTIC) is TlsMode.OPPORTUNISTIC


def test_a_connection_retires_at_its_message_count_when_broken_or_suspended() -> None:
    def retire(messages_sent: int = 3, *, usable: bool = True, suspended: bool = False) -> bool:
        return must_retire(messages_sent=messages_sent, limit=4, usable=usable, suspended=suspended)

    assert not retire()
    assert retire(4)
    assert retire(usable=False)
    assert retire(suspended=True)
