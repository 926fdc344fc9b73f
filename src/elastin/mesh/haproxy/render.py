"""Render a ``MeshSnapshot`` into ``haproxy.cfg`` (pure: data in, text out).

Mapping of the model:

* Listener: ``frontend l_<name>`` on its address; ``proto h2`` for http2 / grpc (h2c).
* Cluster: ``backend c_<name>``; ``balance`` from the policy; ``retries``, ``retry-on``,
  ``option redispatch``; timeouts; a 503 that names the service when no endpoint is ready.
* round_robin / least_request / least_conn: ``roundrobin`` / ``random(2)`` (power of two
  choices) / ``leastconn``; hash_header / hash_cookie: ``hdr(<name>)`` /
  ``hash req.cook(<name>)``, with ``hash-type consistent``.
* Endpoint: ``server e_<id>`` with its weight (× 4 when local: same-node preference);
  not ready = ``disabled`` (maintenance).
* CircuitBreaker: per-server ``maxconn`` / ``maxqueue``, ``timeout queue``.
* rate_limit: a one-entry stick table counting the service's requests per second; over the
  limit, a 429 that names the service and the limit.
* OutlierDetection: ``observe layer7|layer4 error-limit N on-error mark-down``, with a
  connect check that brings the endpoint back.
* metrics_port: a Prometheus exporter frontend on 127.0.0.1.
* HTTP listeners start a W3C ``traceparent`` when the caller sent none, and pass it on,
  and log one JSON line per request (``HTTP_LOG_FORMAT``) to HAProxy's stdout.

Server lines carry every parameter explicitly (no ``default-server``), because servers added
at run time (``add server``) do not inherit defaults: ``server_params`` is the one source of
both.
"""

from __future__ import annotations

from dataclasses import dataclass

from elastin.mesh.model.types import Cluster, Endpoint, Listener, MeshSnapshot

LOCAL_WEIGHT_FACTOR = 4
# one JSON object per request; %b is the backend (c_<service>), %s the endpoint (e_<id>),
# %ts the termination state that says why HAProxy ended a failed request
HTTP_LOG_FORMAT = (
    '{"time":"%tr","caller":"{caller}","listener":"%f","service":"%b","endpoint":"%s",'
    '"method":"%HM","path":"%HPO","status":%ST,"bytes":%B,"retries":%rc,'
    '"time_ms":%Ta,"connect_ms":%Tc,"response_ms":%Tr,"termination":"%ts",'
    '"traceparent":"%[var(txn.traceparent)]"}'
)


@dataclass(frozen=True)
class Paths:
    """Where the running proxy keeps its sockets (the I/O layer decides)."""

    runtime_socket: str
    pid_file: str = ""


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def backend_name(cluster: str) -> str:
    return f"c_{cluster}"


def server_name(endpoint: Endpoint) -> str:
    return f"e_{endpoint.id}"


def effective_weight(e: Endpoint) -> int:
    return min(256, e.weight * LOCAL_WEIGHT_FACTOR) if e.local else e.weight


def server_params(c: Cluster, e: Endpoint) -> str:
    """Everything after ``server <name> <addr>:<port>``, shared by render and ``add server``."""
    parts = [f"weight {effective_weight(e)}"]
    if c.protocol in ("http2", "grpc"):
        parts.append("proto h2")
    if c.breaker.max_connections:
        parts.append(f"maxconn {c.breaker.max_connections}")
    if c.breaker.max_queue:
        parts.append(f"maxqueue {c.breaker.max_queue}")
    if c.outlier.enabled:
        layer = "layer4" if c.protocol == "tcp" else "layer7"
        parts.append("check inter 2s fall 3 rise 2")
        parts.append(f"observe {layer} error-limit {c.outlier.consecutive_errors}")
        parts.append("on-error mark-down")
    return " ".join(parts)


def _balance(c: Cluster) -> list[str]:
    if c.lb == "least_request":
        return ["balance random(2)"]
    if c.lb == "least_conn":
        return ["balance leastconn"]
    if c.lb == "hash_header":
        return [f"balance hdr({c.hash_key})", "hash-type consistent"]
    if c.lb == "hash_cookie":
        return [f"balance hash req.cook({c.hash_key})", "hash-type consistent"]
    return ["balance roundrobin"]


def _frontend(lst: Listener, c: Cluster) -> list[str]:
    mode = "tcp" if c.protocol == "tcp" else "http"
    bind = f"    bind {lst.address}:{lst.port}"
    if lst.protocol in ("http2", "grpc"):
        bind += " proto h2"
    out = [
        f"frontend l_{lst.name}",
        f"    mode {mode}",
        bind,
        f"    timeout client {_ms(c.timeouts.idle)}",
    ]
    if mode == "http":
        out.append("    option http-keep-alive")
        out.append(f"    log-format '{HTTP_LOG_FORMAT}'".replace("{caller}", lst.owner or "-"))
        # W3C trace context: start a trace when the caller did not send one, else pass it on
        out += [
            "    http-request set-var(txn.trace_id) uuid,regsub(-,,g)",
            "    http-request set-var(txn.span_id) uuid,regsub(-,,g),bytes(0,16)",
            '    http-request set-header traceparent "00-%[var(txn.trace_id)]-'
            '%[var(txn.span_id)]-01" unless { req.hdr(traceparent) -m found }',
            "    http-request set-var(txn.traceparent) req.hdr(traceparent)",
        ]
        if lst.owner:
            out.append(f'    http-request set-header x-elastin-caller "{lst.owner}"')
        f = lst.fault
        if f is not None and f.abort_status and f.abort_percent > 0:
            out.append(
                f"    http-request return status {f.abort_status} content-type text/plain "
                f'string "fault injected by elastin" if {{ rand(100) lt {f.abort_percent:g} }}'
            )
    out.append(f"    default_backend {backend_name(c.name)}")
    return out


def _backend(c: Cluster) -> list[str]:
    mode = "tcp" if c.protocol == "tcp" else "http"
    t = c.timeouts
    out = [f"backend {backend_name(c.name)}", f"    mode {mode}"]
    out += [f"    {line}" for line in _balance(c)]
    out += [
        f"    timeout connect {_ms(t.connect)}",
        f"    timeout server {_ms(t.request)}",
        f"    timeout queue {_ms(c.breaker.queue_timeout)}",
        f"    retries {c.retries.attempts}",
    ]
    if c.retries.redispatch:
        out.append("    option redispatch 1")
    if mode == "http" and c.retries.on:
        out.append(f"    retry-on {' '.join(c.retries.on)}")
        # a request that reached an endpoint is retried only when its method is idempotent
        # (RFC 9110 §9.2.2); connection failures are retried for every method
        out.append(
            "    http-request disable-l7-retry if !{ method GET HEAD OPTIONS PUT DELETE TRACE }"
        )
    if mode == "http" and c.rate_limit:
        # one shared counter for the service: requests in the last second
        out += [
            "    stick-table type integer size 1 expire 10s store http_req_rate(1s)",
            "    http-request track-sc0 int(1)",
            f"    http-request return status 429 content-type text/plain "
            f'hdr x-elastin-error "rate limit of {c.rate_limit}/s for {c.name}" '
            f'string "elastin: rate limit of {c.rate_limit} requests/s for service {c.name}\\n" '
            f"if {{ sc_http_req_rate(0) gt {c.rate_limit} }}",
        ]
    if mode == "http":
        out.append(
            "    http-error status 503 content-type text/plain "
            f'hdr x-elastin-error "no ready endpoint for {c.name}" '
            f'string "elastin: no ready endpoint for service {c.name}\\n"'
        )
    for e in c.endpoints:
        line = f"    server {server_name(e)} {e.address}:{e.port} {server_params(c, e)}"
        if not e.ready:
            line += " disabled"
        out.append(line)
    return out


def render(snapshot: MeshSnapshot, paths: Paths) -> str:
    clusters = {c.name: c for c in snapshot.clusters}
    lines = [
        f"# generated by elastin for node {snapshot.node or '-'}, version {snapshot.version}",
        "# do not edit: the agent rewrites it",
        "global",
        "    master-worker",
        f"    stats socket {paths.runtime_socket} mode 600 level admin expose-fd listeners",
        "    log stdout format raw local0",
        "    hard-stop-after 30s",
    ]
    if paths.pid_file:
        lines.append(f"    pidfile {paths.pid_file}")
    lines += [
        "",
        "defaults",
        "    log global",
        "    option dontlognull",
        "    timeout connect 2s",
        "    timeout client 60s",
        "    timeout server 60s",
        "",
    ]
    if snapshot.metrics_port:
        lines += [
            "frontend elastin_metrics",
            "    mode http",
            f"    bind 127.0.0.1:{snapshot.metrics_port}",
            "    no log",
            "    http-request use-service prometheus-exporter if { path /metrics }",
            "",
        ]
    for lst in snapshot.listeners:
        lines += [*_frontend(lst, clusters[lst.cluster]), ""]
    for c in snapshot.clusters:
        lines += [*_backend(c), ""]
    return "\n".join(lines)
