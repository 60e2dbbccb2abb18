"""A small authoritative DNS server on loopback, for tests, the demo and benchmarks.

How this works: one UDP socket and one TCP listener share a port on 127.0.0.1. Every query is
parsed with ``dns.message`` and answered from zones given as plain Python data, as an
authoritative server for the whole tree would (AA set, no recursion):

* a name with records of the asked type gets them (CNAMEs inside the data are followed, as an
  authoritative server does within its zone, RFC 1034 §4.3.2);
* a name that exists without that type, or an empty non-terminal, gets NODATA, and an unknown
  name gets NXDOMAIN; both carry an SOA in the authority section whose MINIMUM is the negative
  TTL (RFC 2308 §3, §5), so resolvers can cache the negative answer;
* a UDP answer larger than 512 octets, or than the client's EDNS payload size (RFC 6891 §6.2.5),
  goes back empty with TC set, and the client retries over TCP (RFC 1035 §4.2.1, RFC 7766 §5);
  TCP messages carry a two-octet length prefix (RFC 1035 §4.2.2).

A name whose entry has ``"secure": True`` is answered as a validating resolver answers a
DNSSEC-signed name (RFC 4035 §3.2.3): with AD set, when the query carries DO or AD (RFC 6840
§5.7); other names never get AD, like unsigned ones. TLSA and TXT records are zone-file
text like any other type (``"TLSA": ["3 1 1 <hex>"]``, ``"TXT": ['"v=STSv1; id=1"']``).

Faults are injected per name (and optionally per type): SERVFAIL, REFUSED, TIMEOUT (the query is
counted and never answered) and TRUNCATE (every UDP answer has TC set). Every query is counted
per (name, type, transport) before faults apply, so a test can assert how many queries a
resolver really sent. Garbage packets are counted as ``garbage`` and dropped.

Zones look like::

    {
        "example.com": {"MX": [(10, "mx1.example.com")], "ttl": 300},
        "mx1.example.com": {"A": ["127.0.0.2"], "AAAA": ["::1"]},
        "alias.example.com": {"CNAME": "mx1.example.com"},
    }

MX values are ``(preference, host)`` tuples or zone-file text (``"10 mx1.example.com."``);
other types take zone-file rdata text. Relative names are made absolute.
"""

from __future__ import annotations

import enum
import errno
import socket
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import trio

__all__ = ["DNSServer", "Fault", "Zones", "open_dns_server"]

#: ``{name: {"MX": [...], "A": [...], "ttl": 300}}``; see the module docstring.
Zones = Mapping[str, Mapping[str, Any]]

_UDP_LIMIT = 512  # RFC 1035 §2.3.4, without EDNS
_MAX_MESSAGE = 65535
_TCP_IDLE = 30.0  # seconds a TCP client may stay silent before we close (RFC 7766 §6.2.3)
_MAX_CHAIN = 8
_IN = dns.rdataclass.IN


class Fault(enum.Enum):
    """A failure the server can be told to produce for a name."""

    SERVFAIL = "servfail"  # answer with rcode SERVFAIL
    REFUSED = "refused"  # answer with rcode REFUSED
    TIMEOUT = "timeout"  # never answer (over UDP or TCP)
    TRUNCATE = "truncate"  # answer over UDP with TC set and no records; TCP answers normally


_Key = tuple[dns.name.Name, dns.rdatatype.RdataType]


def _name(text: str | dns.name.Name) -> dns.name.Name:
    if isinstance(text, dns.name.Name):
        return text
    return dns.name.from_text(text)


def _rdata(rdtype: dns.rdatatype.RdataType, value: Any) -> dns.rdata.Rdata:
    if rdtype == dns.rdatatype.MX and isinstance(value, tuple):
        preference, host = value
        exchange = _name(host).to_text()
        return dns.rdata.from_text(_IN, rdtype, f"{int(preference)} {exchange}")
    if isinstance(value, dns.rdata.Rdata):
        return value
    return dns.rdata.from_text(_IN, rdtype, str(value), origin=dns.name.root, relativize=False)


def _parents(name: dns.name.Name) -> list[dns.name.Name]:
    parents = []
    while name != dns.name.root:
        name = name.parent()
        parents.append(name)
    return parents


def _label(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower() or "."


class DNSServer:
    """An authoritative DNS server for loopback tests.

    Start it with ``port = await nursery.start(server.serve)`` or use
    :func:`open_dns_server`. Zones and faults may be changed while it runs.

    Args:
        zones: the records to serve (see the module docstring).
        default_ttl: TTL of records whose name has no ``"ttl"`` entry.
        negative_ttl: SOA MINIMUM sent with NXDOMAIN and NODATA answers (RFC 2308 §5).
        host: the loopback address to bind (IPv4 or IPv6).
    """

    def __init__(
        self,
        zones: Zones | None = None,
        *,
        default_ttl: int = 300,
        negative_ttl: int = 60,
        host: str = "127.0.0.1",
    ) -> None:
        self.default_ttl = default_ttl
        self.negative_ttl = negative_ttl
        self.host = host
        self.port = 0
        #: queries received, keyed by (name without final dot, type text, "udp" | "tcp").
        self.queries: Counter[tuple[str, str, str]] = Counter()
        #: packets that could not be parsed as a DNS query.
        self.garbage = 0
        #: exceptions raised while answering (each answered SERVFAIL); should stay empty.
        self.errors: list[Exception] = []
        self._records: dict[_Key, dns.rrset.RRset] = {}
        self._names: set[dns.name.Name] = set()
        self._ancestors: set[dns.name.Name] = set()  # empty non-terminals exist (RFC 8020)
        self._secure: set[dns.name.Name] = set()  # answered with AD (DNSSEC-validated)
        self._faults: dict[tuple[dns.name.Name, dns.rdatatype.RdataType | None], Fault] = {}
        #: Faults that apply to so many more queries only (then they are gone).
        self._fault_budget: dict[tuple[dns.name.Name, dns.rdatatype.RdataType | None], int] = {}
        if zones:
            self.load(zones)

    # ---- zone data -------------------------------------------------------------------------

    def load(self, zones: Zones) -> None:
        """Add (or replace) every name in ``zones``."""
        for owner, entries in zones.items():
            ttl = int(entries.get("ttl", self.default_ttl))
            if entries.get("secure"):
                self._secure.add(_name(owner))
            else:
                self._secure.discard(_name(owner))
            for type_text, value in entries.items():
                if type_text in ("ttl", "secure"):
                    continue
                single = isinstance(value, str | tuple) or not isinstance(value, Iterable)
                self.set(owner, type_text, [value] if single else list(value), ttl=ttl)

    def set(self, name: str, rdtype: str, values: Sequence[Any], *, ttl: int | None = None) -> None:
        """Serve ``values`` as the ``rdtype`` records of ``name`` (replacing any)."""
        owner = _name(name)
        kind = dns.rdatatype.from_text(rdtype)
        rrset = dns.rrset.RRset(owner, _IN, kind)
        for value in values:
            rrset.add(_rdata(kind, value), ttl=self.default_ttl if ttl is None else ttl)
        self._records[(owner, kind)] = rrset
        self._names.add(owner)
        self._ancestors.update(_parents(owner))

    def remove(self, name: str, rdtype: str | None = None) -> None:
        """Stop serving ``name`` (or only its ``rdtype`` records): it becomes NXDOMAIN/NODATA."""
        owner = _name(name)
        for key in [k for k in self._records if k[0] == owner]:
            if rdtype is None or key[1] == dns.rdatatype.from_text(rdtype):
                del self._records[key]
        if not any(k[0] == owner for k in self._records):
            self._names.discard(owner)
            self._ancestors = {p for n in self._names for p in _parents(n)}

    # ---- faults and counters ---------------------------------------------------------------

    def inject(
        self, name: str, fault: Fault, rdtype: str | None = None, *, times: int | None = None
    ) -> None:
        """Make queries for ``name`` (of ``rdtype``, or any type) fail with ``fault``: all of
        them, or the next ``times`` only (a resolver that failed for one process, not the
        next)."""
        key = (_name(name), None if rdtype is None else dns.rdatatype.from_text(rdtype))
        self._faults[key] = fault
        if times is not None:
            self._fault_budget[key] = times

    def clear_faults(self) -> None:
        """Remove every injected fault."""
        self._faults.clear()
        self._fault_budget.clear()

    def count(self, name: str | None = None, rdtype: str | None = None, transport: str = "") -> int:
        """How many queries arrived, filtered by name, type and transport ("udp"/"tcp")."""
        want = None if name is None else _label(_name(name))
        kind = None if rdtype is None else rdtype.upper()
        return sum(
            n
            for (qname, qtype, via), n in self.queries.items()
            if (want is None or qname == want)
            and (kind is None or qtype == kind)
            and (not transport or via == transport)
        )

    # ---- answering -------------------------------------------------------------------------

    def _fault(self, qname: dns.name.Name, qtype: dns.rdatatype.RdataType) -> Fault | None:
        for key in ((qname, qtype), (qname, None)):
            fault = self._faults.get(key)
            if fault is None:
                continue
            left = self._fault_budget.get(key)
            if left is not None:  # counted down: gone after its last query
                if left <= 1:
                    del self._faults[key], self._fault_budget[key]
                else:
                    self._fault_budget[key] = left - 1
            return fault
        return None

    def _exists(self, name: dns.name.Name) -> bool:
        return name in self._names or name in self._ancestors

    def _soa(self) -> dns.rrset.RRset:
        soa = dns.rrset.RRset(dns.name.root, _IN, dns.rdatatype.SOA)
        soa.add(
            dns.rdata.from_text(
                _IN,
                dns.rdatatype.SOA,
                f"ns.test. hostmaster.test. 1 3600 600 86400 {self.negative_ttl}",
            ),
            ttl=self.negative_ttl,
        )
        return soa

    def _answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        qname, qtype = question.name, question.rdtype
        name = qname
        for _ in range(_MAX_CHAIN):
            rrset = self._records.get((name, qtype))
            if rrset is not None:
                response.answer.append(rrset)
                asked = query.ednsflags & dns.flags.DO or query.flags & dns.flags.AD
                if asked and name in self._secure:
                    response.flags |= dns.flags.AD
                return response
            cname = self._records.get((name, dns.rdatatype.CNAME))
            if cname is None or qtype == dns.rdatatype.CNAME:
                break
            response.answer.append(cname)
            name = next(iter(cname)).target
        if not self._exists(name):
            response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(self._soa())
        return response

    def _respond(self, wire: bytes, transport: str) -> bytes | None:
        """The reply to one received message, or None to stay silent."""
        try:
            query = dns.message.from_wire(wire)
        except Exception:  # garbage of any shape is dropped, never fatal
            self.garbage += 1
            return None
        if query.flags & dns.flags.QR or len(query.question) != 1:
            self.garbage += 1
            return None
        question = query.question[0]
        self.queries[
            (_label(question.name), dns.rdatatype.to_text(question.rdtype), transport)
        ] += 1
        if query.opcode() != dns.opcode.QUERY or question.rdclass != _IN:
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.NOTIMP)
            return response.to_wire()
        try:
            return self._reply(query, transport)
        except Exception as exc:  # a server bug must not stop the server; tests see .errors
            self.errors.append(exc)
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()

    def _reply(self, query: dns.message.Message, transport: str) -> bytes | None:
        question = query.question[0]
        fault = self._fault(question.name, question.rdtype)
        if fault is Fault.TIMEOUT:
            return None
        if fault in (Fault.SERVFAIL, Fault.REFUSED):
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.SERVFAIL if fault is Fault.SERVFAIL else dns.rcode.REFUSED)
            return response.to_wire()
        response = self._answer(query)
        if transport == "tcp":
            return response.to_wire(max_size=_MAX_MESSAGE)
        limit = _UDP_LIMIT
        if query.edns >= 0:
            limit = min(max(query.payload, _UDP_LIMIT), _MAX_MESSAGE)
        if fault is not Fault.TRUNCATE:
            try:
                return response.to_wire(max_size=limit)
            except dns.exception.TooBig:
                pass
        truncated = dns.message.make_response(query)
        truncated.flags |= dns.flags.AA | dns.flags.TC
        return truncated.to_wire()

    # ---- serving ---------------------------------------------------------------------------

    async def _bind(self) -> tuple[trio.socket.SocketType, trio.SocketListener]:
        """Bind UDP to a free port, then TCP to the same one (retrying if TCP's is taken)."""
        for _ in range(50):
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            udp = trio.socket.socket(family, socket.SOCK_DGRAM)
            await udp.bind((self.host, self.port))
            port = udp.getsockname()[1]
            tcp = trio.socket.socket(family, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                await tcp.bind((self.host, port))
            except OSError as exc:
                tcp.close()
                udp.close()
                if exc.errno != errno.EADDRINUSE or self.port:
                    raise
                continue
            tcp.listen(128)
            self.port = port
            return udp, trio.SocketListener(tcp)
        raise OSError(errno.EADDRINUSE, "no port free for both UDP and TCP")

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; reports the bound port through ``task_status``."""
        udp, listener = await self._bind()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._serve_udp, udp)
                nursery.start_soon(trio.serve_listeners, self._serve_tcp, [listener])
                task_status.started(self.port)
        finally:
            udp.close()
            await listener.aclose()

    async def _serve_udp(self, sock: trio.socket.SocketType) -> None:
        while True:
            try:
                wire, peer = await sock.recvfrom(_MAX_MESSAGE)
            except OSError:
                # ICMP port-unreachable from an earlier reply can surface here; carry on.
                continue
            reply = self._respond(wire, "udp")
            if reply is not None:
                try:
                    await sock.sendto(reply, peer)
                except OSError:
                    continue

    async def _serve_tcp(self, stream: trio.SocketStream) -> None:
        buffer = bytearray()
        try:
            while True:
                with trio.move_on_after(_TCP_IDLE) as idle:
                    chunk = await stream.receive_some(_MAX_MESSAGE)
                if idle.cancelled_caught or not chunk:
                    return
                buffer += chunk
                while len(buffer) >= 2:
                    size = int.from_bytes(buffer[:2], "big")
                    if len(buffer) < 2 + size:
                        break
                    wire = bytes(buffer[2 : 2 + size])
                    del buffer[: 2 + size]
                    reply = self._respond(wire, "tcp")
                    if reply is not None:
                        await stream.send_all(len(reply).to_bytes(2, "big") + reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            await stream.aclose()


@asynccontextmanager
async def open_dns_server(
    zones: Zones | None = None,
    *,
    default_ttl: int = 300,
    negative_ttl: int = 60,
    host: str = "127.0.0.1",
) -> AsyncIterator[DNSServer]:
    """Run a :class:`DNSServer` for the duration of the ``async with`` block."""
    server = DNSServer(zones, default_ttl=default_ttl, negative_ttl=negative_ttl, host=host)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()
