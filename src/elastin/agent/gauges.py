"""Scraping the application gauges of a node's ready replicas (the metrics loop's I/O).

A service whose ``autoscale.metrics`` names an application metric (``{metric: queue_depth,
target: 10, port: metrics, path: /metrics}``) serves it in Prometheus' text format on one of
its HTTP ports. Every metrics interval the agent's metrics loop (``Agent.report_metrics``)
asks ``GaugeReader.read`` for the gauges of each running, ready instance of such a service:

- ``GET http://127.0.0.1:<the instance's port>/<path>``, the address and port the health
  checker probes (``AllocRunner._health_loop``): the port number is the allocation's own;
  HTTP/1.1 on an ``http`` port, HTTP/2 without TLS with prior knowledge (h2c, as the mesh
  speaks to it) on an ``http2`` one;
- all instances concurrently, each bounded by ``timeout`` (``min(0.5 s, interval / 2)``): a
  slow endpoint never holds the report longer; at most ``MAX_BYTES`` (1 MiB) of body; one
  ``GET`` per distinct port and path however many gauges it serves; redirects are not
  followed, no proxy from the environment is used;
- the page is read by ``agent/promtext.py`` (several label sets of a name are summed) on the
  reader's own thread, within the same ``timeout``: the page is the application's, and the
  event loop also carries the agent's heartbeats, API and mesh; a MiB of wanted lines takes
  most of a second to read (linear, but Python), and pages are read one at a time there, so
  that many large pages share one core's worth and never the loop. At the timeout the read
  is stopped, not only given up on: the scrape sets its stop flag, which the parse asks every
  ``promtext.CHECK_EVERY`` lines (a thread cannot be killed; a read left running would go on
  holding the GIL the loop needs, and the thread the next pages wait for);
- a page that was not read in time, or that is too large, is left alone for ``BACKOFF``
  (30 s): that instance's page is not asked for meanwhile, its gauges missing values, and
  the log says so with the failure. Without it, one such page would cost up to ``timeout``
  of a core every interval (half of one at a 1 s interval); with it, that once per
  ``BACKOFF``. Not read in time means its own read took at least half the ``timeout``: a
  page that waited for the thread behind another one is not blamed (it is read again at the
  next interval).

A failed scrape — refused, timed out, not 200, too large, unparsable, the name missing or not
a finite number — leaves that gauge out of that instance's reading (the autoscaler treats a
missing value conservatively, docs/autoscaling.md) and is logged with its reason at most once
a minute per instance (``LOG_EVERY``); it never fails the report or the agent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from elastin.agent.promtext import Gauges
from elastin.agent.promtext import read as read_gauges
from elastin.agent.sampling import Page
from elastin.clock import SYSTEM, Clock

log = logging.getLogger("elastin.agent.gauges")

MAX_BYTES = 1 << 20  # a larger page is not read
MAX_TIMEOUT = 0.5  # seconds a scrape may take at most (less with a short interval)
LOG_EVERY = 60.0  # seconds between two logged failures of one instance
BACKOFF = 30.0  # seconds a page not read in time, or too large, is not asked for again
ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"
# no compression: the size bound is on what is read, and a small page gains nothing from it
ACCEPT_ENCODING = "identity"


def scrape_timeout(interval: float) -> float:
    """How long one round of scrapes may take: half the metrics interval, at most 0.5 s."""
    return max(0.01, min(MAX_TIMEOUT, interval / 2))


class ScrapeError(Exception):
    """Why a page could not be read (the message says it)."""


class TooLarge(ScrapeError):
    """The page is larger than the reader reads (it is left alone for ``BACKOFF``)."""


@dataclass
class _Said:
    at: float
    reason: str


@dataclass
class _Parse:
    """One page's read on the reader's thread: when it began (None: not yet), and the flag
    that stops it (set once nothing waits for it)."""

    stop: threading.Event
    began: float | None = None


class GaugeReader:
    """Reads instances' gauges (see the module's doc). ``read`` never raises for an
    instance's failure; ``close`` when done."""

    def __init__(self, clock: Clock = SYSTEM, max_bytes: int = MAX_BYTES) -> None:
        self.clock = clock
        self.max_bytes = max_bytes
        self._clients: dict[bool, httpx.AsyncClient] = {}  # by http2 (h2c) or not
        self._parser: ThreadPoolExecutor | None = None  # reads the pages, off the loop
        self._said: dict[str, _Said] = {}  # instance -> its last logged failure
        # (instance, page's url) -> until when it is left alone (``BACKOFF``), monotonic
        self._resting: dict[tuple[str, str], float] = {}

    def _http(self, http2: bool) -> httpx.AsyncClient:
        """The client for HTTP/1.1 ports, or for ``http2`` ones: HTTP/2 without TLS with
        prior knowledge (h2c, as the mesh speaks to them)."""
        client = self._clients.get(http2)
        if client is None:
            # verify=False: no TLS is spoken here, and building a default TLS context costs
            # ~20 ms of cpu (as the health checker)
            client = self._clients[http2] = httpx.AsyncClient(
                http1=not http2,
                http2=http2,
                timeout=None,  # asyncio.timeout bounds each scrape
                trust_env=False,
                verify=False,
                follow_redirects=False,
                headers={
                    "User-Agent": "elastin-gauges",
                    "Accept": ACCEPT,
                    "Accept-Encoding": ACCEPT_ENCODING,
                },
            )
        return client

    async def close(self) -> None:
        if self._parser is not None:
            # a page being read stops at its next check (its scrape, cancelled or over, set
            # its stop flag): not waited for
            self._parser.shutdown(wait=False, cancel_futures=True)
            self._parser = None
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.aclose()

    async def _parse(self, text: str, names: tuple[str, ...], parse: _Parse) -> Gauges:
        """``read_gauges`` on the reader's thread: a cancelled wait drops a page not begun,
        and ``parse.stop`` (set by the caller once it no longer waits) stops one being read;
        ``parse.began`` says when it began."""
        if self._parser is None:
            self._parser = ThreadPoolExecutor(1, thread_name_prefix="elastin-gauges")

        def job() -> Gauges:
            parse.began = self.clock.monotonic()
            return read_gauges(text, names, stop=parse.stop.is_set)

        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._parser, job)

    async def read(
        self, pages: Mapping[str, Iterable[Page]], timeout: float
    ) -> dict[str, dict[str, float]]:
        """Per instance (allocation id → its pages), the gauges read within ``timeout``; an
        instance whose every gauge failed is left out. Failures are logged (rate-limited)."""
        now = self.clock.monotonic()
        for alloc_id in list(self._said):
            if alloc_id not in pages:
                del self._said[alloc_id]  # gone: a new failure is news
        for key, until in list(self._resting.items()):
            if key[0] not in pages or now >= until:
                del self._resting[key]  # gone, or rested: read again
        jobs = [
            (alloc_id, p)
            for alloc_id, ps in pages.items()
            for p in ps
            if (alloc_id, p.url) not in self._resting  # left alone: its gauges missing
        ]
        if not jobs:
            return {}
        results = await asyncio.gather(*(self._one(p, timeout) for _, p in jobs))
        out: dict[str, dict[str, float]] = {}
        problems: dict[str, list[str]] = {}
        for (alloc_id, page), (values, trouble, rest) in zip(jobs, results, strict=True):
            if values:
                out.setdefault(alloc_id, {}).update(values)
            if rest:
                self._resting[(alloc_id, page.url)] = now + BACKOFF
                trouble += f"; not asked for again for {BACKOFF:g}s (its gauges missing)"
            if trouble:
                problems.setdefault(alloc_id, []).append(f"{page.url}: {trouble}")
        for alloc_id, reasons in problems.items():
            self._tell(alloc_id, "; ".join(reasons))
        return out

    def _tell(self, alloc_id: str, reason: str) -> None:
        """Log ``reason`` for ``alloc_id`` at most once every ``LOG_EVERY`` seconds."""
        now = self.clock.monotonic()
        said = self._said.get(alloc_id)
        if said is not None and now - said.at < LOG_EVERY:
            return
        self._said[alloc_id] = _Said(now, reason)
        log.warning(
            "instance %s: application gauges left out of its metrics (said at most once a "
            "minute): %s",
            alloc_id,
            reason,
        )

    async def _one(self, page: Page, timeout: float) -> tuple[dict[str, float], str, bool]:
        """``(values, trouble, rest)`` of one page: the gauges read, why any was not, and
        whether the page is to be left alone for ``BACKOFF`` (not read in time, too
        large)."""
        text: str | None = None
        parse = _Parse(threading.Event())
        try:
            async with asyncio.timeout(timeout):
                text = await self._fetch(page)
                found = await self._parse(text, page.names, parse)
        except TimeoutError:
            if text is None:
                return {}, f"no answer within {timeout:g}s", False
            why = f"the page was not read within {timeout:g}s ({len(text)} characters)"
            began = parse.began
            if began is None or self.clock.monotonic() - began < timeout / 2:
                # its turn came late: other pages held the reader's thread, not this one
                return {}, f"{why}: the reader was busy with other pages", False
            return {}, why, True
        except TooLarge as e:
            return {}, str(e), True
        except ScrapeError as e:
            return {}, str(e), False
        finally:
            parse.stop.set()  # (a stopped parse raises into a wait already over: unseen)
        trouble = "; ".join(found.problems.values())
        return found.values, trouble, False

    async def _fetch(self, page: Page) -> str:
        try:
            async with self._http(page.http2).stream("GET", page.url) as resp:
                if resp.status_code != 200:
                    raise ScrapeError(f"HTTP {resp.status_code}")
                length = resp.headers.get("content-length", "")
                if length.isdigit() and int(length) > self.max_bytes:
                    raise TooLarge(f"the page is larger than {self.max_bytes} bytes")
                body = bytearray()
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise TooLarge(f"the page is larger than {self.max_bytes} bytes")
        except httpx.TimeoutException as e:
            raise TimeoutError from e
        except (httpx.RemoteProtocolError, httpx.DecodingError):
            if page.http2:
                raise ScrapeError("not an HTTP/2 response (the port is http2: h2c)") from None
            raise ScrapeError("not an HTTP response") from None
        except httpx.TransportError as e:
            raise ScrapeError(_reason(e)) from None
        except ImportError:  # httpx's http2 needs h2 (pyproject: httpx[http2])
            raise ScrapeError(
                "the port is http2, and reading it needs the Python package h2 beside the "
                "agent: pip install 'httpx[http2]' in its environment"
            ) from None
        return body.decode("utf-8", errors="replace")


def _reason(e: Exception) -> str:
    """What went wrong under an httpx error: the socket's error when there is one."""
    cause: BaseException | None = e
    for _ in range(10):  # a chain of causes is short (and must not loop)
        if cause is None:
            break
        if isinstance(cause, OSError) and (cause.errno or cause.strerror):
            return os.strerror(cause.errno) if cause.errno else str(cause.strerror)
        cause = cause.__cause__ or cause.__context__
    return str(e) or type(e).__name__
