"""Service discovery over DNS, as Consul's DNS interface does it, answered by each agent.

Names (case-insensitive, the trailing dot optional):

* ``<service>.service.elastin`` and ``<service>.<app>.service.elastin`` — A records, one per
  distinct address of the service's ready endpoints (first port);
* ``_<port>._tcp.<service>[.<app>].service.elastin`` — SRV records (RFC 2782) for a named
  port: priority 1, weight 1, the port, and the target ``<node>.node.elastin.`` whose A
  record is in the additional section. SRV on ``<service>.service.elastin`` gives the first
  port.

AAAA gets an empty NOERROR answer (the mesh is IPv4 here); names under ``service.elastin``
that name no service get NXDOMAIN; names outside ``elastin`` are REFUSED (this is not a
recursive resolver); malformed queries get FORMERR and other opcodes NOTIMP. TTLs are 0:
answers are live. Over UDP an answer larger than 512 bytes is sent truncated (TC) so the
client asks again over TCP, which the server also answers (RFC 1035 §4.2.2).

The wire format is written here (RFC 1035 §4): ``parse_query`` and ``build_response`` are
pure; ``DnsServer`` is the asyncio UDP + TCP server around a ``Lookup``. The agent runs one on
127.0.0.1 and tells workloads where in ``ELASTIN_DNS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from elastin import serving

log = logging.getLogger("elastin.mesh.dns")

A, AAAA, SRV, ANY = 1, 28, 33, 255
NOERROR, FORMERR, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 3, 4, 5
DOMAIN = ("elastin",)
UDP_LIMIT = 512
TCP_CONNECTIONS = 256  # TCP queries at once (answers too large for UDP come this way)
TCP_SECONDS = 10  # the longest one TCP connection lives


class DnsFormatError(ValueError):
    """A query that cannot be parsed."""


@dataclass(frozen=True)
class Query:
    id: int
    flags: int
    name: str  # lower case, no trailing dot
    qtype: int
    qclass: int
    raw_question: bytes  # echoed in the answer as it came

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF


@dataclass(frozen=True)
class Target:
    address: str
    port: int
    node: str


# (service, app or None, port name or None) -> ready endpoints; None: no such service
Lookup = Callable[[str, str | None, str | None], list[Target] | None]


def _read_name(data: bytes, i: int) -> tuple[str, int]:
    labels: list[str] = []
    while True:
        if i >= len(data):
            raise DnsFormatError("name runs past the end")
        n = data[i]
        i += 1
        if n == 0:
            return ".".join(labels), i
        if n & 0xC0:
            raise DnsFormatError("compressed names are not expected in a question")
        if i + n > len(data):
            raise DnsFormatError("label runs past the end")
        labels.append(data[i : i + n].decode("ascii", "replace"))
        i += n


def parse_header(data: bytes) -> tuple[int, int]:
    """``(id, flags)`` of a message; ``DnsFormatError`` when not even a header is there."""
    if len(data) < 12:
        raise DnsFormatError("shorter than a DNS header")
    ident, flags = struct.unpack("!HH", data[:4])
    return ident, flags


def parse_query(data: bytes) -> Query:
    ident, flags = parse_header(data)
    qdcount = struct.unpack("!H", data[4:6])[0]
    if flags & 0x8000:
        raise DnsFormatError("a response, not a query")
    if qdcount != 1:
        raise DnsFormatError(f"{qdcount} questions; exactly one is supported")
    name, i = _read_name(data, 12)
    if i + 4 > len(data):
        raise DnsFormatError("question without type and class")
    qtype, qclass = struct.unpack("!HH", data[i : i + 4])
    return Query(ident, flags, name.lower().rstrip("."), qtype, qclass, data[12 : i + 4])


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise ValueError(f"bad label {label!r} in {name!r}")
        out += bytes([len(raw)]) + raw
    return out + b"\x00"


def _rr(name: str, rtype: int, ttl: int, rdata: bytes) -> bytes:
    return encode_name(name) + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata


def a_record(name: str, address: str, ttl: int = 0) -> bytes:
    return _rr(name, A, ttl, socket.inet_aton(address))


def srv_record(name: str, port: int, target: str, ttl: int = 0) -> bytes:
    return _rr(name, SRV, ttl, struct.pack("!HHH", 1, 1, port) + encode_name(target))


def build_response(
    query: Query,
    rcode: int,
    answers: Sequence[bytes] = (),
    additional: Sequence[bytes] = (),
    limit: int = 0,
) -> bytes:
    """The answer to ``query``: QR and AA set, RD echoed. With ``limit`` (UDP) an answer
    that would not fit is sent with TC set and no records."""
    flags = 0x8000 | 0x0400 | (query.flags & 0x0100) | (query.opcode << 11) | rcode
    head = struct.pack("!HHHHHH", query.id, flags, 1, len(answers), 0, len(additional))
    body = query.raw_question + b"".join(answers) + b"".join(additional)
    if limit and 12 + len(body) > limit:
        flags |= 0x0200
        return struct.pack("!HHHHHH", query.id, flags, 1, 0, 0, 0) + query.raw_question
    return head + body


def parse_name(name: str) -> tuple[str, str | None, str | None] | None:
    """``(service, app, port)`` from a name under ``service.elastin``; None otherwise."""
    labels = name.split(".")
    if labels[-2:] != ["service", "elastin"] or len(labels) < 3:
        return None
    rest = labels[:-2]
    port = None
    if len(rest) >= 3 and rest[0].startswith("_") and rest[1] == "_tcp":
        port, rest = rest[0][1:], rest[2:]
    if len(rest) == 1:
        return rest[0], None, port
    if len(rest) == 2:
        return rest[0], rest[1], port
    return None


def answer(query: Query, lookup: Lookup, limit: int = 0, ttl: int = 0) -> bytes:
    """The whole behaviour of the DNS interface for one query (pure but for ``lookup``)."""
    if query.opcode != 0:
        return build_response(query, NOTIMP)
    labels = query.name.split(".")
    if labels[-len(DOMAIN) :] != list(DOMAIN):
        return build_response(query, REFUSED)
    wanted = parse_name(query.name)
    found = lookup(*wanted) if wanted else None
    if found is None:
        return build_response(query, NXDOMAIN)
    name = query.name
    if query.qtype in (A, ANY):
        records = [a_record(name, a, ttl) for a in sorted({t.address for t in found})]
        return build_response(query, NOERROR, records, (), limit)
    if query.qtype == SRV:
        answers = [srv_record(name, t.port, f"{t.node}.node.elastin", ttl) for t in found]
        extra = {f"{t.node}.node.elastin": t.address for t in found}
        additional = [a_record(n, a, ttl) for n, a in sorted(extra.items())]
        return build_response(query, NOERROR, answers, additional, limit)
    return build_response(query, NOERROR)  # AAAA and the rest: the name exists, no records


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        out = self.server.respond(data, UDP_LIMIT)
        if out is not None and self.transport is not None:
            self.transport.sendto(out, addr)


class DnsServer:
    """Answers ``<service>.service.elastin`` over UDP and TCP on ``host:port`` (port 0: any
    free one — ``port`` says which after ``start``)."""

    def __init__(self, lookup: Lookup, host: str = "127.0.0.1", port: int = 0, ttl: int = 0):
        self.lookup = lookup
        self.host = host
        self.want_port = port
        self.ttl = ttl
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        # TCP connections at once; each lives TCP_SECONDS at most. Out of descriptors, the
        # accept loop pauses (elastin.serving) instead of logging a traceback per attempt
        self._guard = serving.Guard(TCP_CONNECTIONS, TCP_CONNECTIONS)
        self.port = 0

    def respond(self, data: bytes, limit: int) -> bytes | None:
        try:
            query = parse_query(data)
        except DnsFormatError:
            try:
                ident, flags = parse_header(data)
            except DnsFormatError:
                return None  # not even a header: drop it
            # no question to echo: the header alone, with the opcode and RD of the query
            return struct.pack("!HHHHHH", ident, 0x8000 | (flags & 0x7900) | FORMERR, 0, 0, 0, 0)
        try:
            return answer(query, self.lookup, limit, self.ttl)
        except Exception:  # a bug must not end the server: answer SERVFAIL
            log.exception("cannot answer %s", query.name)
            return build_response(query, 2)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # UDP and TCP on the same port: bind TCP first (port 0 picks), then UDP on it
        for _ in range(20):
            tcp = serving.bind(self.host, self.want_port, what="the DNS server", backlog=128)
            self.port = int(tcp.getsockname()[1])
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Udp(self), local_addr=(self.host, self.port)
                )
            except OSError:
                tcp.close()
                if self.want_port:
                    raise
                continue
            self._udp, self._tcp = transport, tcp

            def stream() -> asyncio.Protocol:
                return asyncio.StreamReaderProtocol(asyncio.StreamReader(), self._handle_tcp)

            self._accepting = asyncio.create_task(
                serving.accept_loop(
                    tcp, stream, self._guard, "the DNS server (TCP)", "stop idle DNS clients"
                )
            )
            return
        raise OSError("no port free for both UDP and TCP")

    async def _handle_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) else ""
        admitted = self._guard.admit(client)
        try:
            if not admitted:
                return  # this address has its share: closed at once
            async with asyncio.timeout(TCP_SECONDS):
                while True:
                    size = struct.unpack("!H", await reader.readexactly(2))[0]
                    out = self.respond(await reader.readexactly(size), 0)
                    if out is None:
                        return
                    writer.write(struct.pack("!H", len(out)) + out)
                    await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, OSError):
            pass
        finally:
            self._guard.release(client, admitted)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
            self._accepting = None
        if self._tcp is not None:
            self._tcp.close()
            self._tcp = None
