"""The agent's log files: kept within bounds (``rotate``), read from the end and followed
as they grow, without polling.

What the agent's API (``agent/api.py``) streams: an instance's ``stdout.log`` / ``stderr.log``
and the node's mesh access log. ``cap`` (``rotate``: the same, as a bool) copy-truncates a
file that passed its size limit (used by the task driver for workload logs and by the mesh
manager for the access log): the writer keeps appending to the same file, which shrinks to
nothing now and then. The limit holds on a full disk: when there is no room for the copy,
the file is truncated in place and the bytes cut are counted (``Rotation.dropped``).

Pure parts (no I/O, unit-tested):

- ``TailScan`` finds where the last *n* lines of a file begin, fed the file's blocks from
  its end (a sans-I/O scanner: it says which block to read next). It never asks for more
  than ``limit`` bytes: a longer tail starts at the first whole line within the limit.
- ``parse_events`` decodes inotify's ``struct inotify_event`` records.
- ``resume_at`` is where reading goes on after the file was looked at again (the top when
  it shrank: rotated).
- ``room_for_copy`` whether a rotated copy fits on the disk.
- ``StampFilter`` what a reader asked for of a timestamped log (the task driver's
  timestamper begins each line of an instance's output with its time, ``STAMP``): the lines
  since a time, with or without their stamps; ``unstamp`` the lines without them.

Whether an instance's output is timestamped at all (its node has the timestamper) is the
marker file ``STAMPED`` in its logs directory, written by the task driver when it starts the
instance (``mark_stamped``) and read by the API (``is_stamped``): a log without it is served
as it is, never "unstamped" (its workload wrote every byte, stamp-like ones too).

I/O (thin):

- ``tail(path, lines)`` the last lines, read backwards in blocks in a worker thread.
- ``Watch`` an inotify instance (ctypes on libc's ``inotify_init1`` /
  ``inotify_add_watch``; Linux) on the file's *directory*, its descriptor registered with
  ``loop.add_reader``: it wakes a follower when the file is written, truncated, created or
  replaced, and ends it when the directory goes away. Watching the directory is what lets a
  follower wait for a file that does not exist yet.
- ``read_log(path, lines, watch=...)`` the tail, then (with a watch) every byte appended,
  in chunks of at most ``CHUNK`` bytes, read in a worker thread; the iterator ends when the
  watch ends (``Watch.end``, the directory removed) or after ``max_seconds``; cancelling it
  closes the file and the watch.

Known limit (as ``tail -F``'s): when a file is truncated and then written past the point a
follower had read to before the follower looks at it, the truncation is not seen and the
follower goes on from its old offset.

Errors::

    LogError                    root
     └── FollowUnavailable      inotify cannot be used here (not Linux, out of instances)
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import re
import stat
import struct
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

BLOCK = 64 * 1024  # bytes read at once when scanning backwards
CHUNK = 64 * 1024  # most bytes yielded at once when streaming
TAIL_LIMIT = 16 << 20  # most bytes a tail scans (and so returns)
FOLLOW_MAX_SECONDS = 24 * 3600.0  # a follow ends after a day (the client asks again)
COPY_RESERVE = 1 << 20  # free bytes a rotated copy must leave on its disk, else none is made

# inotify(7)
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

WATCH_MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
)
DIR_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_IGNORED

# what the task driver's timestamper puts before each line: RFC 3339, UTC, microseconds, a space
STAMP = re.compile(rb"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) ")
STAMP_BYTES = 28
_STAMPS = re.compile(rb"^" + STAMP.pattern, re.MULTILINE)

# in an instance's logs directory (root's: the workload cannot write there) when the
# timestamper stamps its stdout.log and stderr.log
STAMPED = "stamped"
STAMPED_TEXT = (
    "each line of stdout.log and stderr.log begins with the time it was written "
    "(RFC 3339, UTC, microseconds, a space), put there by the task driver's timestamper\n"
)

_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name


class LogError(Exception):
    """Root of this module's errors."""


class FollowUnavailable(LogError):
    """Following needs inotify, which this system or process cannot give now."""


# --------------------------------------------------------------------------- pure


class TailScan:
    """Where the last ``lines`` lines of a ``size``-byte file begin, found backwards.

    Sans-I/O: ``want()`` says which ``(offset, length)`` to read next (``None`` when done),
    ``feed(data)`` takes exactly those bytes; then ``start`` is the answer. A last line
    without a newline counts as a line. At most ``limit`` bytes are asked for; when the
    lines are not all within them, the tail starts after the first newline found in them
    (or at the limit when there is none)."""

    def __init__(self, size: int, lines: int, limit: int = TAIL_LIMIT, block: int = BLOCK):
        if size < 0 or lines < 0 or limit < 1 or block < 1:
            raise ValueError("size and lines must be >= 0, limit and block >= 1")
        self.size = size
        self.limit = limit
        self.block = block
        self._pos = size  # lowest offset read so far
        self._needed = lines  # newlines still to find
        self._first_newline: int | None = None  # lowest newline offset seen
        self._start: int | None = size if lines == 0 or size == 0 else None

    @property
    def done(self) -> bool:
        return self._start is not None

    @property
    def start(self) -> int:
        if self._start is None:
            raise RuntimeError("the scan is not done: feed it what want() asks for")
        return self._start

    def want(self) -> tuple[int, int] | None:
        if self._start is not None:
            return None
        n = min(self.block, self._pos, self.limit - (self.size - self._pos))
        return self._pos - n, n

    def feed(self, data: bytes) -> None:
        wanted = self.want()
        if wanted is None or len(data) != wanted[1]:
            raise ValueError(f"feed exactly the block want() asked for ({wanted})")
        base = wanted[0]
        end = len(data)
        if self._pos == self.size and data.endswith(b"\n"):
            end -= 1  # the last line's own newline ends it; it does not start one
        while self._needed > 0:
            i = data.rfind(b"\n", 0, end)
            if i < 0:
                break
            self._needed -= 1
            self._first_newline = base + i
            if self._needed == 0:
                self._start = base + i + 1
                return
            end = i
        self._pos = base
        if self._pos == 0:
            self._start = 0
        elif self.size - self._pos >= self.limit:
            fn = self._first_newline
            self._start = fn + 1 if fn is not None else self._pos


def stamp_time(line: bytes) -> float | None:
    """The time (Unix seconds) a timestamped line begins with; None when it has no stamp."""
    m = STAMP.match(line)
    if m is None:
        return None
    try:
        return datetime.fromisoformat(m.group(1).decode()).timestamp()
    except ValueError:
        return None


def unstamp(data: bytes) -> bytes:
    """``data`` (whole lines) without the stamps its lines begin with."""
    return _STAMPS.sub(b"", data)


class StampFilter:
    """What a reader asked for of a timestamped log, fed the log's bytes in any chunks.

    ``since`` (Unix seconds): lines before it are left out; the times in one log only grow
    (one timestamper appends to it at a time), so once a line at or after ``since`` is seen
    every later line passes. A line without a stamp (output from before timestamps, written
    by an older agent's instance) has no time: before that point it is left out. Without
    ``timestamps`` each line's stamp is cut off. ``feed`` answers what can be said now (whole
    lines; a partial line waits for its end); ``end`` the rest."""

    def __init__(self, timestamps: bool = False, since: float | None = None) -> None:
        self.timestamps = timestamps
        self.since = since
        self._passed = since is None
        self._rest = b""

    def feed(self, data: bytes) -> bytes:
        data = self._rest + data
        cut = data.rfind(b"\n") + 1
        self._rest = data[cut:]
        return self._lines(data[:cut])

    def end(self) -> bytes:
        rest, self._rest = self._rest, b""
        return self._lines(rest)

    def _lines(self, data: bytes) -> bytes:
        if not data:
            return b""
        if not self._passed:
            at = 0
            while at < len(data):
                nl = data.find(b"\n", at)
                nl = len(data) if nl < 0 else nl + 1
                t = stamp_time(data[at:nl])
                if t is not None and self.since is not None and t >= self.since:
                    self._passed = True
                    break
                at = nl
            data = data[at:]
        return data if self.timestamps else unstamp(data)


@dataclass(frozen=True)
class InotifyEvent:
    wd: int
    mask: int
    cookie: int
    name: str


def parse_events(buf: bytes) -> list[InotifyEvent]:
    """The events in what one read(2) of an inotify descriptor returned."""
    out: list[InotifyEvent] = []
    i = 0
    while i + _EVENT.size <= len(buf):
        wd, mask, cookie, length = _EVENT.unpack_from(buf, i)
        i += _EVENT.size
        raw = buf[i : i + length]
        i += length
        out.append(InotifyEvent(wd, mask, cookie, os.fsdecode(raw.rstrip(b"\0"))))
    return out


def resume_at(pos: int, size: int) -> int:
    """Where to go on reading a file now ``size`` long, having read to ``pos``: the top when
    it shrank (copy-truncate rotation), else where we were."""
    return 0 if size < pos else pos


# --------------------------------------------------------------------------- I/O


def mark_stamped(logs: Path, stamped: bool) -> None:
    """Say in the logs directory ``logs`` whether the instance's output is timestamped (the
    ``STAMPED`` marker, made or removed)."""
    marker = logs / STAMPED
    if not stamped:
        marker.unlink(missing_ok=True)
        return
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(marker, flags, 0o644)
    try:
        os.write(fd, STAMPED_TEXT.encode())
    finally:
        os.close(fd)


def is_stamped(logs: Path) -> bool:
    """Whether the instance whose logs directory is ``logs`` has timestamped output."""
    return os.path.isfile(logs / STAMPED)


def _scan_fd(fd: int, lines: int, limit: int) -> tuple[int, int]:
    """``(start, size)``: where the file's last ``lines`` lines begin and its size now."""
    size = os.fstat(fd).st_size
    scan = TailScan(size, lines, limit)
    while (want := scan.want()) is not None:
        data = os.pread(fd, want[1], want[0])
        if len(data) != want[1]:  # shrank while we read: rotated; all of it is the tail
            return 0, os.fstat(fd).st_size
        scan.feed(data)
    return scan.start, size


def _read_tail(path: Path, lines: int, limit: int) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return b""
    try:
        start, size = _scan_fd(fd, lines, limit)
        return os.pread(fd, size - start, start)
    finally:
        os.close(fd)


async def tail(path: Path, lines: int, *, limit: int = TAIL_LIMIT) -> bytes:
    """The last ``lines`` lines of ``path`` (``b""`` when it does not exist), reading only
    the end of the file, backwards, at most ``limit`` bytes, in a worker thread."""
    return await asyncio.to_thread(_read_tail, path, lines, limit)


class _Libc:
    def __init__(self) -> None:
        if not sys.platform.startswith("linux"):
            raise FollowUnavailable(f"following a log needs inotify (Linux), not {sys.platform}")
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            self.init1 = libc.inotify_init1
            self.add_watch = libc.inotify_add_watch
        except AttributeError:
            raise FollowUnavailable("this C library has no inotify") from None
        self.init1.argtypes = [ctypes.c_int]
        self.init1.restype = ctypes.c_int
        self.add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.add_watch.restype = ctypes.c_int


_libc: _Libc | None = None


def _inotify() -> _Libc:
    global _libc
    if _libc is None:
        _libc = _Libc()
    return _libc


class Watch:
    """Wakes when the file ``path`` changes, through an inotify watch on its directory.

    Made in a running event loop (its descriptor is read by ``loop.add_reader``); the
    directory must exist (``FileNotFoundError`` otherwise). ``changed`` is set on each change
    to the file (and on a queue overflow), ``ended`` once the directory is gone or ``end()``
    was called. ``close()`` releases the descriptor; ``read_log`` does it for its watch."""

    def __init__(self, path: Path) -> None:
        libc = _inotify()
        self.name = path.name
        self.changed = asyncio.Event()
        self.ended = False
        self._loop = asyncio.get_running_loop()
        fd = libc.init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise FollowUnavailable(
                f"cannot follow {path}: inotify_init1: {os.strerror(e)}"
                + (
                    " (raise fs.inotify.max_user_instances)"
                    if e in (errno.EMFILE, errno.ENFILE)
                    else ""
                )
            )
        self._fd = fd
        try:
            if libc.add_watch(fd, os.fsencode(path.parent), WATCH_MASK) < 0:
                e = ctypes.get_errno()
                if e in (errno.ENOENT, errno.ENOTDIR):
                    raise FileNotFoundError(e, os.strerror(e), str(path.parent))
                raise FollowUnavailable(
                    f"cannot watch {path.parent}: inotify_add_watch: {os.strerror(e)}"
                )
            self._loop.add_reader(fd, self._readable)
        except BaseException:
            os.close(fd)
            raise

    def _readable(self) -> None:
        while True:
            try:
                buf = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                return
            except OSError:
                self.end()
                return
            if not buf:
                return
            for ev in parse_events(buf):
                if ev.mask & DIR_GONE:
                    self.end()
                elif ev.mask & IN_Q_OVERFLOW or ev.name == self.name:
                    self.changed.set()

    def end(self) -> None:
        """Let the follower finish: it reads what is there and stops."""
        self.ended = True
        self.changed.set()

    def close(self) -> None:
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1


def _look(fd: int | None, path: Path) -> str:
    """What became of the file open as ``fd`` (``None``: none was open) at ``path``:
    ``"same"``, ``"other"`` (replaced, or created since), ``"missing"`` (none there now), or
    ``"gone"`` (its directory was removed: an open file would keep the directory's
    ``IN_DELETE_SELF`` from coming until it is closed)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "missing" if os.path.isdir(path.parent) else "gone"
    if fd is None:
        return "other"
    me = os.fstat(fd)
    return "same" if (st.st_dev, st.st_ino) == (me.st_dev, me.st_ino) else "other"


def _open(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None


async def read_log(
    path: Path,
    lines: int | None,
    *,
    watch: Watch | None = None,
    max_seconds: float = FOLLOW_MAX_SECONDS,
    on_close: Callable[[], None] | None = None,
) -> AsyncIterator[bytes]:
    """The last ``lines`` lines of ``path`` (all of it with ``None``), then, given a
    ``watch`` on it, what is appended as it is written (woken by inotify, never polling),
    starting over from the top of the file when it is truncated or replaced. Yields chunks
    of at most ``CHUNK`` bytes. The watch is closed (and ``on_close`` called) at the end."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_seconds
    fd: int | None = None
    try:
        fd = await asyncio.to_thread(_open, path)
        pos = 0
        if fd is not None and lines is not None:
            pos, _ = await asyncio.to_thread(_scan_fd, fd, lines, TAIL_LIMIT)
        first, gone = True, False
        while True:
            if watch is not None:
                watch.changed.clear()  # before looking: a change from now on wakes us
            if not first:
                seen = await asyncio.to_thread(_look, fd, path)
                gone = seen == "gone"
                if seen == "other":  # replaced (rename rotation) or created: the new one
                    if fd is not None:
                        os.close(fd)
                        fd = None
                    fd, pos = await asyncio.to_thread(_open, path), 0
            first = False
            if fd is not None:
                size = os.fstat(fd).st_size
                pos = resume_at(pos, size)
                while pos < size:
                    data = await asyncio.to_thread(os.pread, fd, min(CHUNK, size - pos), pos)
                    if not data:
                        break  # shrank while we read: looked at again below
                    pos += len(data)
                    yield data
            if watch is None or watch.ended or gone:
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                async with asyncio.timeout(remaining):
                    await watch.changed.wait()
            except TimeoutError:
                return
    finally:
        if fd is not None:
            os.close(fd)
        if watch is not None:
            watch.close()
        if on_close is not None:
            on_close()


@dataclass(frozen=True)
class Rotation:
    """What ``cap`` did to one log file."""

    path: Path
    rotated: bool = False  # cut to zero with its content kept as ``<name>.1`` (or keep=0)
    dropped: int = 0  # bytes cut away without a copy: there was no room for one
    reason: str = ""  # why no copy was kept (when ``dropped``)

    @property
    def changed(self) -> bool:
        return self.rotated or self.dropped > 0


def copy_private(fd: int, dest: Path) -> None:
    """Copy the open file ``fd`` to ``dest`` with the source's owner and mode (a log of an
    instance is root's and readable by its group only: its copies too), never following a
    link at ``dest``."""
    st = os.fstat(fd)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    out = os.open(dest, flags, 0o600)
    try:
        os.fchown(out, st.st_uid, st.st_gid)
        os.fchmod(out, stat.S_IMODE(st.st_mode))
        offset = 0
        while offset < st.st_size:
            sent = os.sendfile(out, fd, offset, st.st_size - offset)
            if sent == 0:
                break
            offset += sent
    finally:
        os.close(out)


def room_for_copy(size: int, free: int, reserve: int = COPY_RESERVE) -> bool:
    """Whether a ``size``-byte copy fits in ``free`` bytes and still leaves ``reserve``."""
    return free - size >= reserve


def _shift(path: Path, keep: int) -> None:
    for i in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{i + 1}"))


def _replaced_bytes(path: Path, keep: int) -> int:
    """The size of the oldest copy a rotation overwrites (``.<keep>``, replaced by the one
    before it; with ``keep`` 1, ``.1`` is overwritten by the new copy); 0 when none is."""
    oldest = path.with_name(f"{path.name}.{keep}")
    before = path.with_name(f"{path.name}.{keep - 1}")
    try:
        if keep == 1 or before.exists():
            return os.lstat(oldest).st_size
    except OSError:
        pass
    return 0


def cap(path: Path, max_bytes: int, keep: int, *, reserve: int = COPY_RESERVE) -> Rotation:
    """Keep ``path`` within ``max_bytes``: when it is larger, copy it to ``<name>.1`` (older
    copies shift up to ``<name>.<keep>``) and truncate it in place, the writer going on at
    the new end of the same file.

    The cap holds with no free space at all: when the disk has no room for the copy (it
    must leave ``reserve`` bytes free) or the copy fails (ENOSPC, EIO), the partial copy is
    removed and the file is truncated in place anyway; what was cut is ``dropped`` (and
    ``reason`` says why). Truncating needs no space, so a full disk gets room back."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return Rotation(path)
    try:
        size = os.fstat(fd).st_size
        if size <= max_bytes:
            return Rotation(path)
        if keep <= 0:
            os.ftruncate(fd, 0)
            return Rotation(path, rotated=True)
        vfs = os.fstatvfs(fd)
        free = vfs.f_bavail * vfs.f_frsize
        free += _replaced_bytes(path, keep)  # the room of the copy that the shift overwrites
        if room_for_copy(size, free, reserve):
            copy = path.with_name(f"{path.name}.1")
            try:
                _shift(path, keep)
            except OSError as e:
                reason = f"renaming its older copies failed: {e.strerror or e}"
            else:
                try:
                    copy_private(fd, copy)
                    os.ftruncate(fd, 0)
                    return Rotation(path, rotated=True)
                except OSError as e:
                    with contextlib.suppress(OSError):
                        copy.unlink()  # the partial copy (the previous one is .2 now)
                    reason = f"copying it to {copy.name} failed: {e.strerror or e}"
        else:
            reason = (
                f"no room on its disk for a copy ({size} bytes needed, {free} free, "
                f"{reserve} kept in reserve)"
            )
        dropped = os.fstat(fd).st_size
        os.ftruncate(fd, 0)
        return Rotation(path, dropped=dropped, reason=reason)
    finally:
        os.close(fd)


def rotate(path: Path, max_bytes: int, keep: int) -> bool:
    """``cap`` for callers that only ask whether the file was cut: True when it was."""
    return cap(path, max_bytes, keep).changed
