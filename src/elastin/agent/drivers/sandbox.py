"""Who an instance runs as and what of the node's filesystem it sees.

An instance runs as an unprivileged user unless its spec says ``user: root``:

- no ``user:`` — a *dynamic* user of its own, as systemd's ``DynamicUser=``: a uid (and a gid
  of the same number) from Elastin's range (``UID_BASE`` .. ``UID_BASE + UID_COUNT - 1``),
  picked per instance and free again when the instance is gone. Two instances never share one,
  so neither can read the other's files, signal its processes or read its
  ``/proc/<pid>/environ``.
- ``user: alice`` / ``user: "1000"`` / ``user: "1000:1000"`` — that user of the node (looked up
  when the instance starts; a name the node does not have fails the start with a message).
- ``user: root`` (or ``0``) — root, with the node as it is (Nomad's ``raw_exec``); ``elastin ps``
  says so.

A non-root instance starts in a private mount namespace (``unshare --mount``) in which the
paths it needs are reachable even when an ancestor directory is closed to its user — a
checkout under ``/root``, Elastin's own data directory (0700): the closed ancestor is covered
by a small empty tmpfs and only those paths are bound back at their own place, so the instance
sees them and nothing else that was under that ancestor. The paths are: its allocation
directory, its working directory (read-only for a dynamic user) and, when the command is a
Python virtual environment's interpreter, that environment and the Python it was made from
(read-only). Everything else keeps
the node's permissions: a dynamic user reaches what "others" may. The instance's cgroup files
belong to root, so it cannot raise its own limits.

``View`` is the pure plan (what to open, cover and bind), run by the task driver's shim with
``mount``; ``setpriv_argv`` drops to the user (no supplementary groups of root,
``no_new_privs`` so no set-uid program gives privileges back).
"""

from __future__ import annotations

import hashlib
import os
import pwd
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from elastin.agent.drivers.base import StartError
from elastin.model.spec import USER_ID_RE
from elastin.model.workload import DYNAMIC_UIDS

UID_BASE = DYNAMIC_UIDS.start  # 1879048192: above systemd's container range, below 2**31
UID_COUNT = len(DYNAMIC_UIDS)
MAX_EXPOSES = 6  # the mount plan opens fds 3..8


@dataclass(frozen=True)
class Identity:
    """The user an instance runs as."""

    uid: int
    gid: int
    name: str  # what `ps` shows: "root", a user name, or "dynamic:<uid>"
    home: str  # HOME for the instance ("" = its own directory)
    dynamic: bool = False
    named: bool = False  # a user of the node's passwd: it keeps its supplementary groups

    @property
    def root(self) -> bool:
        return self.uid == 0


class UidPool:
    """The dynamic uids of one agent: one per live instance, never two the same."""

    def __init__(self, base: int = UID_BASE, count: int = UID_COUNT) -> None:
        self.base = base
        self.count = count
        self.used: set[int] = set()

    def take(self, alloc_id: str) -> int:
        """A free uid, the same for the same id when free (a hash, then the next free)."""
        start = int.from_bytes(hashlib.sha256(alloc_id.encode()).digest()[:4], "big")
        for i in range(self.count):
            uid = self.base + (start + i) % self.count
            if uid not in self.used:
                self.used.add(uid)
                return uid
        raise StartError(
            f"all {self.count} dynamic users of this node are in use; stop some instances"
        )

    def claim(self, uid: int) -> None:
        """Mark ``uid`` used (an instance found again after an agent restart)."""
        if self.base <= uid < self.base + self.count:
            self.used.add(uid)

    def release(self, uid: int) -> None:
        self.used.discard(uid)


def resolve_user(spec_user: str, pool: UidPool, alloc_id: str) -> Identity:
    """The identity for a spec's ``user:`` value ("" = a dynamic user). Raises StartError."""
    if not spec_user:
        uid = pool.take(alloc_id)
        return Identity(uid, uid, f"dynamic:{uid}", "", dynamic=True)
    if spec_user == "root":
        return Identity(0, 0, "root", "/root")
    m = USER_ID_RE.match(spec_user)
    if m:
        uid = int(m.group(1))
        gid = int(m.group(2)) if m.group(2) is not None else uid
        if uid == 0:
            return Identity(0, gid, "root", "/root")
        try:
            entry = pwd.getpwuid(uid)
            name, home = entry.pw_name, entry.pw_dir
        except KeyError:
            name, home = str(uid), ""
        return Identity(uid, gid, name, home)
    try:
        entry = pwd.getpwnam(spec_user)
    except KeyError:
        raise StartError(
            f"user {spec_user!r} does not exist on this node; create it, give a numeric "
            'uid (user: "1000"), or leave user: out to run as a dynamic user'
        ) from None
    ident = Identity(entry.pw_uid, entry.pw_gid, entry.pw_name, entry.pw_dir, named=True)
    return ident if entry.pw_uid else Identity(0, entry.pw_gid, "root", entry.pw_dir)


def may(st: os.stat_result, ident: Identity, want: int, groups: Iterable[int] = ()) -> bool:
    """Whether ``ident`` has the ``want`` bits (4 read, 2 write, 1 execute) on a file."""
    if ident.root:
        return True
    if st.st_uid == ident.uid:
        bits = (st.st_mode >> 6) & 7
    elif st.st_gid == ident.gid or st.st_gid in groups:
        bits = (st.st_mode >> 3) & 7
    else:
        bits = st.st_mode & 7
    return bits & want == want


def supplementary(ident: Identity) -> tuple[int, ...]:
    """The node's supplementary groups of a named user (none for the others)."""
    if not ident.named:
        return ()
    try:
        return tuple(os.getgrouplist(ident.name, ident.gid))
    except OSError:
        return ()


def closed_ancestor(
    path: str,
    ident: Identity,
    stat_fn: Callable[[str], os.stat_result],
    groups: tuple[int, ...] = (),
    below: str = "",
) -> str:
    """The ancestor of ``path`` nearest the root (or nearest ``below``, an ancestor of
    ``path`` already reachable) that ``ident`` (with ``groups``) cannot pass through (""
    when every ancestor lets it through)."""
    parts = Path(path).parts
    start = len(Path(below).parts) + 1 if below else 1
    for i in range(start, len(parts)):
        ancestor = str(Path(*parts[:i]))
        if not may(stat_fn(ancestor), ident, 1, groups):
            return ancestor
    return ""


@dataclass(frozen=True)
class Expose:
    """A directory the instance must reach at its own path."""

    path: str
    writable: bool


class View:
    """What of the node's filesystem an instance sees: the node's, except that each ancestor
    closed to its user on the way to an exposed path is covered by an empty tmpfs in which
    only the exposed paths are bound back (at their own place)."""

    def __init__(
        self,
        exposes: Iterable[Expose],
        ident: Identity,
        stat_fn: Callable[[str], os.stat_result] = os.stat,
    ) -> None:
        self.ident = ident
        self.stat = stat_fn
        self.groups = supplementary(ident)
        by_path = {os.path.normpath(e.path): e for e in exposes}
        self.exposes = sorted(by_path.values(), key=lambda e: len(Path(e.path).parts))
        covers: list[str] = []
        if not ident.root:
            paths = [e.path for e in self.exposes]

            def hides(outer: str, inner: str) -> bool:
                """Whether a cover of ``outer`` hides ``inner``: nothing exposed between."""
                return _under(inner, outer) and not any(
                    _under(x, outer) and _under(inner, x) and x != outer for x in paths
                )

            for e in self.exposes:
                # below an exposed ancestor (a workdir holding the data directory) the node's
                # tree is back in view: its closed directories need covers of their own
                outer = [x for x in paths if x != e.path and _under(e.path, x)]
                below = max(outer, key=len, default="")
                closed = closed_ancestor(e.path, ident, stat_fn, self.groups, below)
                if not closed or any(hides(c, closed) for c in covers):
                    continue
                covers = [c for c in covers if not hides(closed, c)] + [closed]
        self.covers = sorted(covers)

    def mount_ops(self) -> list[str]:
        """The shim's mount plan, as words: ``open N PATH``, ``cover DIR``, ``bind N PATH
        ro|rw``. Every exposed path is opened (fd N) before a cover can hide it; each cover
        is an empty tmpfs; covers and binds are made outer before inner, the paths bound from
        their fds."""
        if len(self.exposes) > MAX_EXPOSES:  # the shim keeps fd 9 for itself (dash: 0-9)
            raise StartError(f"an instance's view takes at most {MAX_EXPOSES} paths")
        ops: list[str] = []
        for n, e in enumerate(self.exposes, start=3):
            ops += ["open", str(n), e.path]
        # covers and binds outer before inner, whichever they are: a cover below an exposed
        # path (a 0700 data directory inside the workdir) must go on top of that path's bind,
        # or the bind would bring the closed directory back over it
        steps: list[tuple[int, int, list[str]]] = [
            (len(Path(c).parts), 0, ["cover", c]) for c in self.covers
        ]
        for n, e in enumerate(self.exposes, start=3):
            step = ["bind", str(n), e.path, "rw" if e.writable else "ro"]
            steps.append((len(Path(e.path).parts), 1, step))
        for _, _, step in sorted(steps, key=lambda s: (s[0], s[1])):
            ops += step
        return ops

    def reachable(self, path: str, want: int) -> bool:
        """Whether the instance's user can use ``path`` (``want`` bits) in this view."""
        if self.ident.root:
            return True
        path = os.path.normpath(path)
        top = ""  # the directory below which the node's permissions apply again
        if any(_under(path, c) for c in self.covers):
            inside = [e.path for e in self.exposes if _under(path, e.path)]
            if not inside:
                return False  # hidden by a cover
            top = max(inside, key=len)
        try:
            parts = Path(path).parts
            for i in range(1, len(parts)):
                ancestor = str(Path(*parts[:i]))
                if top and not _under(ancestor, top):
                    continue  # a cover's skeleton (0755) or above it: passable
                if not may(self.stat(ancestor), self.ident, 1, self.groups):
                    return False
            return may(self.stat(path), self.ident, want, self.groups)
        except OSError:
            return False

    def require(self, path: str, want: int, what: str) -> None:
        """Refuse to start (StartError naming the path and the fixes) when the instance's
        user could not use ``path``; a missing path is reported where it is used."""
        if self.ident.root or not os.path.exists(path) or self.reachable(path, want):
            return
        verb = "run" if want & 1 and not os.path.isdir(path) else "read"
        raise StartError(
            f"the instance's user ({self.ident.name}) cannot {verb} its {what} {path!r}; "
            "make it readable by others (chmod o+rX on it and o+x on its parent "
            "directories), move it under the workdir, or set user: in the spec to a user "
            "that can (user: root runs as root)"
        )


def _under(path: str, ancestor: str) -> bool:
    return path == ancestor or path.startswith(ancestor.rstrip("/") + "/")


def python_of(exe: str) -> list[str]:
    """When ``exe`` is a Python virtual environment's interpreter: that environment and the
    Python installation it was made from (``home`` in its ``pyvenv.cfg``); else nothing."""
    parent = Path(exe).parent
    cfg = parent.parent / "pyvenv.cfg"
    if parent.name != "bin" or not cfg.is_file():
        return []
    out = [str(parent.parent)]
    try:
        lines = cfg.read_text(errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        key, _, value = line.partition("=")
        home = Path(value.strip())
        if key.strip() == "home" and home.is_absolute():
            out.append(str(home.parent if home.name == "bin" else home))
    return out


def setpriv_argv(
    ident: Identity, setpriv: str = "setpriv", bind_low_ports: bool = False
) -> list[str]:
    """The command prefix that drops root for ``ident`` (empty for root). With
    ``bind_low_ports`` the command keeps one capability, ``CAP_NET_BIND_SERVICE`` (ambient),
    to listen on the port below 1024 its spec names; nothing else."""
    if ident.root:
        return []
    groups = ["--init-groups"] if ident.named else ["--clear-groups"]
    caps = ["--inh-caps=-all"]
    if bind_low_ports:
        caps = ["--inh-caps=-all,+net_bind_service", "--ambient-caps=+net_bind_service"]
    return [
        setpriv,
        f"--reuid={ident.uid}",
        f"--regid={ident.gid}",
        *groups,
        "--no-new-privs",
        *caps,
        "--",
    ]
