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
  event loop also carries the agent's heartbeats, API and mesh; a MiB takes a fraction of a
  second to read (linear, but Python), and pages are read one at a time there, so that many
  large pages share one core's worth and never the loop.

A failed scrape — refused, timed out, not 200, too large, unparsable, the name missing or not
a finite number — leaves that gauge out of that instance's reading (the autoscaler treats a
missing value conservatively, docs/autoscaling.md) and is logged with its reason at most once
a minute per instance (``LOG_EVERY``); it never fails the report or the agent.
"""

from __future__ import annotations

import asyncio
import logging
import os
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
ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"
# no compression: the size bound is on what is read, and a small page gains nothing from it
ACCEPT_ENCODING = "identity"


def scrape_timeout(interval: float) -> float:
    """How long one round of scrapes may take: half the metrics interval, at most 0.5 s."""
    return max(0.01, min(MAX_TIMEOUT, interval / 2))


class ScrapeError(Exception):
    """Why a page could not be read (the message says it)."""


@dataclass
class _Said:
    at: float
    reason: str


class GaugeReader:
    """Reads instances' gauges (see the module's doc). ``read`` never raises for an
    instance's failure; ``close`` when done."""

    def __init__(self, clock: Clock = SYSTEM, max_bytes: int = MAX_BYTES) -> None:
        self.clock = clock
        self.max_bytes = max_bytes
        self._clients: dict[bool, httpx.AsyncClient] = {}  # by http2 (h2c) or not
        self._parser: ThreadPoolExecutor | None = None  # reads the pages, off the loop
        self._said: dict[str, _Said] = {}  # instance -> its last logged failure

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
            # a page being read finishes on its own (a fraction of a second): not waited for
            self._parser.shutdown(wait=False, cancel_futures=True)
            self._parser = None
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.aclose()

    async def _parse(self, text: str, names: tuple[str, ...]) -> Gauges:
        """``read_gauges`` on the reader's thread (a cancelled wait drops a page not begun)."""
        if self._parser is None:
            self._parser = ThreadPoolExecutor(1, thread_name_prefix="elastin-gauges")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._parser, read_gauges, text, names)

    async def read(
        self, pages: Mapping[str, Iterable[Page]], timeout: float
    ) -> dict[str, dict[str, float]]:
        """Per instance (allocation id → its pages), the gauges read within ``timeout``; an
        instance whose every gauge failed is left out. Failures are logged (rate-limited)."""
        jobs = [(alloc_id, p) for alloc_id, ps in pages.items() for p in ps]
        if not jobs:
            return {}
        results = await asyncio.gather(*(self._one(p, timeout) for _, p in jobs))
        out: dict[str, dict[str, float]] = {}
        problems: dict[str, list[str]] = {}
        for (alloc_id, page), (values, trouble) in zip(jobs, results, strict=True):
            if values:
                out.setdefault(alloc_id, {}).update(values)
            if trouble:
                problems.setdefault(alloc_id, []).append(f"{page.url}: {trouble}")
        for alloc_id in list(self._said):
            if alloc_id not in pages:
                del self._said[alloc_id]  # gone: a new failure is news
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

    async def _one(self, page: Page, timeout: float) -> tuple[dict[str, float], str]:
        """``(values, trouble)`` of one page: the gauges read, and why any was not."""
        text: str | None = None
        try:
            async with asyncio.timeout(timeout):
                text = await self._fetch(page)
                found = await self._parse(text, page.names)
        except TimeoutError:
            if text is None:
                return {}, f"no answer within {timeout:g}s"
            return {}, f"the page was not read within {timeout:g}s ({len(text)} characters)"
        except ScrapeError as e:
            return {}, str(e)
        trouble = "; ".join(found.problems.values())
        return found.values, trouble

    async def _fetch(self, page: Page) -> str:
        try:
            async with self._http(page.http2).stream("GET", page.url) as resp:
                if resp.status_code != 200:
                    raise ScrapeError(f"HTTP {resp.status_code}")
                length = resp.headers.get("content-length", "")
                if length.isdigit() and int(length) > self.max_bytes:
                    raise ScrapeError(f"the page is larger than {self.max_bytes} bytes")
                body = bytearray()
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise ScrapeError(f"the page is larger than {self.max_bytes} bytes")
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
