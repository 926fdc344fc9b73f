"""loadgen: a bounded stream of shoppers against the frontend whose rate steps up and down,
so that the shop's autoscaled services (catalog and inventory, examples/shop.yaml) follow it.

The rate alternates (``rate_at``): ``QUIET`` requests/s (3) for ``PHASE`` seconds (60), then
``BUSY`` requests/s (15) for as long, and again; ``LOADGEN_QUIET``, ``LOADGEN_BUSY`` and
``LOADGEN_PHASE`` in the environment change them. Mostly GET / (one catalog call and one
inventory call per product), every fifth request an order. Requests are paced by the clock
(request *n* is due at ``start + n / rate``); a request that is late is sent at once, never
two to catch up. Logs each phase and a line every 50 requests; exits 0 on SIGTERM. Talks only
to the frontend's loopback address.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

from shoplib import UpstreamError, call, upstream_url

FRONTEND = upstream_url("frontend", "http://127.0.0.1:18080")
QUIET = float(os.environ.get("LOADGEN_QUIET", "3"))
BUSY = float(os.environ.get("LOADGEN_BUSY", "15"))
PHASE = float(os.environ.get("LOADGEN_PHASE", "60"))
running = True


def rate_at(
    elapsed: float, quiet: float = QUIET, busy: float = BUSY, phase: float = PHASE
) -> float:
    """Requests per second ``elapsed`` seconds after the start: quiet, busy, quiet, ..."""
    return busy if int(elapsed // phase) % 2 else quiet


def stop(_signum: int, _frame: Any) -> None:
    global running
    running = False


def main() -> int:
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    ok = failed = 0
    n = 0
    start = due = time.monotonic()
    rate = 0.0
    while running:
        now = time.monotonic()
        if (new := rate_at(now - start)) != rate:
            rate = new
            kind = "busy" if rate > QUIET else "quiet"
            print(f"loadgen: {kind}: {rate:g} requests/s for {PHASE:g} s", flush=True)
        if rate <= 0 or due > now:  # a phase of 0 requests/s: idle until the next phase
            time.sleep(0.5 if rate <= 0 else min(due - now, 0.5))  # SIGTERM is seen soon
            continue
        due = max(due, now - 1 / rate) + 1 / rate  # late: at once, but never a burst
        n += 1
        try:
            if n % 5 == 0:
                call("frontend", f"{FRONTEND}/order", {"id": f"p{n % 5 + 1}", "qty": 1})
            else:
                call("frontend", f"{FRONTEND}/")
            ok += 1
        except UpstreamError as e:
            failed += 1
            print(f"loadgen: request failed: {e.reason}", flush=True)
        if n % 50 == 0:
            print(f"loadgen: {n} requests, {ok} ok, {failed} failed", flush=True)
    print(f"loadgen: stopping after {n} requests", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
