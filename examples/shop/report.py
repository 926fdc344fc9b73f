"""report: a batch job. Reads the shop through the frontend, prints a summary, exits 0.

Retries (bounded: 20 attempts over about 10 s) while the frontend is not up yet; exits 1 with
a message on stderr when it never answers.
"""

from __future__ import annotations

import sys
import time

from shoplib import UpstreamError, call, upstream_url

FRONTEND = upstream_url("frontend", "http://127.0.0.1:18080")


def main() -> int:
    last = ""
    for attempt in range(20):
        try:
            page = call("frontend", f"{FRONTEND}/")
            break
        except UpstreamError as e:
            last = e.reason
            time.sleep(min(0.1 * 2**attempt, 1.0))
    else:
        print(f"report: the frontend did not answer: {last}", file=sys.stderr)
        return 1
    products = page["products"]
    value = sum(p["price"] * p["stock"] for p in products)
    units = sum(p["stock"] for p in products)
    print(
        f"report: {len(products)} products, {units} units in stock, stock value {value:.2f}",
        flush=True,
    )
    for p in products:
        print(f"  {p['id']}  {p['name']:<18} {p['stock']:>4} x {p['price']:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
