"""``SqliteStore``: the embedded, durable ``StateStore`` (SQLite in WAL mode).

On-disk schema::

    meta(name TEXT PRIMARY KEY, value)          'format' = 'elastin-state-1',
                                                'revision', 'compacted'
    kv(key TEXT PRIMARY KEY, value TEXT,        value is JSON text
       create_rev INTEGER, mod_rev INTEGER)
    log(rev INTEGER, seq INTEGER, key TEXT,     one row per change, for watch replay
        type TEXT, value TEXT, PRIMARY KEY (rev, seq))

Every transaction is one SQLite transaction (``BEGIN IMMEDIATE`` … ``COMMIT``): a process
killed at any moment leaves the state of the last committed revision, never half of one.
The file is created 0600. The store is used by one process (the server); that process's
revision counter is the file's.

Threads. SQLite's calls block (reading pages, syncing the WAL at commit, waiting for a lock
another process holds), so none of them runs on the event loop. One worker thread owns the
connection (opened there, ``check_same_thread`` on) and runs each operation whole, one at a
time, in the order they were called; the loop awaits the result::

    event loop                              worker thread (elastin-sqlite)
    ──────────                              ──────────────────────────────
    txn(): encode values, queue the job ──► BEGIN IMMEDIATE … COMMIT
                                            loop.call_soon_threadsafe(deliver)
    deliver: revision, hub.publish, ◄───────┘
             then the caller's result

Reads never hop: the loop keeps a mirror of the ``kv`` table (each value's JSON text, its
revisions, the keys in order), loaded once at open and brought forward by each committed
transaction as it is delivered — the store has one writer, this process, so the mirror is the
table at the delivered revision. ``get``, ``list`` and ``read`` answer from it on the loop,
without a lock and without an await between prefixes: a consistent read at one revision (as
the watch cache of etcd's clients and Kubernetes' API server serve reads). Writes, watch
replays and compaction go to the worker.

One thread hop per write: the job does all of the operation's SQLite work, and one loop
callback brings the mirror forward, publishes its changes and resolves the caller's future.
Callbacks reach the loop in the order the jobs ran, so watchers get changes in revision
order, before any caller sees the revision. A caller cancelled while its job is queued or
running does not undo it: the change commits and is published (as with etcd, a cancelled
request may have been applied). ``revision()`` answers on the loop from the last delivered
commit, without a hop.
``close()`` refuses new operations, lets the queued ones finish, closes the connection,
stops the thread, and then ends every watch. ``sqlite3`` errors become ``StoreError``.

A damaged file. The store checks the file when it opens it (``PRAGMA quick_check``, and a
file shorter than its header says: a truncated copy) and refuses it with a
``StoreCorruptError`` that names the file and what to do (restore a backup, ``elastin store
check``, or move it away to start empty). Damage found later (``SQLITE_CORRUPT``,
``SQLITE_NOTADB``) breaks the store for good: it is logged once, every later call raises the
same error, and ``failed()`` returns it (the server stops on it instead of failing each
request). ``check_file(path)`` runs the full ``PRAGMA integrity_check`` on a read-only
connection, beside a running server (``elastin store check``).

A full disk. ``<state file>.reserve`` is a reserve ("ballast") file of ``reserve_bytes``
made beside the state file when there is room. A write that fails for lack of space
(``SQLITE_FULL``: the kernel said ENOSPC) releases the reserve, checkpoints the WAL (so that
the retry reuses the WAL's own space), and is retried a few times with a growing pause: the
reserve's space is what lets a ``stop`` or a ``down`` commit on a full disk. A write that
still finds no room fails with a ``StoreFullError`` ("the data directory's disk is full …
free space on <filesystem>"), and nothing of it was applied. The worker pauses between the
retries (the writes queued behind would meet the same full disk); for ``FULL_FAST_FOR`` s
after a refusal, writes get one try, so a queue of them is not held up by every one's
pauses. Once the filesystem has room for the reserve again (twice its size free), it is made
again. ``stats()`` counts the writes that met a full disk, those refused, and the reserve's
size, for ``/v1/metrics``.
"""

from __future__ import annotations

import asyncio
import bisect
import builtins
import contextlib
import errno
import json
import logging
import os
import sqlite3
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

from elastin.clock import SYSTEM, Clock
from elastin.store.base import (
    JSON,
    Compare,
    KeyValue,
    StoreClosedError,
    StoreCorruptError,
    StoreError,
    StoreFullError,
    TxnResult,
    WatchEvent,
    is_deferrable,
)
from elastin.store.hub import HubStore

log = logging.getLogger("elastin.store")

FORMAT = "elastin-state-1"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY, value TEXT NOT NULL,
    create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS log (
    rev INTEGER NOT NULL, seq INTEGER NOT NULL, key TEXT NOT NULL,
    type TEXT NOT NULL, value TEXT, PRIMARY KEY (rev, seq));
"""

THREAD_NAME = "elastin-sqlite"

T = TypeVar("T")

# What a job returns: its result, and the changes it committed (empty unless it wrote).
_Done = tuple[T, Sequence[WatchEvent]]
_IN_CHUNK = 500  # keys per ``IN (...)`` (SQLite limits the variables of one statement)

RESERVE_BYTES = 1 << 20  # the reserve file: room for hundreds of stops and deletes
RESERVE_SUFFIX = ".reserve"
FULL_BACKOFF = (0.05, 0.2, 0.5, 1.0)  # pauses before the retries of a write on a full disk
RESERVE_RETRY_EVERY = 2.0  # seconds between tries to make the reserve again
FULL_FAST_FOR = 1.0  # after a refused write, seconds in which the next ones are not retried

# primary result codes (the low byte of an extended code)
_SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_IOERR, _SQLITE_NOTADB = 11, 13, 10, 26
_LOW_SPACE = 64 << 10  # an I/O error with less than this free is taken for a full disk


def _prefix_end(prefix: str) -> str:
    """The smallest string greater than every string starting with ``prefix``."""
    return prefix + "\U0010ffff"


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection, begin: str) -> Iterator[None]:
    """``begin`` … ``COMMIT``, rolled back if the body raises; the body may end it itself."""
    db.execute(begin)
    try:
        yield
        if db.in_transaction:
            db.execute("COMMIT")  # inside: a failed COMMIT rolls back too, or every later
            # BEGIN would fail with "cannot start a transaction within a transaction"
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def mount_point(path: str | os.PathLike[str]) -> str:
    """The mount point of the filesystem that holds ``path`` (what to free space on)."""
    p = os.path.realpath(path)
    while not os.path.ismount(p):
        p = os.path.dirname(p)
    return p


def free_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes an unprivileged writer may still use on the filesystem of ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _is_corrupt(e: sqlite3.Error) -> bool:
    code = getattr(e, "sqlite_errorcode", 0) & 0xFF
    return code in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or "malformed" in str(e)


def _is_full(e: sqlite3.Error, path: Path) -> bool:
    code = getattr(e, "sqlite_errorcode", 0) & 0xFF
    if code == _SQLITE_FULL or "disk is full" in str(e):
        return True
    if code == _SQLITE_IOERR:  # e.g. growing the WAL index (-shm) on a full tmpfs
        with contextlib.suppress(OSError):
            return free_bytes(path.parent) < _LOW_SPACE
    return False


def _file_problem(path: Path) -> str:
    """What is wrong when ``path`` is not a SQLite file or is shorter than its header says
    (a truncated copy), or "". The length only without a WAL: the WAL may hold pages the
    file does not have yet."""
    with open(path, "rb") as f:
        header = f.read(100)
    size = path.stat().st_size
    if not header.startswith(b"SQLite format 3\x00"[: len(header)]):
        return "no SQLite header: not an Elastin state database, or its start was overwritten"
    if len(header) < 100:
        return "" if size == 0 else f"the file is {size} bytes, shorter than a database header"
    page_size = struct.unpack(">H", header[16:18])[0]
    page_size = 65536 if page_size == 1 else page_size
    pages, change, valid_for = struct.unpack(">I", header[28:32])[0], header[24:28], header[92:96]
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        return ""
    if pages and change == valid_for and size < pages * page_size:
        return (
            f"the file is {size} bytes but its header says {pages * page_size}: "
            "it was cut short (truncated)"
        )
    return ""


def _tables(db: sqlite3.Connection) -> set[str]:
    return {str(r[0]) for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _foreign(tables: set[str]) -> str | None:
    """Why a database with ``tables`` is not an Elastin state database (None: it is one, or
    it is empty). One rule for the server's open and ``elastin store check``."""
    if not tables or {"meta", "kv", "log"} <= tables:
        return None
    return (
        "it is a SQLite database but not an Elastin state database "
        f"(its tables: {', '.join(sorted(tables))})"
    )


@dataclass
class CheckReport:
    """What ``check_file`` found: ``ok``, and the problems (SQLite's words, one a line)."""

    path: str
    ok: bool
    problems: builtins.list[str] = field(default_factory=builtins.list)
    revision: int = 0
    keys: int = 0


def check_file(path: str | os.PathLike[str], max_problems: int = 20) -> CheckReport:
    """``PRAGMA integrity_check`` of the state file ``path`` on a read-only connection (a
    server may be running on it: nothing is written). Never raises for a damaged file."""
    p = Path(path)
    if not p.exists():
        return CheckReport(str(p), False, [f"{p} does not exist"])
    try:
        problems = [t] if (t := _file_problem(p)) else []
    except OSError as e:  # a directory, no permission: said, not raised
        return CheckReport(str(p), False, [f"cannot read it: {e.strerror or e}"])
    revision = keys = 0
    # With no WAL beside it no one has it open: ``immutable`` reads without making the WAL
    # and its index (-wal, -shm) that a read-only connection would otherwise leave behind.
    wal = p.with_name(p.name + "-wal")
    flags = "mode=ro" if wal.exists() else "mode=ro&immutable=1"
    try:
        db = sqlite3.connect(f"file:{quote(str(p))}?{flags}", uri=True, isolation_level=None)
    except sqlite3.Error as e:
        return CheckReport(str(p), False, [*problems, f"cannot open it: {e}"])
    try:
        db.execute("PRAGMA busy_timeout=5000")
        rows = db.execute(f"PRAGMA integrity_check({int(max_problems)})").fetchall()
        found = [str(r[0]) for r in rows if r[0] != "ok"]
        problems += found
        if not found:
            tables = _tables(db)
            if (foreign := _foreign(tables)) is not None:
                problems.append(foreign)
            elif tables:  # no tables at all: an empty file, which a server starts afresh
                fmt = db.execute("SELECT value FROM meta WHERE name = 'format'").fetchone()
                if fmt is not None and fmt[0] != FORMAT:
                    problems.append(
                        f"it has state format {fmt[0]!r}; this Elastin reads {FORMAT!r}"
                    )
                rev = db.execute("SELECT value FROM meta WHERE name = 'revision'").fetchone()
                revision = int(rev[0]) if rev else 0
                keys = int(db.execute("SELECT count(*) FROM kv").fetchone()[0])
    except sqlite3.Error as e:
        problems.append(str(e))
    finally:
        db.close()
    return CheckReport(str(p), not problems, problems, revision, keys)


def _settle(fut: asyncio.Future[T], result: T) -> None:
    if not fut.done():  # its caller may have been cancelled
        fut.set_result(result)


def _fail(fut: asyncio.Future[T], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


class SqliteStore(HubStore):
    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        reserve_bytes: int = RESERVE_BYTES,
        full_backoff: Sequence[float] = FULL_BACKOFF,
        clock: Clock = SYSTEM,
    ) -> None:
        self._clock = clock  # when the full-disk windows and the reserve's next try are
        self.path = Path(path)
        self.reserve = self.path.with_name(self.path.name + RESERVE_SUFFIX)
        self.reserve_bytes = reserve_bytes
        self._full_backoff = tuple(full_backoff)
        # Owned by the worker thread: the connection, its revision and compaction floor, the
        # full-disk state (counters read by ``stats()`` on the loop: ints, no lock needed).
        self._db: sqlite3.Connection
        self._db_rev = 0
        self._compacted = 0
        self._broken: StoreCorruptError | None = None
        self._writes_full = 0  # writes that met a full disk (each counted once)
        self._writes_refused = 0  # jobs refused after their retries
        self._reserve_held = 0  # bytes of the reserve file now
        self._disk_full = False  # since a write met a full disk, until one succeeds
        self._next_reserve_try = 0.0
        self._reserve_error = ""  # the last reason the reserve could not be made (said once)
        self._fast_until = 0.0  # a write was just refused: do not make the queue wait again
        self._rows: builtins.list[tuple[str, str, int, int]] = []  # kv as read at open
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME)
        try:
            # The constructor is synchronous (``open_store``): it waits for the worker.
            self._executor.submit(self._open).result()
        except BaseException:
            self._executor.shutdown(wait=True)
            raise
        # Owned by the event loop: the last revision delivered to it, the mirror of ``kv`` at
        # that revision (key -> (JSON text, create_rev, mod_rev); keys in order), and close().
        self._rev = self._db_rev
        self._kv: dict[str, tuple[str, int, int]] = {r[0]: (r[1], r[2], r[3]) for r in self._rows}
        self._keys = sorted(self._kv)
        self._rows = []
        self._closing: asyncio.Future[None] | None = None
        HubStore.__init__(self)

    # event loop side ---------------------------------------------------------------------
    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure
        if self._closing is not None:
            raise StoreClosedError("the store is closed")

    def stats(self) -> dict[str, int]:
        """Counters for ``/v1/metrics``: writes that met a full disk (and were retried),
        writes refused after their retries, and the reserve file's size now."""
        return {
            "writes_disk_full": self._writes_full,
            "writes_refused": self._writes_refused,
            "reserve_bytes": self._reserve_held,
        }

    def _call(
        self,
        job: Callable[[], _Done[T]],
        applied: Callable[[T], Sequence[WatchEvent]] | None = None,
        *,
        closing: bool = False,
    ) -> asyncio.Future[T]:
        """Queue ``job`` on the worker; on the loop, ``applied(result)`` says what changed
        (and brings the mirror forward), and the changes are published before the future
        resolves."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        can_wait = is_deferrable()  # asked here: the context is the caller's task

        def run() -> None:  # on the worker thread
            try:
                result, events = job() if closing else self._run(job, can_wait)
            except StoreCorruptError as e:
                loop.call_soon_threadsafe(self._failed_now, e)
                loop.call_soon_threadsafe(_fail, fut, e)
            except sqlite3.Error as e:
                err = StoreError(f"state database {self.path}: {e}")
                err.__cause__ = e
                loop.call_soon_threadsafe(_fail, fut, err)
            except BaseException as e:
                loop.call_soon_threadsafe(_fail, fut, e)
            else:
                loop.call_soon_threadsafe(self._deliver, fut, result, events, applied)

        self._executor.submit(run)
        return fut

    def _deliver(
        self,
        fut: asyncio.Future[T],
        result: T,
        events: Sequence[WatchEvent],
        applied: Callable[[T], Sequence[WatchEvent]] | None,
    ) -> None:
        if applied is not None:
            events = applied(result)
        if events:
            self._rev = events[0].rev
            self._hub.publish(events)
        _settle(fut, result)

    async def revision(self) -> int:
        self._check()
        return self._rev

    async def get(self, key: str) -> KeyValue | None:
        self._check()
        row = self._kv.get(key)
        return None if row is None else KeyValue(key, json.loads(row[0]), row[1], row[2])

    def _mirror_range(self, prefix: str) -> builtins.list[KeyValue]:
        keys, kv = self._keys, self._kv
        i = bisect.bisect_left(keys, prefix)
        out = []
        while i < len(keys) and keys[i].startswith(prefix):
            text, create_rev, mod_rev = kv[keys[i]]
            out.append(KeyValue(keys[i], json.loads(text), create_rev, mod_rev))
            i += 1
        return out

    async def list(self, prefix: str) -> tuple[builtins.list[KeyValue], int]:
        self._check()
        return self._mirror_range(prefix), self._rev

    async def read(self, prefixes: Sequence[str]) -> tuple[dict[str, builtins.list[KeyValue]], int]:
        self._check()
        # From the mirror, with no await in between: every prefix at the same revision.
        return {p: self._mirror_range(p) for p in prefixes}, self._rev

    async def txn(
        self,
        compares: Sequence[Compare] = (),
        puts: Sequence[tuple[str, JSON]] = (),
        deletes: Sequence[str] = (),
    ) -> TxnResult:
        self._check()
        # Encoded and copied here: the caller may change its values while the job waits.
        encoded = [(k, json.dumps(v, separators=(",", ":"))) for k, v in puts]
        compares, deletes = tuple(compares), tuple(deletes)

        def applied(res: TxnResult) -> Sequence[WatchEvent]:  # on the loop
            if not res.succeeded or res.rev <= self._rev:
                return ()
            return self._mirror(res.rev, encoded, deletes)

        return await self._call(lambda: self._txn(compares, encoded, deletes), applied)

    def _mirror(
        self, rev: int, encoded: Sequence[tuple[str, str]], deletes: Sequence[str]
    ) -> builtins.list[WatchEvent]:
        """Bring the mirror to ``rev`` (the transaction's deletes, then its puts) and say
        what changed: the mirror is the table at ``rev - 1``, so a delete of a key it does
        not have changed nothing, as in the transaction."""
        events: builtins.list[WatchEvent] = []
        for key in dict.fromkeys(deletes):
            if self._kv.pop(key, None) is not None:
                self._keys.pop(bisect.bisect_left(self._keys, key))
                events.append(WatchEvent("delete", key, None, rev))
        for key, text in encoded:
            old = self._kv.get(key)
            if old is None:
                bisect.insort(self._keys, key)
            self._kv[key] = (text, old[1] if old else rev, rev)
            events.append(WatchEvent("put", key, json.loads(text), rev))
        return events

    async def _history(self, prefix: str, from_rev: int) -> builtins.list[WatchEvent]:
        self._check()
        return await self._call(lambda: (self._log_since(prefix, from_rev), ()))

    async def compact(self, keep_revisions: int) -> None:
        self._check()
        await self._call(lambda: self._compact(keep_revisions))

    async def close(self) -> None:
        if self._closing is not None:
            await asyncio.shield(self._closing)
            return
        self._closing = asyncio.get_running_loop().create_future()
        try:
            await self._call(self._close_db, closing=True)  # after every queued job
            self._executor.shutdown(wait=True)  # idle by now: returns at once
        except BaseException:
            # cancelled while jobs were queued: wait for them off the loop
            await asyncio.shield(asyncio.to_thread(self._executor.shutdown, wait=True))
            raise
        finally:
            self._hub.close()
            if not self._closing.done():
                self._closing.set_result(None)

    # worker thread side ------------------------------------------------------------------
    def _run(self, job: Callable[[], _Done[T]], can_wait: bool = False) -> _Done[T]:
        """``job``, retried on a full disk (the reserve released first); a ``can_wait``
        job (``deferrable``: background upkeep) is refused at once instead, leaving the
        reserve to the writes that must go through. Damage found here breaks the store for
        good."""
        if self._broken is not None:
            raise self._broken
        fast = can_wait or self._clock.monotonic() < self._fast_until
        backoff = () if fast else self._full_backoff
        for attempt, pause in enumerate((*backoff, None)):
            try:
                done = job()
            except sqlite3.Error as e:
                if _is_corrupt(e):
                    self._broken = StoreCorruptError(str(self.path), str(e))
                    log.critical("%s", self._broken)
                    raise self._broken from e
                if not _is_full(e, self.path):
                    raise
                if attempt == 0:
                    self._writes_full += 1
                if pause is None:
                    self._writes_refused += 1
                    err = StoreFullError(str(self.path), self._filesystem())
                    if can_wait:  # upkeep: it waits for room, quietly
                        log.debug("%s (background upkeep; it tries again later)", err)
                        raise err from e
                    self._fast_until = self._clock.monotonic() + FULL_FAST_FOR
                    log.error("%s (a write was refused after %d retries)", err, attempt)
                    raise err from e
                self._make_room(attempt)
                time.sleep(pause)  # the worker thread's own pause, not the loop's
            else:
                if self._disk_full:
                    self._disk_full, self._fast_until = False, 0.0
                    log.warning("the state database %s is writable again", self.path)
                if not self._reserve_held:
                    self._restore_reserve()
                return done
        raise AssertionError("unreachable")

    def _filesystem(self) -> str:
        try:
            return mount_point(self.path.parent)
        except OSError:
            return str(self.path.parent)

    def _make_room(self, attempt: int) -> None:
        """A write met a full disk: release the reserve, and let the retry reuse the WAL."""
        if attempt == 0:
            self._disk_full = True
            held = self._reserve_held
            self._release_reserve()
            log.warning(
                "the data directory's disk is full (%s): a write to %s failed; %s "
                "and retrying. Free space on %s",
                self._filesystem(),
                self.path,
                f"released the {held} byte reserve {self.reserve}" if held else "no reserve left",
                self._filesystem(),
            )
        with contextlib.suppress(sqlite3.Error):
            # the WAL copied in: the retry writes over the WAL's start, on space it holds
            self._db.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()

    def _release_reserve(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.reserve.unlink()
        self._reserve_held = 0
        self._next_reserve_try = self._clock.monotonic() + RESERVE_RETRY_EVERY

    def _restore_reserve(self) -> None:
        """Make the reserve file when the filesystem has room for it twice over (at most
        every ``RESERVE_RETRY_EVERY`` s): it must not be what fills the disk."""
        now = self._clock.monotonic()
        if self.reserve_bytes <= 0 or now < self._next_reserve_try:
            return
        self._next_reserve_try = now + RESERVE_RETRY_EVERY
        try:
            if self.reserve.exists() and self.reserve.stat().st_size >= self.reserve_bytes:
                self._reserve_held = self.reserve.stat().st_size
                return
            if free_bytes(self.path.parent) < 2 * self.reserve_bytes:
                return
            fd = os.open(self.reserve, os.O_CREAT | os.O_WRONLY, 0o600)
            try:
                try:  # allocates the blocks (a sparse file would reserve nothing)
                    os.posix_fallocate(fd, 0, self.reserve_bytes)
                except OSError:
                    chunk = b"\0" * (64 << 10)
                    for _ in range(0, self.reserve_bytes, len(chunk)):
                        os.write(fd, chunk)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._reserve_held = self.reserve_bytes
        except OSError as e:
            with contextlib.suppress(OSError):
                self.reserve.unlink()
            why = str(e.strerror or e)
            if why != self._reserve_error:  # said once per reason, not at every write
                self._reserve_error = why
                log.warning("cannot make the reserve file %s: %s", self.reserve, why)
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):  # it will not get better soon
                self._next_reserve_try = now + 60 * RESERVE_RETRY_EVERY

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        db: sqlite3.Connection | None = None
        try:
            if problem := _file_problem(self.path):
                raise StoreCorruptError(str(self.path), problem)
            db = sqlite3.connect(self.path, isolation_level=None)
            # before anything writes to it: a damaged file is refused, not built upon
            found = [str(r[0]) for r in db.execute("PRAGMA quick_check(5)").fetchall()]
            if found != ["ok"]:
                raise StoreCorruptError(str(self.path), "; ".join(found))
            if (foreign := _foreign(_tables(db))) is not None:  # another program's database
                raise StoreError(f"{self.path}: {foreign}; point --store at another file")
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a killed process loses nothing committed; a power cut may
            # lose the last commits (docs/architecture.md, Durability)
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(SCHEMA)
            self._db = db
            fmt = self._meta("format")
            if fmt is None:
                if db.execute("SELECT count(*) FROM kv").fetchone()[0]:
                    raise StoreError(f"{self.path} is not an Elastin state database")
                db.execute("INSERT INTO meta VALUES ('format', ?)", (FORMAT,))
            elif fmt != FORMAT:
                raise StoreError(
                    f"{self.path} has state format {fmt!r}; this Elastin reads {FORMAT!r}"
                )
            self._db_rev = int(self._meta("revision") or 0)
            self._compacted = int(self._meta("compacted") or 0)
            # what the loop's mirror starts from (the constructor takes it over)
            self._rows = db.execute("SELECT key, value, create_rev, mod_rev FROM kv").fetchall()
            self._restore_reserve()
        except BaseException as e:
            if db is not None:
                db.close()
            if isinstance(e, sqlite3.Error) and _is_corrupt(e):
                raise StoreCorruptError(str(self.path), str(e)) from None
            if isinstance(e, sqlite3.Error) and _is_full(e, self.path):
                raise StoreFullError(str(self.path), self._filesystem()) from None
            if isinstance(e, sqlite3.DatabaseError):
                raise StoreError(
                    f"{self.path} is not an Elastin state database ({e}); move it aside or "
                    "point --store at another file"
                ) from None
            raise

    def _meta(self, name: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def _txn(
        self,
        compares: Sequence[Compare],
        encoded: Sequence[tuple[str, str]],
        deletes: Sequence[str],
    ) -> _Done[TxnResult]:
        """Few statements per transaction, each run whole in C: while the event loop is busy,
        every return of the worker to Python waits for the GIL, so the worker returns
        seldom. The changes' events are made on the loop (``txn``'s ``applied``)."""
        db = self._db
        with _transaction(db, "BEGIN IMMEDIATE"):
            if compares:
                mod = self._mod_revs([c.key for c in compares])
                if any(mod.get(c.key, 0) != c.mod_rev for c in compares):
                    db.execute("ROLLBACK")
                    return TxnResult(False, self._db_rev), ()
            keys = list(dict.fromkeys(deletes))
            found = self._mod_revs(keys) if keys else {}
            dels = [k for k in keys if k in found]  # the caller's order, as the live events
            if not encoded and not dels:
                db.execute("ROLLBACK")
                return TxnResult(True, self._db_rev), ()
            rev = self._db_rev + 1
            db.executemany("DELETE FROM kv WHERE key = ?", [(k,) for k in dels])
            db.executemany(
                "INSERT INTO kv VALUES (?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                "value = excluded.value, mod_rev = excluded.mod_rev",
                [(key, text, rev, rev) for key, text in encoded],
            )
            log: builtins.list[tuple[int, int, str, str, str | None]]
            log = [(rev, seq, key, "delete", None) for seq, key in enumerate(dels)]
            log += [(rev, len(dels) + i, k, "put", t) for i, (k, t) in enumerate(encoded)]
            db.executemany("INSERT INTO log VALUES (?, ?, ?, ?, ?)", log)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('revision', ?)", (rev,))
        self._db_rev = rev
        return TxnResult(True, rev), ()

    def _mod_revs(self, keys: Sequence[str]) -> dict[str, int]:
        """``mod_rev`` of those of ``keys`` that exist, in a statement per 500 keys."""
        out: dict[str, int] = {}
        for i in range(0, len(keys), _IN_CHUNK):
            chunk = keys[i : i + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT key, mod_rev FROM kv WHERE key IN ({marks})", chunk)
            out.update(rows.fetchall())
        return out

    def _log_since(self, prefix: str, from_rev: int) -> builtins.list[WatchEvent]:
        # Checked here, not on the loop: a compaction queued before this job has run.
        self._check_from(from_rev)
        rows = self._db.execute(
            "SELECT rev, key, type, value FROM log WHERE rev >= ? AND key >= ? AND key < ? "
            "ORDER BY rev, seq",
            (from_rev, prefix, _prefix_end(prefix)),
        ).fetchall()
        return [
            WatchEvent(
                "delete" if r[2] == "delete" else "put",
                r[1],
                None if r[3] is None else json.loads(r[3]),
                r[0],
            )
            for r in rows
        ]

    def _compact(self, keep_revisions: int) -> _Done[None]:
        floor = max(0, self._db_rev - keep_revisions)
        compacted = max(self._compacted, floor + 1)
        with _transaction(self._db, "BEGIN IMMEDIATE"):
            self._db.execute("DELETE FROM log WHERE rev <= ?", (floor,))
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('compacted', ?)", (compacted,))
        self._compacted = compacted
        return None, ()

    def _close_db(self) -> _Done[None]:
        self._db.close()
        return None, ()
