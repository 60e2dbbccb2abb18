"""How many small messages per second the test SMTP server swallows.

The server (``bulksend.testing.smtp``, ``record=False``) runs in this process on one core;
the client runs in a child process so that it does not share the core. The client opens
``--connections`` raw connections and pipelines whole transactions (MAIL, RCPT, DATA, the
message and the dot) without waiting for replies, reading them concurrently.

    .venv/bin/python benchmarks/sink_speed.py [--messages 20000] [--connections 8] [--record]
"""

from __future__ import annotations

import argparse
import sys
import time

import trio

from bulksend.testing.smtp import ServerScript, serving

_BODY = (
    b"From: sender@example.test\r\n"
    b"To: someone@example.test\r\n"
    b"Subject: benchmark message\r\n"
    b"Message-ID: <bench@example.test>\r\n"
    b"\r\n" + b"Hello, this is a small benchmark message.\r\n" * 5 + b"..a stuffed line\r\n"
)


def _payload(messages: int, connection: int) -> tuple[bytes, int]:
    """The bytes one connection sends, and how many reply lines it must read back."""
    parts = [b"EHLO client.test\r\n"]
    for i in range(messages):
        parts.append(
            b"MAIL FROM:<sender@example.test>\r\n"
            b"RCPT TO:<user%d.%d@example.test>\r\n"
            b"DATA\r\n" % (connection, i)
        )
        parts.append(_BODY + b".\r\n")
    parts.append(b"QUIT\r\n")
    # greeting + EHLO (250-host, PIPELINING, 8BITMIME, ENHANCEDSTATUSCODES) + 4 per message + QUIT
    return b"".join(parts), 1 + 4 + 4 * messages + 1


async def _one_connection(host: str, port: int, messages: int, index: int) -> None:
    payload, expected_lines = _payload(messages, index)
    stream = await trio.open_tcp_stream(host, port)
    received = 0
    failures = 0

    async def send() -> None:
        view = memoryview(payload)
        for start in range(0, len(payload), 256 * 1024):
            await stream.send_all(view[start : start + 256 * 1024])

    async with stream, trio.open_nursery() as nursery:
        nursery.start_soon(send)
        tail = b""
        while received < expected_lines:
            chunk = await stream.receive_some(256 * 1024)
            if not chunk:
                break
            chunk = tail + chunk
            cut = chunk.rfind(b"\r\n") + 2
            complete, tail = chunk[:cut], chunk[cut:]
            received += complete.count(b"\r\n")
            failures += complete.count(b"\r\n4") + complete.count(b"\r\n5")
    if received != expected_lines or failures:
        raise SystemExit(
            f"connection {index}: {received}/{expected_lines} lines, {failures} failures"
        )


async def _client(host: str, port: int, messages: int, connections: int) -> None:
    per_connection = [messages // connections] * connections
    per_connection[0] += messages - sum(per_connection)
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for index, count in enumerate(per_connection):
            nursery.start_soon(_one_connection, host, port, count, index)
    elapsed = time.perf_counter() - started
    print(f"{elapsed:.6f}")


async def _main(messages: int, connections: int, record: bool) -> None:
    async with serving(ServerScript(record=record)) as server:
        host, port = server.address
        command = [
            sys.executable, __file__, "--client", host, str(port),
            "--messages", str(messages), "--connections", str(connections),
        ]  # fmt: skip
        result = await trio.run_process(command, capture_stdout=True)
        elapsed = float(result.stdout.decode().strip())
        with trio.fail_after(10):
            await server.wait_until(lambda: server.stats.messages >= messages)
        stats = server.stats
    rate = messages / elapsed
    print(
        f"{stats.messages} messages over {connections} pipelined connections "
        f"in {elapsed:.3f} s: {rate:,.0f} msgs/s "
        f"({stats.bytes_received / elapsed / 1e6:.1f} MB/s received, "
        f"peak {stats.connections_peak} connections)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--record", action="store_true", help="keep every transaction")
    parser.add_argument("--client", nargs=2, metavar=("HOST", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        host, port = args.client
        trio.run(_client, host, int(port), args.messages, args.connections)
    else:
        trio.run(_main, args.messages, args.connections, args.record)


if __name__ == "__main__":
    main()
