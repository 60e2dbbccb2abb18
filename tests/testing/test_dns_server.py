"""The loopback DNS server itself, checked with dnspython's query functions."""

from __future__ import annotations

import socket

import dns.asyncquery
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest
import trio

from bulksend.testing.dns import DNSServer, Fault, open_dns_server


async def ask(
    server: DNSServer, name: str, rdtype: str, *, tcp: bool = False
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    send = dns.asyncquery.tcp if tcp else dns.asyncquery.udp
    return await send(query, "127.0.0.1", timeout=5, port=server.port)


async def test_started_with_nursery_start():
    server = DNSServer({"a.test": {"A": "127.0.0.1", "ttl": 42}})
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve)
            assert port == server.port > 0
            response = await ask(server, "a.test", "A")
            nursery.cancel_scope.cancel()
    assert response.flags & dns.flags.AA
    assert response.answer[0].ttl == 42
    assert [rd.address for rd in response.answer[0]] == ["127.0.0.1"]


async def test_negative_answers_carry_an_soa(dns_server):
    with trio.fail_after(10):
        nx = await ask(dns_server, "missing.example.com", "MX")
        nodata = await ask(dns_server, "mx2.example.com", "AAAA")
        ent = await ask(dns_server, "com", "MX")  # an empty non-terminal exists
    assert nx.rcode() == dns.rcode.NXDOMAIN
    assert nodata.rcode() == ent.rcode() == dns.rcode.NOERROR
    for response in (nx, nodata, ent):
        assert not response.answer
        (soa,) = response.authority
        assert soa.rdtype == dns.rdatatype.SOA
        assert soa[0].minimum == 120


async def test_tcp_answers_several_queries_per_connection(dns_server):
    queries = [dns.message.make_query(n, "A") for n in ("mx1.example.com", "mx2.example.com")]
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream("127.0.0.1", dns_server.port)
        async with stream:
            # Both queries in one write: the server must split them by their length prefixes.
            wires = [q.to_wire() for q in queries]
            await stream.send_all(b"".join(len(w).to_bytes(2, "big") + w for w in wires))
            received = b""
            answers = []
            while len(answers) < 2:
                received += await stream.receive_some()
                while len(received) >= 2 and len(received) >= 2 + int.from_bytes(
                    received[:2], "big"
                ):
                    size = int.from_bytes(received[:2], "big")
                    answers.append(dns.message.from_wire(received[2 : 2 + size]))
                    received = received[2 + size :]
    assert [a.answer[0][0].address for a in answers] == ["127.0.0.11", "127.0.0.12"]
    assert dns_server.count(transport="tcp") == 2


async def test_truncate_fault_sets_tc_over_udp_only(dns_server):
    dns_server.inject("example.com", Fault.TRUNCATE)
    with trio.fail_after(10):
        truncated = await ask(dns_server, "example.com", "MX")
        response = await ask(dns_server, "example.com", "MX", tcp=True)
    assert truncated.flags & dns.flags.TC
    assert not truncated.answer
    assert not response.flags & dns.flags.TC
    assert len(response.answer[0]) == 2


async def test_fault_can_target_one_type(dns_server):
    dns_server.inject("mx1.example.com", Fault.SERVFAIL, "AAAA")
    with trio.fail_after(10):
        a = await ask(dns_server, "mx1.example.com", "A")
        aaaa = await ask(dns_server, "mx1.example.com", "AAAA")
    assert a.rcode() == dns.rcode.NOERROR
    assert aaaa.rcode() == dns.rcode.SERVFAIL


async def test_garbage_is_dropped_and_service_continues(dns_server):
    with trio.fail_after(10):
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        with sock:
            for junk in (
                b"",
                b"\x00",
                b"\xff" * 600,
                dns.message.make_query("x.test", "A").to_wire()[:-3],
            ):
                await sock.sendto(junk, ("127.0.0.1", dns_server.port))
            response = dns.message.make_response(dns.message.make_query("x.test", "A"))
            await sock.sendto(response.to_wire(), ("127.0.0.1", dns_server.port))  # not a query
        stream = await trio.open_tcp_stream("127.0.0.1", dns_server.port)
        async with stream:
            await stream.send_all(b"\x00\x05hello")
        answer = await ask(dns_server, "mx1.example.com", "A")
    assert answer.answer
    assert dns_server.garbage >= 5
    assert dns_server.errors == []


async def test_other_opcodes_not_implemented(dns_server):
    query = dns.message.make_query("example.com", "MX")
    query.set_opcode(dns.opcode.NOTIFY)
    with trio.fail_after(10):
        response = await dns.asyncquery.udp(query, "127.0.0.1", timeout=5, port=dns_server.port)
    assert response.rcode() == dns.rcode.NOTIMP


async def test_zones_change_while_serving():
    async with open_dns_server({"a.test": {"A": ["127.0.0.1"]}}) as server:
        with trio.fail_after(10):
            server.set("a.test", "A", ["127.0.0.2", "127.0.0.3"], ttl=5)
            changed = await ask(server, "a.test", "A")
            server.remove("a.test")
            gone = await ask(server, "a.test", "A")
    assert sorted(rd.address for rd in changed.answer[0]) == ["127.0.0.2", "127.0.0.3"]
    assert gone.rcode() == dns.rcode.NXDOMAIN
    assert server.count("a.test", "A") == 2


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback")
async def test_serves_on_ipv6_loopback():
    async with open_dns_server({"a.test": {"AAAA": ["::1"]}}, host="::1") as server:
        with trio.fail_after(10):
            query = dns.message.make_query("a.test", "AAAA")
            response = await dns.asyncquery.udp(query, "::1", timeout=5, port=server.port)
    assert response.answer[0][0].address == "::1"
