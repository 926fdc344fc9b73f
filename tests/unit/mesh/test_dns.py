"""The DNS interface's wire format and answers (pure; RFC 1035 / RFC 2782)."""

from __future__ import annotations

import socket
import struct

import pytest

from elastin.mesh.dns import (
    AAAA,
    FORMERR,
    NOERROR,
    NOTIMP,
    NXDOMAIN,
    REFUSED,
    SRV,
    A,
    DnsFormatError,
    DnsServer,
    Target,
    answer,
    parse_name,
    parse_query,
)

TARGETS = {
    ("web", None): [Target("10.0.0.1", 8080, "n1"), Target("10.0.0.2", 8081, "n2")],
    ("web", "shop"): [Target("10.0.0.1", 8080, "n1")],
}


def lookup(service: str, app: str | None, port: str | None) -> list[Target] | None:
    if port not in (None, "http"):
        return None
    return TARGETS.get((service, app))


def query(name: str, qtype: int = A, ident: int = 0x1234, opcode: int = 0) -> bytes:
    """A query as RFC 1035 §4.1 lays it out, built by hand."""
    head = struct.pack("!HHHHHH", ident, 0x0100 | (opcode << 11), 1, 0, 0, 0)
    labels = b"".join(bytes([len(x)]) + x.encode() for x in name.rstrip(".").split("."))
    return head + labels + b"\x00" + struct.pack("!HH", qtype, 1)


def decode(data: bytes) -> tuple[int, int, list[tuple[int, bytes]], int]:
    """(rcode, flags, [(type, rdata)] of the answer section, additional count)."""
    _ident, flags, qd, an, _ns, ar = struct.unpack("!HHHHHH", data[:12])
    i = 12
    for _ in range(qd):
        while data[i]:
            i += data[i] + 1
        i += 5
    records = []
    for _ in range(an):
        while data[i]:
            i += data[i] + 1
        i += 1
        rtype, _cls, _ttl, size = struct.unpack("!HHIH", data[i : i + 10])
        records.append((rtype, data[i + 10 : i + 10 + size]))
        i += 10 + size
    return flags & 0xF, flags, records, ar


def test_parse_query_and_names() -> None:
    q = parse_query(query("Web.Service.Elastin."))
    assert (q.id, q.name, q.qtype, q.opcode) == (0x1234, "web.service.elastin", A, 0)
    assert parse_name("web.service.elastin") == ("web", None, None)
    assert parse_name("web.shop.service.elastin") == ("web", "shop", None)
    assert parse_name("_http._tcp.web.shop.service.elastin") == ("web", "shop", "http")
    assert parse_name("a.b.c.service.elastin") is None
    assert parse_name("web.node.elastin") is None
    with pytest.raises(DnsFormatError):
        parse_query(b"\x00" * 5)
    with pytest.raises(DnsFormatError):
        parse_query(query("web.service.elastin")[:-3])


def test_a_records_one_per_address() -> None:
    rcode, flags, records, _ = decode(answer(parse_query(query("web.service.elastin")), lookup))
    assert rcode == NOERROR and flags & 0x8000 and flags & 0x0400  # a response, authoritative
    assert sorted(socket.inet_ntoa(r) for t, r in records if t == A) == ["10.0.0.1", "10.0.0.2"]
    _, _, records, _ = decode(answer(parse_query(query("web.shop.service.elastin")), lookup))
    assert [socket.inet_ntoa(r) for _, r in records] == ["10.0.0.1"]


def test_srv_records_with_node_targets() -> None:
    q = parse_query(query("_http._tcp.web.service.elastin", SRV))
    rcode, _, records, additional = decode(answer(q, lookup))
    assert rcode == NOERROR and additional == 2
    ports = sorted(struct.unpack("!HHH", r[:6])[2] for t, r in records if t == SRV)
    assert ports == [8080, 8081]
    assert b"\x02n1\x04node\x07elastin\x00" in records[0][1]


def test_errors_by_rcode() -> None:
    def rcode(data: bytes) -> int:
        return decode(answer(parse_query(data), lookup))[0]

    assert rcode(query("nope.service.elastin")) == NXDOMAIN
    assert rcode(query("_grpc._tcp.web.service.elastin", SRV)) == NXDOMAIN
    assert rcode(query("example.com")) == REFUSED
    assert rcode(query("web.service.elastin", opcode=2)) == NOTIMP
    data = answer(parse_query(query("web.service.elastin", AAAA)), lookup)
    assert decode(data)[0] == NOERROR and decode(data)[2] == []  # the name is there, no IPv6
    server = DnsServer(lookup)
    bad = server.respond(struct.pack("!HHHHHH", 7, 0x0100, 2, 0, 0, 0), 512)
    assert bad is not None and decode(bad)[0] == FORMERR and bad[:2] == b"\x00\x07"
    assert server.respond(b"\x01", 512) is None  # not even a header: dropped


def test_udp_answers_too_big_are_truncated() -> None:
    many = [Target(f"10.0.{i // 250}.{i % 250}", 9000, f"n{i}") for i in range(100)]
    q = parse_query(query("big.service.elastin"))
    out = answer(q, lambda *_: many, limit=512)
    rcode, flags, records, _ = decode(out)
    assert flags & 0x0200 and records == [] and rcode == NOERROR  # TC: ask again over TCP
    assert len(decode(answer(q, lambda *_: many))[2]) == 100
