"""The pure parts of the instance's sandbox (``agent/drivers/sandbox.py``): dynamic uids, the
user a spec names, the mount plan of the instance's view and what its user can reach in it,
against a made-up file tree (no mounts, no users)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

import pytest

from elastin.agent.drivers.base import StartError
from elastin.agent.drivers.sandbox import (
    UID_BASE,
    UID_COUNT,
    Expose,
    Identity,
    UidPool,
    View,
    resolve_user,
    setpriv_argv,
)

DYN = Identity(UID_BASE + 5, UID_BASE + 5, f"dynamic:{UID_BASE + 5}", "", dynamic=True)

# path -> (mode, uid): a checkout under /root, a 0700 data directory
TREE = {
    "/": (0o755, 0),
    "/root": (0o700, 0),
    "/root/proj": (0o755, 0),
    "/root/proj/svc": (0o755, 0),
    "/root/proj/svc/app.py": (0o644, 0),
    "/root/proj/.venv": (0o755, 0),
    "/root/secret": (0o755, 0),
    "/var": (0o755, 0),
    "/var/lib": (0o755, 0),
    "/var/lib/elastin": (0o700, 0),
    "/var/lib/elastin/token": (0o600, 0),
    "/var/lib/elastin/allocs": (0o700, 0),
    "/var/lib/elastin/allocs/a": (0o750, 0),
    "/etc": (0o755, 0),
    "/etc/hostname": (0o644, 0),
    "/etc/shadow": (0o640, 0),
}
FILES = {"/root/proj/svc/app.py", "/var/lib/elastin/token", "/etc/hostname", "/etc/shadow"}


def fake_stat(path: str) -> os.stat_result:
    try:
        mode, uid = TREE[path]
    except KeyError:
        raise FileNotFoundError(path) from None
    kind = stat.S_IFREG if path in FILES else stat.S_IFDIR
    return os.stat_result((kind | mode, 0, 0, 1, uid, 0, 0, 0, 0, 0))


def view(ident: Identity = DYN) -> View:
    exposes = [
        Expose("/var/lib/elastin/allocs/a", True),
        Expose("/root/proj/svc", False),
        Expose("/root/proj/.venv", False),
    ]
    return View(exposes, ident, fake_stat)


def test_closed_parents_are_covered_once_and_the_paths_bound_back_outer_first() -> None:
    v = view()
    assert v.covers == ["/root", "/var/lib/elastin"]
    ops = v.mount_ops()
    # every path is opened before any cover can hide it, then bound from its descriptor
    first_cover = ops.index("cover")
    assert ops[:first_cover] == [
        "open", "3", "/root/proj/svc",
        "open", "4", "/root/proj/.venv",
        "open", "5", "/var/lib/elastin/allocs/a",
    ]  # fmt: skip
    assert ops[first_cover:] == [
        "cover", "/root",
        "cover", "/var/lib/elastin",
        "bind", "3", "/root/proj/svc", "ro",
        "bind", "4", "/root/proj/.venv", "ro",
        "bind", "5", "/var/lib/elastin/allocs/a", "rw",
    ]  # fmt: skip


def test_what_the_instance_reaches_in_its_view() -> None:
    v = view()
    assert v.reachable("/root/proj/svc/app.py", 4)  # under a bound path: the node's modes
    assert v.reachable("/etc/hostname", 4)  # outside every cover: the node's modes
    assert not v.reachable("/etc/shadow", 4)
    assert not v.reachable("/root/secret", 1)  # hidden by the cover of /root
    assert not v.reachable("/var/lib/elastin/token", 4)  # the data directory is covered
    assert not v.reachable("/nowhere", 4)


def test_root_sees_the_node_as_it_is() -> None:
    root = Identity(0, 0, "root", "/root")
    v = view(root)
    assert v.covers == [] and v.reachable("/var/lib/elastin/token", 4)
    assert setpriv_argv(root) == []


def test_a_path_the_user_cannot_read_refuses_the_start_with_the_fix() -> None:
    v = View([], DYN, fake_stat)  # require() asks the real file system whether it exists
    with pytest.raises(StartError, match=r"cannot read its argument '/root'.*user:") as e:
        v.require("/root", 4, "argument")
    assert "chmod" in str(e.value)


def test_dynamic_uids_are_per_instance_and_stable_for_an_id() -> None:
    pool = UidPool()
    a = pool.take("alloc-a")
    pool.release(a)
    assert pool.take("alloc-a") == a  # a restart gets the same uid back while it is free
    b = pool.take("alloc-b")
    assert a != b and UID_BASE <= b < UID_BASE + UID_COUNT
    small = UidPool(base=100, count=2)
    small.take("x")
    small.take("x")  # the same id twice: the next free one
    with pytest.raises(StartError, match="all 2 dynamic users"):
        small.take("y")
    small.claim(101)  # a recovered instance's uid (already taken here)
    small.release(100)
    assert small.take("y") == 100


def test_the_user_a_spec_names() -> None:
    pool = UidPool()
    assert resolve_user("", pool, "a").dynamic
    assert resolve_user("root", pool, "a").root and resolve_user("0", pool, "a").root
    nobody = resolve_user("nobody", pool, "a")
    assert (nobody.uid, nobody.named) == (65534, True)
    assert setpriv_argv(nobody)[3] == "--init-groups"
    odd = resolve_user("4242:4343", pool, "a")
    assert (odd.uid, odd.gid, odd.named) == (4242, 4343, False)
    with pytest.raises(StartError, match="'no-such-user' does not exist"):
        resolve_user("no-such-user", pool, "a")


def test_only_a_low_port_keeps_a_capability() -> None:
    assert "--inh-caps=-all" in setpriv_argv(DYN)
    assert not [a for a in setpriv_argv(DYN) if "+net_bind_service" in a]
    kept = setpriv_argv(DYN, bind_low_ports=True)
    assert "--ambient-caps=+net_bind_service" in kept and "--no-new-privs" in kept


def dirs_stat(tree: dict[str, tuple[int, int]]) -> Callable[[str], os.stat_result]:
    """A stat over a tree of directories: path -> (mode, uid)."""

    def st(path: str) -> os.stat_result:
        try:
            mode, uid = tree[path]
        except KeyError:
            raise FileNotFoundError(path) from None
        return os.stat_result((stat.S_IFDIR | mode, 0, 0, 1, uid, 0, 0, 0, 0, 0))

    return st


def test_a_closed_data_directory_inside_the_workdir_is_covered_on_top_of_its_bind() -> None:
    # the default workdir is the spec's directory, and the data directory may sit inside it:
    # the cover must come after the workdir's bind, or the bind brings the 0700 directory
    # back and the instance cannot reach its own allocation directory (its HOME)
    tree = {
        "/": (0o755, 0),
        "/srv": (0o755, 0),
        "/srv/proj": (0o755, 0),
        "/srv/proj/data": (0o700, 0),
        "/srv/proj/data/allocs": (0o700, 0),
        "/srv/proj/data/allocs/a": (0o750, 0),
        "/srv/proj/data/allocs/a/local": (0o700, DYN.uid),
    }

    st = dirs_stat(tree)

    v = View([Expose("/srv/proj/data/allocs/a", True), Expose("/srv/proj", False)], DYN, st)
    ops = v.mount_ops()
    steps = ops[ops.index("bind") :]
    assert steps == [
        "bind", "3", "/srv/proj", "ro",
        "cover", "/srv/proj/data",
        "bind", "4", "/srv/proj/data/allocs/a", "rw",
    ]  # fmt: skip


def test_a_closed_directory_under_a_bound_workdir_gets_its_own_cover() -> None:
    # pytest's tmp: /t is closed (covered), the workdir below it is bound back, and the data
    # directory inside the workdir is closed again: it needs a cover of its own
    tree = {
        "/": (0o755, 0),
        "/t": (0o700, 0),
        "/t/w": (0o755, 0),
        "/t/w/data": (0o700, 0),
        "/t/w/data/allocs": (0o700, 0),
        "/t/w/data/allocs/a": (0o750, 0),
    }

    st = dirs_stat(tree)

    v = View([Expose("/t/w/data/allocs/a", True), Expose("/t/w", False)], DYN, st)
    assert v.covers == ["/t", "/t/w/data"]
    ops = v.mount_ops()
    assert ops[ops.index("cover") :] == [
        "cover", "/t",
        "bind", "3", "/t/w", "ro",
        "cover", "/t/w/data",
        "bind", "4", "/t/w/data/allocs/a", "rw",
    ]  # fmt: skip
    assert not v.reachable("/t/w/data/token", 4)
