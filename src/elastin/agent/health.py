"""Health checks of running instances: HTTP, TCP, gRPC and exec probes, and the threshold
logic.

``HealthState`` is pure: feed it probe results, it says when the instance turns healthy or
unhealthy (``healthy_threshold`` successes in a row, ``unhealthy_threshold`` failures in a
row, failures ignored during the start ``grace``). The probes are the thin I/O around it:
HTTP through ``httpx`` (2xx and 3xx are healthy), gRPC through ``grpcio-health-checking``'s
``grpc.health.v1`` client (SERVING is healthy), TCP a connection, exec an exit code of 0;
each bounded by the check's timeout, each answering ``(ok, error)``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from elastin.agent.drivers.base import DriverError
from elastin.model.workload import HealthCheck

# while an instance starts (no verdict yet), it is probed after FIRST_STEP seconds, then twice
# as long each time up to the usual pace, so that it is ready soon after it first answers (a
# fixed second was most of a cold start from zero: bench/elasticity.py)
FIRST_STEP = 0.05


@dataclass
class HealthState:
    check: HealthCheck
    started_at: float
    healthy: bool | None = None  # None until the first verdict
    successes: int = 0
    failures: int = 0
    last_error: str = ""
    step: float = FIRST_STEP  # the next wait while starting
    failure_counted_at: float = float("-inf")

    def pace(self) -> float:
        """Seconds between probes at the check's usual pace: its interval when healthy, at
        most a second otherwise."""
        return self.check.interval if self.healthy else min(self.check.interval, 1.0)

    def counts(self, ok: bool, now: float) -> bool:
        """Whether a probe result counts (``record``): every success; a failure while the
        instance starts only once per usual pace (the fast probes then must not make
        ``unhealthy_threshold`` failures out of a slow start)."""
        if ok or self.healthy is not None:
            return True
        if now - self.failure_counted_at < self.pace():
            self.successes = 0  # not counted as a failure, but passes are "in a row"
            return False
        self.failure_counted_at = now
        return True

    def wait(self) -> float:
        """Seconds until the next probe: fast and growing while the instance starts, then
        the usual pace."""
        if self.healthy is not None:
            return self.pace()
        wait = min(self.step, self.pace())
        self.step *= 2
        return wait

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


ExecIn = Callable[[tuple[str, ...]], Awaitable[int]]


async def probe(
    check: HealthCheck, host: str, port: int | None, exec_in: ExecIn
) -> tuple[bool, str]:
    """Run one probe; return ``(ok, error)``. ``exec_in`` runs an exec check's command
    inside the instance (its cgroup, user, environment and workdir) and answers its exit
    status; the check's timeout cancels it, which kills what it started."""
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
            code = await exec_in(check.command)
            return code == 0, "" if code == 0 else f"check command exited with {code}"
    except TimeoutError:
        return False, f"no answer within {check.timeout:g}s"
    except OSError as e:
        return False, e.strerror or str(e)
    except DriverError as e:
        return False, str(e)


def _url(host: str, port: int, path: str) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}{path}"


def _reason(e: Exception) -> str:
    """What went wrong under an httpx error: the socket's error when there is one."""
    cause: BaseException | None = e
    for _ in range(10):  # a chain of causes is short (and must not loop)
        if cause is None:
            break
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        cause = cause.__cause__ or cause.__context__
    return str(e) or type(e).__name__


async def _http_get(host: str, port: int, path: str) -> tuple[bool, str]:
    """``GET path``: healthy on 2xx and 3xx (redirects are not followed); the body is not
    read. One connection per probe, no proxy from the environment, plain HTTP only."""
    try:
        # verify=False: no TLS is spoken here, and building a default TLS context would
        # cost ~20 ms of cpu per probe
        async with (
            httpx.AsyncClient(
                timeout=None,  # the probe's own deadline bounds it (asyncio.timeout)
                trust_env=False,
                verify=False,
                headers={"User-Agent": "elastin-health"},
            ) as client,
            client.stream("GET", _url(host, port, path)) as resp,
        ):
            status = resp.status_code
    except httpx.TimeoutException as e:
        raise TimeoutError from e
    except (httpx.RemoteProtocolError, httpx.DecodingError):
        return False, "not an HTTP response"
    except httpx.InvalidURL as e:
        return False, f"cannot check {path!r}: {e}"
    except httpx.TransportError as e:
        return False, _reason(e)
    if 200 <= status < 400:
        return True, ""
    return False, f"HTTP {status} from {path}"


async def grpc_health(host: str, port: int, service: str, timeout: float) -> tuple[bool, str]:
    """Ask the gRPC health protocol (``grpc.health.v1.Health/Check`` for ``service``, "" for
    the whole server); healthy only when the answer is SERVING."""
    # imported here: only agents whose workloads use gRPC checks pay for them
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(f"{host}:{port}") as channel:
        # the stub's methods are set per channel kind, which typeshed's stub leaves out
        check: grpc.aio.UnaryUnaryMultiCallable[
            health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
        ] = health_pb2_grpc.HealthStub(channel).Check  # type: ignore[attr-defined]
        try:
            answer = await check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.aio.AioRpcError as e:
            code = e.code()
            if code == grpc.StatusCode.UNIMPLEMENTED:
                return False, "the server does not implement grpc.health.v1.Health"
            return False, f"gRPC {code.name}: {e.details() or ''}".rstrip(": ")
    status = answer.status
    if status == health_pb2.HealthCheckResponse.SERVING:
        return True, ""
    try:
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    except ValueError:
        name = str(int(status))
    what = f"service {service!r}" if service else "the server"
    return False, f"gRPC health of {what}: {name}"
