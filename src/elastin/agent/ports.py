"""The node's ports: each one the agent hands out is given out once (``PortAllocator``), and a
port that is taken is traced to the process that holds it (``holder``).

Where it fits: one allocator per agent (``Agent.ports``), shared by every ``AllocRunner``
(a service's dynamic ports, each caller's upstream listener ports) and the mesh manager (the
node proxy's own exporter port). Picking a port by binding port 0 and releasing it let two
picks coincide (a caller's upstream listener and another service's port were both 59387;
HAProxy could not bind and none of the node's listeners came up). The allocator:

* hands out ports from ``DYNAMIC_PORTS`` (Nomad's default dynamic range, below the kernel's
  ephemeral range, so an outgoing connection never takes a port between its reservation and
  its bind), starting at a random place so that two agents on one machine rarely try the same;
* knows every port it gave out and every port it was told of (``claim``: fixed ports of
  running instances, ports of instances re-attached after an agent restart, the proxy's
  exporter) and never hands one of them out until its owner releases it (``release``: the
  allocation ended, its listener with it);
* never hands out a port an allocation of the node has as a fixed port (``want``, from the
  moment the agent sees the allocation until it ends), even while nobody holds it: during a
  stop-first rollout the old instance lets it go and the new one claims it a moment later;
* still checks every candidate by binding it (``port_free``), since processes that are not
  Elastin's use ports too, at most ``PROBES`` of them per ``take``: a range full of other
  processes' sockets fails the take at once (``NoFreePort``) instead of binding thousands of
  sockets on the agent's event loop.

The allocator's bookkeeping is pure (the bind check is injected); ``port_free``, ``holder``
and ``taken_by`` are the thin I/O: a bind, and ``/proc/net/tcp{,6}`` (a listening socket's
inode) with ``/proc/<pid>/fd`` (which process has that socket open). Everything runs on the
agent's event loop; the /proc scan (only when a port is found taken) in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from elastin.model.text import printable

# Nomad's min_dynamic_port / max_dynamic_port: below Linux's ephemeral range (32768-60999)
DYNAMIC_PORTS = (20000, 32000)
PROBES = 256  # candidates ``take`` checks by binding them, at most
COMMAND_CHARS = 120  # of a process's command line in messages (``describe_pid``)
TCP_LISTEN = "0A"  # the socket state of a listening socket in /proc/net/tcp


class NoFreePort(Exception):
    """Every port of the range is reserved or in use."""


@dataclass(frozen=True)
class Reservation:
    """Who a port is reserved for: ``owner`` releases it (an allocation's id, or ``proxy``);
    ``what`` names it in messages ("shop.web[0] 1a2b3c4d: upstream api")."""

    owner: str
    what: str


def port_free(port: int, address: str = "") -> bool:
    """Whether a server could listen on ``port`` now: it binds the IPv4 and IPv6 wildcard
    addresses (as a server does, with ``SO_REUSEADDR``: connections in TIME_WAIT do not count),
    which fails while any socket listens on the port, on any address; with ``address``, that
    address alone (an IPv4 literal: what a proxy listener binds)."""
    binds = (
        [(socket.AF_INET, address)]
        if address
        else [
            (socket.AF_INET, "0.0.0.0"),
            (socket.AF_INET6, "::"),
        ]
    )
    for family, host in binds:
        try:
            s = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 here
        with s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind((host, port))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    return False
                # EACCES (a low port, not root), EADDRNOTAVAIL (no IPv6): not "in use"
    return True


class PortAllocator:
    """Ports reserved on this node, and new ones handed out from ``low``..``high``
    (inclusive). ``is_free`` checks a candidate (``port_free``; tests give a fake);
    ``rng`` chooses where a search starts."""

    def __init__(
        self,
        low: int = DYNAMIC_PORTS[0],
        high: int = DYNAMIC_PORTS[1],
        *,
        is_free: Callable[[int], bool] = port_free,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < low <= high < 65536:
            raise ValueError(f"bad port range {low}-{high}")
        self.low = low
        self.high = high
        self.is_free = is_free
        self.rng = rng or random.Random()
        self._held: dict[int, Reservation] = {}
        self._wanted: dict[int, set[str]] = {}  # fixed ports -> the owners that have them

    def take(self, owner: str, what: str) -> int:
        """A port nobody holds or has as a fixed port (``want``), reserved for ``owner``
        until it releases it. The search starts at a random port and goes round the range,
        binding at most ``PROBES`` candidates; ``NoFreePort`` when none of them was free."""
        size = self.high - self.low + 1
        start = self.rng.randrange(size)
        probed = 0
        for i in range(size):
            port = self.low + (start + i) % size
            if port in self._held or port in self._wanted:
                continue
            if probed >= PROBES:
                break
            probed += 1
            if not self.is_free(port):
                continue
            self._held[port] = Reservation(owner, what)
            return port
        mine = len(self._held.keys() | self._wanted.keys())
        if probed < PROBES:
            raise NoFreePort(
                f"no free port in {self.low}-{self.high}: {mine} reserved by this agent, "
                "the others in use by other processes"
            )
        raise NoFreePort(
            f"no free port in {self.low}-{self.high}: {mine} reserved by this agent, and "
            f"the {PROBES} others tried are in use by other processes; stop some of the "
            "processes that listen in that range"
        )

    def want(self, owner: str, ports: Iterable[int]) -> None:
        """``owner`` has ``ports`` as fixed ports (an allocation placed on this node, not
        started yet): ``take`` never hands them out until ``owner`` releases them, whoever
        holds them meanwhile. ``claim`` still reserves them (for ``owner`` or, while it is
        still stopping, for the instance it replaces)."""
        for port in ports:
            self._wanted.setdefault(port, set()).add(owner)

    def claim(self, owner: str, port: int, what: str) -> Reservation | None:
        """Reserve a port chosen elsewhere (a fixed port, a re-attached instance's, the
        proxy's exporter) for ``owner``. Returns the reservation of another owner that holds
        it already (nothing is changed then), else None."""
        held = self._held.get(port)
        if held is not None and held.owner != owner:
            return held
        self._held[port] = Reservation(owner, what)
        return None

    def release(self, owner: str, ports: Iterable[int] | None = None) -> list[int]:
        """Give back ``owner``'s ports (only those of ``ports`` when given), those it holds
        and those it has as fixed ports (``want``); the ports it held."""
        mine = [p for p, r in self._held.items() if r.owner == owner]
        fixed = [p for p, owners in self._wanted.items() if owner in owners]
        if ports is not None:
            only = set(ports)
            mine = [p for p in mine if p in only]
            fixed = [p for p in fixed if p in only]
        for p in mine:
            del self._held[p]
        for p in fixed:
            self._wanted[p].discard(owner)
            if not self._wanted[p]:
                del self._wanted[p]
        return sorted(mine)

    def holder(self, port: int) -> Reservation | None:
        return self._held.get(port)

    def held(self) -> dict[int, Reservation]:
        return dict(self._held)

    def wanted(self) -> dict[int, set[str]]:
        """The fixed ports of this node's allocations (``want``) and their owners."""
        return {p: set(owners) for p, owners in self._wanted.items()}


# who holds a port ------------------------------------------------------------------------
def listening_inodes(table: str, port: int) -> set[int]:
    """The inodes of the sockets listening on ``port`` (any address) in a ``/proc/net/tcp``
    or ``tcp6`` table (pure)."""
    out: set[int] = set()
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != TCP_LISTEN:
            continue
        _, _, hexport = fields[1].rpartition(":")
        try:
            if int(hexport, 16) == port:
                out.add(int(fields[9]))
        except ValueError:
            continue
    return out


def socket_pids(inodes: set[int], proc: Path = Path("/proc")) -> list[int]:
    """The processes with one of the sockets ``inodes`` open (reads ``/proc/<pid>/fd``)."""
    if not inodes:
        return []
    links = {f"socket:[{i}]" for i in inodes}
    pids: list[int] = []
    for d in proc.iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in os.scandir(d / "fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(fd.path) in links:
                        pids.append(int(d.name))
                        break
    return sorted(pids)


def listening_pids(port: int, proc: Path = Path("/proc")) -> list[int]:
    """The processes that have a socket listening on ``port`` open (empty when unknown)."""
    inodes: set[int] = set()
    for name in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            inodes |= listening_inodes((proc / "net" / name).read_text(), port)
    return socket_pids(inodes, proc)


def describe_pid(pid: int, proc: Path = Path("/proc")) -> str:
    """``pid 1234 (python3 -m http.server 8080)``; the pid alone when its command is gone.
    The command is ``printable``: made safe for a terminal and bounded."""
    most = 4 * COMMAND_CHARS  # bytes: a command line may be megabytes long
    try:
        with (proc / str(pid) / "cmdline").open("rb") as f:
            raw = f.read(most + 1)
    except OSError:
        return f"pid {pid}"
    words = (a.decode(errors="replace") for a in raw[:most].split(b"\0") if a)
    command = printable(" ".join(words), COMMAND_CHARS)
    if len(raw) > most and not command.endswith("…"):
        command = command[: COMMAND_CHARS - 1] + "…"
    return f"pid {pid} ({command})" if command else f"pid {pid}"


@dataclass(frozen=True)
class Holder:
    """Who holds a port: ``who`` as ``describe_pid`` says ("pid 4242 (nc -l 8080)"), or
    "another process" when /proc does not tell (another network namespace, no permission);
    ``instance``: the process runs in an Elastin cgroup (an instance, perhaps stopping)."""

    who: str
    instance: bool = False


def elastin_cgroup(text: str) -> bool:
    """Whether a ``/proc/<pid>/cgroup`` text puts the process in an Elastin cgroup (the
    driver's root, ``elastin`` or ``ELASTIN_CGROUP_ROOT``, which tests name
    ``elastin-test-…``) (pure)."""
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        if path.lstrip("/").split("/", 1)[0].startswith("elastin"):
            return True
    return False


def holder(port: int, proc: Path = Path("/proc")) -> Holder:
    """Who listens on ``port`` (``Holder``)."""
    pids = listening_pids(port, proc)
    if not pids:
        return Holder("another process")
    more = f" and {len(pids) - 1} other process(es)" if len(pids) > 1 else ""
    try:
        instance = elastin_cgroup((proc / str(pids[0]) / "cgroup").read_text())
    except OSError:
        instance = False
    return Holder(describe_pid(pids[0], proc) + more, instance)


def taken_by(port: int) -> Holder | None:
    """None when a server could listen on ``port``, else who holds it (``holder``). Blocking:
    the /proc scan runs only when the port is taken."""
    if port_free(port):
        return None
    return holder(port)
