"""The node's port allocator (``elastin.agent.ports``), pure: a port is handed out once until
its owner releases it, ports claimed elsewhere (fixed, re-attached, the proxy's) are never
handed out, a candidate in use by another process is skipped; and the ``/proc/net/tcp``
parsing that finds who listens on a port."""

from __future__ import annotations

import random

import pytest

from elastin.agent.ports import (
    NoFreePort,
    PortAllocator,
    Reservation,
    elastin_cgroup,
    listening_inodes,
)


def test_a_port_is_never_handed_out_twice_until_released() -> None:
    # a small range, every port free as far as binding tells: bind-and-release would have
    # repeated picks; the allocator must not
    pool = PortAllocator(30000, 30049, is_free=lambda _p: True, rng=random.Random(7))
    taken = [pool.take(f"a{i}", "x") for i in range(50)]
    assert len(set(taken)) == 50
    with pytest.raises(NoFreePort, match="30000-30049"):
        pool.take("a99", "x")
    assert pool.release("a3") == [taken[3]]
    assert pool.take("b", "y") == taken[3]


def test_many_owners_many_rounds_never_share_a_port() -> None:
    rng = random.Random(1)
    pool = PortAllocator(20000, 20999, is_free=lambda _p: True, rng=rng)
    live: dict[str, list[int]] = {}
    for n in range(2000):
        if live and rng.random() < 0.4:
            gone = rng.choice(sorted(live))
            assert sorted(pool.release(gone)) == sorted(live.pop(gone))
        else:
            owner = f"o{n}"
            live.setdefault(owner, []).append(pool.take(owner, "x"))
        everything = [p for ports in live.values() for p in ports]
        assert len(everything) == len(set(everything))
        assert set(pool.held()) == set(everything)


def test_claimed_ports_are_not_handed_out_and_conflicts_are_told() -> None:
    pool = PortAllocator(40000, 40002, is_free=lambda _p: True)
    assert pool.claim("proxy", 40000, "the proxy's exporter") is None
    assert pool.claim("a1", 40001, "a1 port http") is None
    assert pool.take("a2", "x") == 40002
    with pytest.raises(NoFreePort):
        pool.take("a3", "x")
    # another owner's claim does not take it over; the holder is named
    assert pool.claim("a3", 40001, "a3 port http") == Reservation("a1", "a1 port http")
    assert pool.holder(40001) == Reservation("a1", "a1 port http")
    assert pool.claim("a1", 40001, "again") is None  # its own: fine
    assert pool.release("a1", [40001]) == [40001]


def test_a_port_in_use_by_another_process_is_skipped() -> None:
    busy = {50000, 50001}
    pool = PortAllocator(50000, 50002, is_free=lambda p: p not in busy, rng=random.Random(0))
    assert pool.take("a", "x") == 50002
    with pytest.raises(NoFreePort):
        pool.take("b", "x")


def test_bad_range_is_refused() -> None:
    with pytest.raises(ValueError):
        PortAllocator(0, 10)


TAIL = "00000000:00000000 00:00000000 00000000     0        0"
HEAD = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid"
TCP = "\n".join(
    [
        HEAD,
        f"   0: 0100007F:1F90 00000000:0000 0A {TAIL} 4711 1 0 100 0 0 10 0",
        f"   1: 00000000:1F90 00000000:0000 0A {TAIL} 4712 1 0 100 0 0 10 0",
        f"   2: 0100007F:1F90 0100007F:D431 01 {TAIL} 4713 1 0 100 0 0 10 0",
        f"   3: 0100007F:1F91 00000000:0000 0A {TAIL} 4714 1 0 100 0 0 10 0",
    ]
)
ANY6 = "00000000000000000000000000000000"
TCP6 = "\n".join([HEAD, f"   0: {ANY6}:1F90 {ANY6}:0000 0A {TAIL} 5001 1 0 100 0 0 10 0"])


def test_listening_inodes_reads_proc_net_tcp() -> None:
    # 0x1F90 = 8080: two listeners (loopback and any), not the established connection
    assert listening_inodes(TCP, 8080) == {4711, 4712}
    assert listening_inodes(TCP, 8081) == {4714}
    assert listening_inodes(TCP6, 8080) == {5001}
    assert listening_inodes(TCP, 9999) == set()
    assert listening_inodes("", 8080) == set()


def test_an_elastin_cgroup_is_told_from_others() -> None:
    assert elastin_cgroup("0::/elastin/3f8833dd0000\n")
    assert elastin_cgroup("5:cpu,cpuacct:/elastin-test-4a3a0f08/3f88\n1:name=systemd:/\n")
    assert not elastin_cgroup("0::/user.slice/user-0.slice/session-1.scope\n")
    assert not elastin_cgroup("0::/\n")
