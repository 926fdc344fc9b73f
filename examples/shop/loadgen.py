"""loadgen: a gentle, bounded stream of shoppers (5 requests/s) against the frontend.

Mostly GET /, every fifth request an order. Logs a line every 10 requests; exits 0 on
SIGTERM. Talks only to the frontend's loopback address.
"""

from __future__ import annotations

import signal
import sys
import time
from typing import Any

from shoplib import UpstreamError, call, upstream_url

FRONTEND = upstream_url("frontend", "http://127.0.0.1:18080")
RATE = 5.0
running = True


def stop(_signum: int, _frame: Any) -> None:
    global running
    running = False


def main() -> int:
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    ok = failed = 0
    n = 0
    while running:
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
        if n % 10 == 0:
            print(f"loadgen: {n} requests, {ok} ok, {failed} failed", flush=True)
        time.sleep(1 / RATE)
    print(f"loadgen: stopping after {n} requests", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
