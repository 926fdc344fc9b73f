"""Health checks of running instances: HTTP, TCP and exec probes, and the threshold logic.

``HealthState`` is pure: feed it probe results, it says when the instance turns healthy or
unhealthy (``healthy_threshold`` successes in a row, ``unhealthy_threshold`` failures in a
row, failures ignored during the start ``grace``). The probes are the thin I/O around it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass

from elastin.model.workload import HealthCheck


@dataclass
class HealthState:
    check: HealthCheck
    started_at: float
    healthy: bool | None = None  # None until the first verdict
    successes: int = 0
    failures: int = 0
    last_error: str = ""

    def record(self, ok: bool, now: float, error: str = "") -> bool | None:
        """Record a probe result; return the new verdict when it changed, else None."""
        if ok:
            self.successes += 1
            self.failures = 0
            self.last_error = ""
            if self.healthy is not True and self.successes >= self.check.healthy_threshold:
                self.healthy = True
                return True
            return None
        self.last_error = error
        if now - self.started_at < self.check.grace:
            return None
        self.failures += 1
        self.successes = 0
        if self.healthy is not False and self.failures >= self.check.unhealthy_threshold:
            self.healthy = False
            return False
        return None


async def probe(
    check: HealthCheck, host: str, port: int | None, env: dict[str, str], cwd: str
) -> tuple[bool, str]:
    """Run one probe; return ``(ok, error)``."""
    try:
        async with asyncio.timeout(check.timeout):
            if check.type == "tcp":
                if not port:
                    return False, "no port to check"
                _, writer = await asyncio.open_connection(host, port)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                return True, ""
            if check.type == "http":
                if not port:
                    return False, "no port to check"
                return await _http_get(host, port, check.path)
            proc = await asyncio.create_subprocess_exec(
                *check.command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
                env={**os.environ, **env},
                cwd=cwd or None,
            )
            try:
                code = await proc.wait()
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            return code == 0, "" if code == 0 else f"check command exited with {code}"
    except TimeoutError:
        return False, f"no answer within {check.timeout:g}s"
    except OSError as e:
        return False, e.strerror or str(e)


async def _http_get(host: str, port: int, path: str) -> tuple[bool, str]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: elastin-health\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        await writer.drain()
        line = await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    parts = line.decode("latin-1").split()
    if len(parts) < 2 or not parts[1].isdigit():
        return False, "not an HTTP response"
    status = int(parts[1])
    if 200 <= status < 400:
        return True, ""
    return False, f"HTTP {status} from {path}"
