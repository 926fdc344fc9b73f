"""Health checks of running instances: HTTP, TCP, gRPC and exec probes, and the threshold
logic.

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
            if check.type == "grpc":
                if not port:
                    return False, "no port to check"
                return await grpc_health(host, port, check.service, check.timeout)
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


# grpc.health.v1 (https://github.com/grpc/grpc/blob/master/doc/health-checking.md): the
# request and response are one-field protobuf messages, encoded here by hand.
HEALTH_METHOD = "/grpc.health.v1.Health/Check"
SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}


def encode_health_request(service: str) -> bytes:
    """``HealthCheckRequest{service}``: field 1, wire type 2 (length-delimited)."""
    raw = service.encode()
    if not raw:
        return b""
    return b"\x0a" + _varint(len(raw)) + raw


def decode_health_status(data: bytes) -> int:
    """``HealthCheckResponse.status`` (field 1, varint); 0 (UNKNOWN) when absent."""
    i = 0
    while i < len(data):
        key, i = _read_varint(data, i)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(data, i)
            if field == 1:
                return value
        elif wire == 2:
            length, i = _read_varint(data, i)
            i += length
        elif wire == 5:
            i += 4
        elif wire == 1:
            i += 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    return 0


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(data):
            raise ValueError("truncated varint")
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, i


async def grpc_health(host: str, port: int, service: str, timeout: float) -> tuple[bool, str]:
    """Ask the gRPC health protocol; healthy only when the answer is SERVING."""
    import grpc  # imported here: only agents whose workloads use gRPC checks pay for it

    async with grpc.aio.insecure_channel(f"{host}:{port}") as channel:
        check: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(HEALTH_METHOD)
        try:
            answer = await check(encode_health_request(service), timeout=timeout)
        except grpc.aio.AioRpcError as e:
            code = e.code()
            if code == grpc.StatusCode.UNIMPLEMENTED:
                return False, "the server does not implement grpc.health.v1.Health"
            return False, f"gRPC {code.name}: {e.details() or ''}".rstrip(": ")
    try:
        status = decode_health_status(answer)
    except ValueError as e:
        return False, f"malformed health answer: {e}"
    if status == 1:
        return True, ""
    what = f"service {service!r}" if service else "the server"
    return False, f"gRPC health of {what}: {SERVING_STATUS.get(status, str(status))}"
