"""The TLS policy of each connection: none, opportunistic, MTA-STS or DANE.

How this works: a run has one :class:`TlsPolicies`. The scheduler asks it for a recipient
domain's MTA-STS policy (:meth:`TlsPolicies.domain_policy`) when it routes the domain, so a
policy is looked up once per domain and route, never per message; concurrent callers for
one domain share one lookup (the MX cache's collapse, :mod:`bulksend.routing.mx`).

1. ``_mta-sts.<domain>`` TXT gives the policy id (RFC 8461 §3.1). A cached policy that is
   still fresh and has that id (or when the TXT is gone or fails, any fresh one, §5.1) is
   used as it is. Otherwise the policy is fetched (:mod:`bulksend.tlspolicy.fetch`),
   parsed strictly, and cached in memory and in the state file for its ``max_age``; a fetch
   that fails keeps the fresh cached policy, else the domain is treated as having none,
   and the failure is counted for TLS-RPT. A failed fetch is not tried again for
   :data:`FETCH_RETRY` seconds.
2. When a destination opens a connection to an MX host it asks :meth:`TlsPolicies.host_policy`.
   With ``dnssec`` on, ``_25._tcp.<host>`` TLSA is looked up first (RFC 7672 §2.2): usable
   records with AD set make it DANE (TLS mandatory, certificate checked against the
   records, and DANE wins over MTA-STS, RFC 8461 §2); a failed lookup (SERVFAIL, timeout:
   possibly bogus) refuses the host for now; records without AD, or none usable, are
   ignored. Otherwise the domain's MTA-STS policy applies: in ``enforce`` mode a host that
   matches no ``mx`` pattern is refused (no connection at all) and one that matches needs
   TLS with a certificate valid for its name; in ``testing`` mode the same is checked and
   a failure counted, but delivery goes on as it would without a policy.
3. Every session under a policy is counted by day and result (:mod:`.tlsrpt`) and in
   ``bulksend_tls_sessions_total``; :meth:`TlsPolicies.save` adds the counts to the state
   file every minute of a run and at its end.
"""

from __future__ import annotations

import collections
import datetime
import enum
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import dns.rdtypes.ANY.TLSA
import dns.rdtypes.ANY.TXT
import trio

from bulksend.metrics import CountedFamily
from bulksend.routing.errors import RoutingError
from bulksend.routing.mx import MXResolver, is_acceptable_address
from bulksend.smtp.errors import TLSError
from bulksend.tlspolicy.dane import Tlsa, usable, verify_chain
from bulksend.tlspolicy.fetch import FetchError, FetchSettings, fetch_policy_text
from bulksend.tlspolicy.mtasts import PolicyError, StsMode, StsPolicy, parse_policy, parse_txt
from bulksend.tlspolicy.state import TlsState
from bulksend.tlspolicy.tlsrpt import SUCCESS, SessionKey

__all__ = ["FETCH_RETRY", "DaneMismatch", "HostPolicy", "PolicyKind", "TlsPolicies"]

#: Seconds after a failed policy fetch before the domain's policy is fetched again.
FETCH_RETRY = 300.0

#: Seconds between two saves of the TLS-RPT session counts during a run.
SAVE_EVERY = 60.0

log = logging.getLogger(__name__)


class PolicyKind(enum.Enum):
    """The policy a connection was made under (the ``policy`` label of the metric)."""

    NONE = "none"  # TLS turned off for the site
    OPPORTUNISTIC = "opportunistic"  # STARTTLS when offered, unauthenticated (RFC 7435)
    STS = "sts"  # the domain's MTA-STS policy (enforce or testing)
    DANE = "dane"  # the MX host's DNSSEC-validated TLSA records


@dataclass(frozen=True, slots=True)
class HostPolicy:
    """How to connect to one MX host for one recipient domain.

    Attributes:
        kind: the policy in force.
        domain: the recipient (policy) domain.
        host: the MX host name.
        enforce: TLS with an authenticated certificate is mandatory: no plaintext, no
            fallback; a failure is a temporary failure.
        sts: the MTA-STS policy, for an STS host.
        tlsa: the usable TLSA records, for a DANE host.
        refusal: when set, the host must not be contacted at all, and why.
        refusal_result: the TLS-RPT result type of the refusal.
        warning: a policy failure of MTA-STS ``testing`` mode, counted already: delivery
            goes on without the policy (``status`` shows it as the site's last failure).
    """

    kind: PolicyKind
    domain: str
    host: str
    enforce: bool = False
    sts: StsPolicy | None = None
    tlsa: tuple[Tlsa, ...] = ()
    refusal: str = ""
    refusal_result: str = ""
    warning: str = ""

    @property
    def label(self) -> str:
        """The policy in words, as ``status`` shows it (``MTA-STS enforce``, ``DANE`` ...)."""
        if self.kind is PolicyKind.STS and self.sts is not None:
            return f"MTA-STS {self.sts.mode.value}"
        return "DANE" if self.kind is PolicyKind.DANE else self.kind.value

    @property
    def reported(self) -> bool:
        """Whether sessions under this policy are counted for TLS-RPT."""
        return self.kind in (PolicyKind.STS, PolicyKind.DANE)

    def verify(self, chain: Sequence[bytes]) -> None:
        """For DANE: check the server's certificates (DER, its own first) against the TLSA
        records.

        Raises:
            DaneMismatch: no usable record authenticates them.
        """
        if self.kind is PolicyKind.DANE:
            problem = verify_chain(self.tlsa, chain, self.host)
            if problem is not None:
                raise DaneMismatch(f"DANE: {problem}")


class DaneMismatch(TLSError):
    """The server's certificate chain matches none of its usable TLSA records."""

    tls_result = "validation-failure"


@dataclass(slots=True, eq=False)
class _Flight:
    done: trio.Event = field(default_factory=trio.Event)
    finished: bool = False  # False when the leader was cancelled: a follower leads


class TlsPolicies:
    """A run's MTA-STS and DANE decisions, and its TLS session counts.

    Args:
        resolver: the run's resolver (TXT, TLSA and the policy host's addresses).
        sessions: the ``bulksend_tls_sessions_total`` family to count in (None: no metric).
        mta_sts: apply MTA-STS policies.
        dnssec: the resolvers validate DNSSEC: look up TLSA records (DANE).
        fetch: how policy files are fetched.
        state: the state file (policies cached across runs, TLS-RPT counts); None: memory.
        allow_private: accept a policy host's non-global addresses (tests, the demo).
        wall: wall-clock seconds (policy freshness, the report day).
    """

    def __init__(
        self,
        resolver: MXResolver,
        sessions: CountedFamily | None = None,
        *,
        mta_sts: bool = True,
        dnssec: bool = False,
        fetch: FetchSettings | None = None,
        state: TlsState | None = None,
        allow_private: bool = False,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._resolver = resolver
        self._sessions = sessions
        self.mta_sts = mta_sts
        self.dnssec = dnssec
        self._fetch = fetch or FetchSettings()
        self._state = state
        self._allow_private = allow_private
        self._wall = wall
        self._cached: dict[str, StsPolicy] = {}  # the newest policy fetched or read, per domain
        self._active: dict[str, StsPolicy] = {}  # the policy in force (enforce, testing)
        self._retry_at: dict[str, float] = {}  # no fetch before (after a failure)
        self._flights: dict[str, _Flight] = {}
        self.counts: collections.Counter[SessionKey] = collections.Counter()

    # ---- MTA-STS, per domain -----------------------------------------------------------------

    async def domain_policy(self, domain: str) -> StsPolicy | None:
        """The MTA-STS policy in force for ``domain`` (enforce or testing), or None."""
        if not self.mta_sts:
            return None
        while (flight := self._flights.get(domain)) is not None:
            await flight.done.wait()
            if flight.finished:
                return self._active.get(domain)
        flight = self._flights[domain] = _Flight()
        try:
            policy = await self._discover(domain)
            if policy is None or policy.mode is StsMode.NONE:
                self._active.pop(domain, None)
            else:
                self._active[domain] = policy
            flight.finished = True
        finally:
            del self._flights[domain]
            flight.done.set()
        return self._active.get(domain)

    async def published_id(self, domain: str) -> str | None:
        """The policy id ``domain``'s ``_mta-sts`` TXT record publishes (None: no policy,
        or the lookup failed)."""
        txt = await self._resolver.records(f"_mta-sts.{domain}", "TXT")
        if txt.failure:
            return None
        return parse_txt(
            [
                b"".join(rd.strings).decode("ascii", "replace")
                for rd in txt.found
                if isinstance(rd, dns.rdtypes.ANY.TXT.TXT)
            ]
        )

    async def _discover(self, domain: str) -> StsPolicy | None:
        now = self._wall()
        policy_id = await self.published_id(domain)
        cached = self._cached.get(domain)
        if cached is None and self._state is not None:
            cached = await trio.to_thread.run_sync(self._state.policy, domain)
            if cached is not None:
                self._cached[domain] = cached
        fresh = cached if cached is not None and cached.fresh(now) else None
        if policy_id is None or (fresh is not None and fresh.id == policy_id):
            return fresh  # RFC 8461 §5.1: no live policy in DNS, a fresh cached one applies
        if now < self._retry_at.get(domain, -math.inf):
            return fresh
        try:
            policy = await self.fetch_policy(domain, policy_id)
        except (FetchError, PolicyError) as exc:
            result = exc.result if isinstance(exc, FetchError) else "sts-policy-invalid"
            self._retry_at[domain] = now + FETCH_RETRY
            self._metric(PolicyKind.STS.value, result)
            self._count(domain, "sts", fresh, result, host=f"mta-sts.{domain}", address="")
            return fresh
        self._retry_at.pop(domain, None)
        self._cached[domain] = policy
        if self._state is not None:
            await trio.to_thread.run_sync(self._state.save_policy, policy)
        return policy

    async def fetch_policy(self, domain: str, policy_id: str) -> StsPolicy:
        """Fetch and parse ``domain``'s policy file (published under ``policy_id``).

        Raises:
            FetchError: it could not be fetched (sts-policy-fetch-error, sts-webpki-invalid).
            PolicyError: it is not a valid policy (sts-policy-invalid).
        """
        now = self._wall()
        host = f"mta-sts.{domain}"
        try:
            addresses, _expires = await self._resolver.addresses(host)
        except RoutingError as exc:
            raise FetchError(exc.text) from None
        acceptable = [
            a for a in addresses if is_acceptable_address(a, allow_private=self._allow_private)
        ]
        text = await fetch_policy_text(host, acceptable, self._fetch)
        return parse_policy(text, domain=domain, policy_id=policy_id, fetched=now)

    # ---- per host ----------------------------------------------------------------------------

    async def host_policy(self, domain: str, host: str) -> HostPolicy:
        """How to connect to MX host ``host`` for ``domain`` (see the module docstring)."""
        if self.dnssec:
            dane = await self.dane_policy(domain, host)
            if dane is not None:
                return dane
        sts = self._active.get(domain)
        if sts is None:
            return HostPolicy(PolicyKind.OPPORTUNISTIC, domain, host)
        enforce = sts.mode is StsMode.ENFORCE
        if not sts.allows(host):
            reason = (
                f"MX host {host} is not in the MTA-STS policy of {domain} (mx: {', '.join(sts.mx)})"
            )
            if enforce:
                return HostPolicy(
                    PolicyKind.STS, domain, host, True, sts, refusal=reason,
                    refusal_result="validation-failure",
                )  # fmt: skip
            self.failed(HostPolicy(PolicyKind.STS, domain, host, sts=sts), "validation-failure")
            return HostPolicy(PolicyKind.OPPORTUNISTIC, domain, host, warning=f"{reason} (testing)")
        return HostPolicy(PolicyKind.STS, domain, host, enforce, sts)

    async def dane_policy(self, domain: str, host: str) -> HostPolicy | None:
        """The DANE policy of MX ``host`` (None: no usable, validated TLSA records)."""
        found = await self._resolver.records(f"_25._tcp.{host}", "TLSA")
        if found.failure:
            return HostPolicy(
                PolicyKind.DANE, domain, host, True,
                refusal=f"TLSA lookup of _25._tcp.{host} failed ({found.failure}): "
                "DANE cannot be checked, trying later",
                refusal_result="dnssec-invalid",
            )  # fmt: skip
        if not found.secure:
            return None  # not validated: as if there were none (RFC 7672 §2.2)
        records = usable(
            Tlsa(rd.usage, rd.selector, rd.mtype, rd.cert)
            for rd in found.found
            if isinstance(rd, dns.rdtypes.ANY.TLSA.TLSA)
        )
        if not records:
            return None
        return HostPolicy(PolicyKind.DANE, domain, host, True, tlsa=records)

    # ---- counting ----------------------------------------------------------------------------

    def succeeded(self, policy: HostPolicy, *, tls: bool = True) -> None:
        """A session was established under ``policy`` (``tls``: with TLS)."""
        result = SUCCESS if tls else "plaintext"
        self._metric(policy.kind.value, result)
        if policy.reported:
            self._count_policy(policy, SUCCESS, "", "")

    def failed(self, policy: HostPolicy, result: str, address: str = "") -> None:
        """A session under ``policy`` failed (or was refused) with RFC 8460 ``result``."""
        self._metric(policy.kind.value, result)
        if policy.reported:
            self._count_policy(policy, result, policy.host, address)

    def _metric(self, kind: str, result: str) -> None:
        if self._sessions is not None:
            self._sessions.labels(kind, result).inc()

    def _count_policy(self, policy: HostPolicy, result: str, host: str, address: str) -> None:
        if policy.kind is PolicyKind.DANE:
            key = SessionKey(
                self._day(), policy.domain, "tlsa", tuple(str(r) for r in policy.tlsa), (),
                result, host, address,
            )  # fmt: skip
            self.counts[key] += 1
        else:
            self._count(policy.domain, "sts", policy.sts, result, host=host, address=address)

    def _count(
        self, domain: str, kind: str, sts: StsPolicy | None, result: str, *, host: str, address: str
    ) -> None:
        text, mx = ((), ()) if sts is None else (sts.text, sts.mx)
        self.counts[SessionKey(self._day(), domain, kind, text, mx, result, host, address)] += 1

    def _day(self) -> str:
        return datetime.datetime.fromtimestamp(self._wall(), datetime.UTC).date().isoformat()

    async def save(self) -> None:
        """Add the session counts since the last save to the state file. When that fails
        (the file locked for long, the disk full) they wait for the next save, and the run
        goes on: a TLS report is not worth a campaign."""
        counts, self.counts = self.counts, collections.Counter()
        if self._state is None or not counts:
            return
        saved = False
        try:
            await trio.to_thread.run_sync(self._state.add_sessions, list(counts.items()))
            saved = True
        except sqlite3.Error as exc:
            log.warning("TLS-RPT counts not saved in %s, kept for later: %s", self._state.path, exc)
        finally:
            if not saved:  # failed, or cancelled on the way: :meth:`close` saves them
                self.counts.update(counts)

    async def keep_saving(self, stopping: trio.Event, every: float = SAVE_EVERY) -> None:
        """Save the counts every ``every`` seconds until ``stopping`` is set (the run ends:
        :meth:`close` saves the rest), so that a run killed on the way loses at most that
        much of the day's report."""
        while True:
            with trio.move_on_after(every):
                await stopping.wait()
                return
            await self.save()

    async def close(self) -> None:
        """Save the last counts, and close the state file."""
        try:
            await self.save()
        finally:
            if self._state is not None:
                self._state.close()
