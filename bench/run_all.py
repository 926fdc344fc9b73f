"""Run every benchmark under bench/ and write bench/results/latest.json.

Each script is run with ``--json``; their objects are collected into one file with the date,
and each script's human table is printed too. A script that cannot measure (for example
tasks.py or elasticity.py without root) is reported and skipped; the exit code is non-zero
only when none ran.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "scheduler.py",
    "tasks.py",
    "sandbox.py",
    "propagation.py",
    "proxy.py",
    "elasticity.py",
]


def main() -> int:
    results = []
    for name in SCRIPTS:
        print(f"== {name}", flush=True)
        proc = subprocess.run(
            [sys.executable, str(HERE / name), "--json"],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if proc.returncode != 0:
            print(f"{name} could not measure:\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        doc = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(doc)
        for r in doc["results"]:
            print(f"  {r['case']:<50} {r['system']:<8} {r['metric']:<32} {r['value']}")
    out = HERE / "results" / "latest.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "benches": results}, indent=2))
    print(f"wrote {out}")
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
