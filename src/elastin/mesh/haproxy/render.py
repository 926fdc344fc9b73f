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
* latency_histogram (a service autoscaled on its p99): the same one-entry table with a GPC
  array, one counter per latency bucket, incremented by ``http-response`` rules on the
  caller's wait (queue + connect + response headers, ``_latency_histogram``); read back by
  ``stats.parse_latency``.
* OutlierDetection: ``observe layer7|layer4 error-limit N on-error mark-down``, with a
  check that brings the endpoint back: a connect check for HTTP/1.1 and TCP, an HTTP/2
  handshake for HTTP/2 and gRPC (a frozen instance fails it and stays out).
* gRPC: the mesh's own answers (503, 502, 504, 429) are gRPC statuses (HTTP 200,
  ``grpc-status``, ``grpc-message``); a call waits on its endpoint at most 9/10 of its
  ``grpc-timeout``.
* Header limits: each service's (``max_request_headers``, ``max_request_header_bytes``)
  checked first in its callers' frontends, with a named 431 (gRPC: RESOURCE_EXHAUSTED);
  below them what the proxy parses at all (global ``tune.bufsize`` / ``tune.http.maxhdr``).
* scale_to_zero: in each caller's frontend, a request that finds no server of the service up
  is held by a Lua action (``_wake``, ``LUA_SCRIPT``) that tells the node's agent
  (``Paths.wake_url``) and waits for a server; a named 503 when held too long or too many.
* metrics_port: a Prometheus exporter frontend on 127.0.0.1.
* HTTP listeners pass a valid W3C ``traceparent`` on and start one for a sample of the
  other requests (``_trace_context``); they log every abnormal request and a sample of the
  normal ones (``_leave_normal_out``; TCP listeners: abnormal connections) as JSON lines
  (``HTTP_LOG_FORMAT``, ``TCP_LOG_FORMAT``) into an in-memory ring that the agent drains
  into the node's log file (``elastin.mesh.haproxy.accesslog``): no file write in HAProxy's
  event loop.

One application's part must not take the others' down: ``leave_out_unrenderable`` finds the
applications whose clusters cannot be rendered and returns the snapshot without them (and
without the listeners that lead to them), with the reason for each; the agent renders that.

Server lines carry every parameter explicitly (no ``default-server``), because servers added
at run time (``add server``) do not inherit defaults: ``server_params`` is the one source of
both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from elastin.mesh.model.traffic import LATENCY_BOUNDS_MS
from elastin.mesh.model.types import (
    Cluster,
    Endpoint,
    Fault,
    Listener,
    MeshModelError,
    MeshSnapshot,
)
from elastin.model.workload import REQUEST_HEADER_BYTES_MOST, REQUEST_HEADERS_MOST

LOCAL_WEIGHT_FACTOR = 4
# what the proxy parses (``render``'s global section): 256 headers and a request or response
# head in a 16 KiB buffer less the room kept for rewrites. A service's own limits (Envoy's
# 100 headers by default, ``_header_limits``) are checked below these, with a named 431;
# over these HAProxy's parser answers a request with its own 400 (HTTP/1.1) or
# REFUSED_STREAM (HTTP/2) before any rule runs, and a response with the named 502
# (docs/mesh.md, "Limits and errors")
MAX_HEADERS = 256
BUFSIZE = 16384
MAXREWRITE = 1024
HEADER_BYTES = BUFSIZE - MAXREWRITE
# what a service may ask for (elastin.model.workload) must fit in what the proxy parses, with
# room for the headers the mesh adds and the request line
assert MAX_HEADERS >= REQUEST_HEADERS_MOST + 16
assert HEADER_BYTES >= REQUEST_HEADER_BYTES_MOST + 1024
# the access log's ring in HAProxy's memory, drained by the agent (``accesslog``): about
# 12,000 lines. The longest line: a logged path is at most 1,024 bytes
# (tune.http.logurilen), at most doubled by JSON escaping, plus the other fields
RING_NAME = "elastin_log"
RING_BYTES = 4 << 20
LINE_MAX = 8192
# one JSON object per request; {service} is the backend's name (c_<service>), written in per
# frontend (%b would name the frontend for an answer it gives itself), %s the endpoint (e_<id>),
# %ts the termination state that says why HAProxy ended a failed request. The path is the
# only text a caller chooses (the method is a token, the traceparent is checked first): it
# goes through HAProxy's json converter, so that a quote or backslash cannot break (or hide)
# the line. %rc is a string: HAProxy writes "+1" when a retry went to another endpoint
# (redispatch), which is no JSON number. %[capture.req.hdr(0)] is "-" when the request
# carries no traceparent
HTTP_LOG_FORMAT = (
    '{"time":"%tr","caller":"{caller}","listener":"%f","service":"{service}","endpoint":"%s",'
    '"method":"%HM","path":"%[capture.req.uri,field(1,?),json(utf8s)]","status":%ST,'
    '"bytes":%B,"retries":"%rc",'
    '"time_ms":%Ta,"connect_ms":%Tc,"response_ms":%Tr,"termination":"%ts",'
    '"traceparent":"%[capture.req.hdr(0)]"}'
)
# a W3C traceparent: version, trace id, parent id, flags in lower-case hex
TRACEPARENT_RE = "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
# shares of requests (sampling) are drawn as rand(SHARE_SCALE) < share * SHARE_SCALE
SHARE_SCALE = 1_000_000
# the HAProxy release whose sample fetches tell, for a normal HTTP response about to be left
# out of the log, whether it was retried and how long its endpoint took (``txn.conn_retries``,
# ``txn.redispatched``, ``res.timer.hdr``); before it (2.6), the variable that holds the
# same from log-format tags, read as they are for the log line. The latency histogram's
# fetches (``req.timer.queue``, ``bc.timer.connect``, ``txn.sess_term_state``) are 3.0's too:
# before it, a p99 service keeps no histogram (``_latency_histogram``)
FETCHES_SINCE = "3.0"
LOG_CHECK_VAR = "txn.elastin_log"
# one JSON object per TCP connection
TCP_LOG_FORMAT = (
    '{"time":"%t","caller":"{caller}","listener":"%f","service":"{service}","endpoint":"%s",'
    '"bytes_in":%U,"bytes":%B,"retries":"%rc","time_ms":%Tt,"connect_ms":%Tc,'
    '"termination":"%ts"}'
)


# the agent's wake listener: loopback only, a port, a path of safe characters (it is written
# into the configuration as one word)
WAKE_URL = re.compile(r"http://127\.0\.0\.1:([1-9][0-9]{0,4})/[A-Za-z0-9/_.-]{1,200}")


@dataclass(frozen=True)
class Paths:
    """Where the running proxy keeps its sockets and scripts (the I/O layer decides)."""

    runtime_socket: str
    pid_file: str = ""
    lua_file: str = ""  # where LUA_SCRIPT is written; needed when a listener injects delays
    # the node's agent's wake listener (``elastin.agent.api.WakeListener``): where a held
    # request for a service scaled to zero is told; "" renders no hold (the named 503 at once)
    wake_url: str = ""

    def __post_init__(self) -> None:
        m = WAKE_URL.fullmatch(self.wake_url) if self.wake_url else None
        if self.wake_url and (m is None or int(m.group(1)) > 65535):
            raise MeshModelError(
                f"wake_url {self.wake_url[:120]!r} is not http://127.0.0.1:<port>/<path> "
                "(the node's agent on loopback; path characters A-Z a-z 0-9 / _ . -)"
            )


# Actions HAProxy lacks natively, loaded when a listener needs them: a delay (fault
# injection) that holds a request or connection for the given milliseconds; and the wake of
# a service scaled to zero (``_wake``): the request is held, at most ``max_held`` at once per
# backend, until the backend has a server up that accepts a connection (probed for up to a
# second: a server with no health check is up before it listens) or ``timeout_ms`` passed;
# meanwhile the node's agent is told (a POST to ``wake_url?backend=<backend>&held=<n>``, at
# most once a second per backend), which passes it on to the server, which starts a
# replica. Why it gave up is left in ``txn.elastin_wake`` ("full", "timeout") for the
# frontend's named 503. The sleep (``core.msleep``) yields: HAProxy's Lua time limit counts
# none of it.
LUA_SCRIPT = """-- generated by elastin: the mesh's Lua actions; do not edit
core.register_action("elastin_delay", { "http-req", "tcp-req" }, function(txn, ms)
    core.msleep(tonumber(ms))
end, 1)

local elastin_held = {}
local elastin_told = {}
-- what the held requests of a backend last saw of it, shared by them all: one look (and at
-- most one connect probe) per backend per ELASTIN_POLL_MS, however many requests are held
local elastin_seen = {}  -- backend -> { at = ms, ready = bool, up_at = ms or nil }
local ELASTIN_POLL_MS = 25

local function elastin_now_ms()
    local t = core.now()
    return t.sec * 1000 + math.floor(t.usec / 1000)
end

local function elastin_up(be)
    if be.get_srv_act ~= nil then
        return be:get_srv_act()
    end
    return tonumber(be:get_stats()["act"]) or 0  -- HAProxy 2.6: no get_srv_act
end

-- whether a server of the backend that is up accepts a connection: a task without a health
-- check is up as soon as it runs, before it listens, and a request sent then would meet a
-- refused connection and HAProxy's one-second turn-around before its retry. Probed for at
-- most a second after a server is up (never longer than that retry would have taken)
local function elastin_listening(be)
    for _, srv in pairs(be.servers) do
        local status = srv:get_stats()["status"] or ""
        local host, port = string.match(srv:get_addr() or "", "^(.*):(%d+)$")
        if string.sub(status, 1, 2) == "UP" and host ~= nil then
            local sock = core.tcp()
            sock:settimeout(0.02)  -- a refused connect takes ~3 timeouts on HAProxy 3.0
            local ok = sock:connect(host, tonumber(port))
            sock:close()
            if ok then
                return true
            end
        end
    end
    return false
end

-- whether a held request to the backend may go on (shared per backend, see elastin_seen): a
-- server is up and accepts a connection, or has been up for a second
local function elastin_ready(backend, be, now)
    local seen = elastin_seen[backend]
    if seen == nil then
        seen = { at = now - ELASTIN_POLL_MS, ready = false }
        elastin_seen[backend] = seen
    end
    if now - seen.at < ELASTIN_POLL_MS then
        return seen.ready  -- another held request looked (or is probing) just now
    end
    seen.at = now
    if elastin_up(be) == 0 then
        seen.up_at = nil
        seen.ready = false
    else
        seen.up_at = seen.up_at or now
        seen.ready = now - seen.up_at >= 1000 or elastin_listening(be)
    end
    return seen.ready
end

local function elastin_tell(backend, wake_url, now)
    if now - (elastin_told[backend] or 0) < 1000 then
        return
    end
    elastin_told[backend] = now
    pcall(function()
        local hc = core.httpclient()
        local url = wake_url .. "?backend=" .. backend .. "&held=" .. elastin_held[backend]
        hc:post{url=url, timeout=1000}
    end)
end

local function elastin_wake(txn, backend, timeout_ms, max_held, wake_url)
    local be = core.backends[backend]
    if be == nil or elastin_up(be) > 0 then
        return
    end
    local held = elastin_held[backend] or 0
    if held >= tonumber(max_held) then
        txn:set_var("txn.elastin_wake", "full")
        return
    end
    elastin_held[backend] = held + 1
    local deadline = elastin_now_ms() + tonumber(timeout_ms)
    -- pcall: whatever happens in the loop (HAProxy refusing a yield once the client has
    -- gone, with ACT_OPT_FINAL), the request's slot is given back below
    pcall(function()
        local now = elastin_now_ms()
        while now < deadline do
            if elastin_ready(backend, be, now) then
                break
            end
            elastin_tell(backend, wake_url, now)
            core.msleep(ELASTIN_POLL_MS)
            now = elastin_now_ms()
        end
    end)
    elastin_held[backend] = elastin_held[backend] - 1
    if elastin_held[backend] == 0 then
        elastin_seen[backend] = nil  -- the next cold start looks afresh
    end
    if elastin_up(be) == 0 then
        txn:set_var("txn.elastin_wake", "timeout")
    end
end

core.register_action("elastin_wake", { "http-req" }, elastin_wake, 4)
"""


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
        # a connect check for HTTP/1.1 and TCP; HTTP/2 and gRPC get an HTTP/2 handshake
        # check (``_h2_check``); timeouts and resets count as errors with ``layer7``
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


def _delay(rule: str, f: Fault | None) -> list[str]:
    """The fault-injection delay rule (``LUA_SCRIPT``'s action), if the fault has one."""
    if f is None or f.delay <= 0 or f.delay_percent <= 0:
        return []
    ms = max(1, round(f.delay * 1000))
    return [f"    {rule} lua.elastin_delay {ms} if {{ rand(100) lt {round(f.delay_percent)} }}"]


def _wake(c: Cluster, wake_url: str) -> list[str]:
    """Scale to zero: a request that finds no server of the service up is held by the Lua
    action ``elastin_wake`` (``LUA_SCRIPT``) while the node's agent has a replica started;
    it then goes on as any other. Held too long, or with too many held already: a 503 naming
    the service (a gRPC port: UNAVAILABLE). Once a server is up the condition is false: no
    Lua and no extra hop for a warm service."""
    if not c.scale_to_zero or not wake_url:
        return []
    b = backend_name(c.name)
    ms = max(1, round(c.hold_timeout * 1000))
    why_timeout = f"no replica of {c.name} started within {_ms(c.hold_timeout)} (scaled to zero)"
    why_full = f"too many requests held for {c.name} while a replica starts (at most {c.hold_max})"
    return [
        f"    http-request lua.elastin_wake {b} {ms} {c.hold_max} {wake_url}"
        f" if {{ nbsrv({b}) eq 0 }}",
        f"    http-request return {_error_answer(c, 503, why_timeout, in_frontend=True)}"
        " if { var(txn.elastin_wake) -m str timeout }",
        f"    http-request return {_error_answer(c, 503, why_full, in_frontend=True)}"
        " if { var(txn.elastin_wake) -m str full }",
    ]


def _frontend(lst: Listener, c: Cluster, wake_url: str = "") -> list[str]:
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
    if c.access_log:
        fmt = HTTP_LOG_FORMAT if mode == "http" else TCP_LOG_FORMAT
        # the service is written in: %b would name the frontend for an answer it gives
        # itself (a header limit's 431), and each frontend serves one service
        fmt = fmt.replace("{caller}", lst.owner or "-").replace("{service}", backend_name(c.name))
        out.append(f"    log-format '{fmt}'")
        if mode == "tcp" and c.access_log_sample < 1:
            # abnormal connections only (failed, retried, timed out, aborted): HAProxy
            # decides when the connection ends, and builds no line for the others
            out.append("    option dontlog-normal")
    else:
        out.append("    no log")
    if mode == "http":
        out.append("    option http-keep-alive")
        out += _header_limits(c)
        out += _trace_context(c)
        if c.access_log:
            # the header as sent on, for the access log (a capture slot costs less than a
            # variable; nothing is stored for a request without one)
            out.append("    http-request capture req.hdr(traceparent) len 55")
        if lst.owner:
            out.append(f'    http-request set-header x-elastin-caller "{lst.owner}"')
        out += _delay("http-request", lst.fault)
        f = lst.fault
        if f is not None and f.abort_status and f.abort_percent > 0:
            out.append(
                f"    http-request return status {f.abort_status} content-type text/plain "
                f'string "fault injected by elastin" if {{ rand(100) lt {f.abort_percent:g} }}'
            )
        out += _wake(c, wake_url)
        if c.access_log:
            out += _leave_normal_out(c)
    else:
        out += _delay("tcp-request content", lst.fault)
    out.append(f"    default_backend {backend_name(c.name)}")
    return out


def _header_limits(c: Cluster) -> list[str]:
    """The service's request header limits, checked before the mesh adds headers of its own:
    a request over them gets a 431 naming the service and the limit (on a gRPC port, gRPC's
    RESOURCE_EXHAUSTED, as grpc-core answers metadata over its limit). The byte limit is
    checked only when the service sets one (``req.hdrs`` copies the headers); without it,
    what the proxy holds is the limit."""
    checks = [
        (
            f"{{ req.fhdr_cnt gt {c.max_request_headers} }}",
            f"request over the limit of {c.max_request_headers} headers of {c.name}",
        )
    ]
    if c.max_request_header_bytes:
        checks.append(
            (
                f"{{ req.hdrs,length gt {c.max_request_header_bytes} }}",
                f"request over the limit of {c.max_request_header_bytes} bytes of headers"
                f" of {c.name}",
            )
        )
    return [
        f"    http-request return {_error_answer(c, 431, why, in_frontend=True)} if {acl}"
        for acl, why in checks
    ]


def _sampled(share: float, draw: str = "lt") -> str:
    """An ACL true for ``share`` of the requests (with ``ge``: for the others)."""
    n = round(share * SHARE_SCALE)
    return f"{{ rand({SHARE_SCALE}) {draw} {n} }}"


def _trace_context(c: Cluster) -> list[str]:
    """W3C trace context: a valid incoming ``traceparent`` is passed on as it is; for
    ``trace_sample`` of the other requests a trace is started (sampled flag ``01``); the others
    get none (an invalid header is removed, never passed on). The ids are one random UUID,
    made only for a started trace: the trace id is its 32 hex digits, the span id the last 16."""
    valid = f"{{ req.hdr(traceparent) -m reg {TRACEPARENT_RE} }}"
    out: list[str] = []
    if c.trace_sample > 0:
        when = "" if c.trace_sample >= 1 else _sampled(c.trace_sample) + " "
        out += [
            f"    http-request set-var(txn.elastin_trace) uuid,regsub(-,,g) if {when}!{valid}",
            '    http-request set-header traceparent "00-%[var(txn.elastin_trace)]-'
            '%[var(txn.elastin_trace),bytes(16,16)]-01" if { var(txn.elastin_trace) -m found }',
        ]
    if c.trace_sample < 1:
        out.append(
            f"    http-request del-header traceparent if {{ req.hdr(traceparent) -m found }} "
            f"!{valid}"
        )
    return out


def _leave_normal_out(c: Cluster) -> list[str]:
    """The rules that leave a normal HTTP request out of the access log unless it is in the
    sample: HAProxy then builds no line for it. Only an endpoint's response passes them —
    every answer HAProxy makes itself (the named 502/503/504, a 429, an injected fault) is
    logged, as is a request that ends before a response (aborted, timed out). Normal: a
    status below 500 other than 429, no retry and (with ``slow``) an endpoint that answered
    within ``slow``. What HAProxy cannot tell at that point: a response cut after its
    headers (the endpoint or the caller closing mid-body) is logged only when sampled.

    HAProxy 3.0 reads the retries and the endpoint's time with sample fetches
    (``txn.conn_retries``, ``txn.redispatched``, ``res.timer.hdr``) in one rule; an older
    one (2.6: none of these fetches) gets the same decision from its log-format tags, put
    in a variable first (``LOG_CHECK_VAR``). The choice is HAProxy's own, when it reads the
    configuration (``.if version_atleast``)."""
    if c.access_log_sample >= 1:
        return []
    when = "" if c.access_log_sample <= 0 else _sampled(c.access_log_sample, "ge") + " "
    endpoint_normal = f"{when}{{ status lt 500 }} !{{ status 429 }}"
    slow_ms = max(1, round(c.slow * 1000))
    normal = "{ txn.conn_retries eq 0 } !{ txn.redispatched }"
    if c.slow > 0:
        normal += f" {{ res.timer.hdr lt {slow_ms} }}"
    # before 3.0: "<retries>/<ms the endpoint took to answer>"; %rc is "+1" after a redispatch
    check, old_normal = "%rc", f"{{ var({LOG_CHECK_VAR}) -m int 0 }}"
    if c.slow > 0:
        check += "/%Tr"
        old_normal = (
            f"{{ var({LOG_CHECK_VAR}),field(1,/) -m int 0 }} "
            f"{{ var({LOG_CHECK_VAR}),field(2,/) -m int lt {slow_ms} }}"
        )
    return [
        f"    .if version_atleast({FETCHES_SINCE})",
        f"    http-response set-log-level silent if {endpoint_normal} {normal}",
        "    .else",
        f'    http-response set-var-fmt({LOG_CHECK_VAR}) "{check}" if {endpoint_normal}',
        f"    http-response set-log-level silent if {old_normal}",
        "    .endif",
    ]


def _backend(c: Cluster) -> list[str]:
    mode = "tcp" if c.protocol == "tcp" else "http"
    t = c.timeouts
    out = [f"backend {backend_name(c.name)}", f"    mode {mode}"]
    out += [f"    {line}" for line in _balance(c)]
    out += [
        f"    timeout connect {_ms(t.connect)}",
        # server inactivity; a gRPC stream may rightly stay quiet as long as a caller may
        f"    timeout server {_ms(max(t.request, t.idle) if c.protocol == 'grpc' else t.request)}",
        # an upgraded connection (WebSocket) idles like a caller's connection
        f"    timeout tunnel {_ms(t.idle)}",
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
    # one shared counter for the service: requests in the last second
    rate_table = [
        "    stick-table type integer size 1 expire 10s store http_req_rate(1s)",
        "    http-request track-sc0 int(1)",
    ]
    if mode == "http" and c.latency_histogram:
        # one entry (a constant key) for the histogram's counters, and the rate limit's
        # when the service has one; never expired: the counters must last between readings.
        # Only on HAProxy 3.0 (its rules need fetches 2.6 lacks, ``_latency_histogram``): an
        # older one keeps no table, so the agent reads none and the p99 is not measured
        store = f"gpc({len(LATENCY_BOUNDS_MS) + 1})"
        if c.rate_limit:
            store += ",http_req_rate(1s)"
        out += [
            f"    .if version_atleast({FETCHES_SINCE})",
            f"    stick-table type integer size 1 store {store}",
            "    http-request track-sc0 int(1)",
        ]
        if c.rate_limit:
            out += ["    .else", *rate_table]
        out.append("    .endif")
    elif mode == "http" and c.rate_limit:
        out += rate_table
    if mode == "http" and c.rate_limit:
        why_429 = f"rate limit of {c.rate_limit}/s for {c.name}"
        out.append(
            f"    http-request return {_error_answer(c, 429, why_429)} "
            f"if {{ sc_http_req_rate(0) gt {c.rate_limit} }}"
        )
    if c.protocol == "grpc":
        out += _grpc_deadline(c)
    if c.protocol in ("http2", "grpc") and c.outlier.enabled:
        out += _h2_check()
    if mode == "http" and c.latency_histogram:
        out += _latency_histogram(c)
    if mode == "http":
        out += _named_errors(c)
    for e in c.endpoints:
        line = f"    server {server_name(e)} {e.address}:{e.port} {server_params(c, e)}"
        if not e.ready:
            line += " disabled"
        out.append(line)
    return out


# the time a response of an endpoint kept its caller waiting, in ms (``_latency_histogram``);
# set for every such response: the mark of one counted by the ``http-response`` rules
LATENCY_VAR = "txn.elastin_ms"


def latency_bucket(ms: float) -> int:
    """The index of the histogram bucket (``LATENCY_BOUNDS_MS``, then the one of slower
    responses) that counts a response of ``ms`` milliseconds."""
    return next((i for i, le in enumerate(LATENCY_BOUNDS_MS) if ms <= le), len(LATENCY_BOUNDS_MS))


def _latency_histogram(c: Cluster) -> list[str]:
    """The service's latency histogram (``Cluster.latency_histogram``): each response of an
    endpoint adds one to the counter of its bucket, in the entry ``sc0`` tracks (the
    backend's one-entry table, ``_backend``). The time is what the caller waits from the
    request's arrival at the backend to the endpoint's complete response headers: the wait
    in the queue for a connection slot (``mesh.max_connections``), the connect and the
    endpoint's answer — HAProxy's ``%Tw + %Tc + %Tr`` (``req.timer.queue``,
    ``bc.timer.connect``, ``res.timer.hdr``), summed once into ``LATENCY_VAR``; the buckets
    compare that variable. Without the queue a saturated service would look fast: its
    requests wait in the proxy, not in the endpoint.

    Exclusive buckets (one counter per range), not cumulative ones (``le`` counters, as
    Prometheus exports them): both evaluate one condition per bucket for every response,
    but an exclusive response increments one counter where a cumulative one increments
    every counter above its time (all of them for a fast response), each a write to the
    shared entry. The agent makes them cumulative when it reports them.

    The answers the mesh gives itself after a wait pass no ``http-response`` rule; they are
    counted in ``http-after-response`` (before a gRPC port's answer becomes a 200): its 504
    (no answer within the request timeout) at that timeout, its 503 after the queue timeout
    (termination state ``sQ``) at the queue timeout. ``http-after-response`` also sees the
    endpoints' responses — an endpoint's own 504 may carry ``x-elastin-error`` (a gateway
    relaying a mesh's answer) — so a response already counted (``LATENCY_VAR`` is set) is
    not counted there again.

    HAProxy 2.6 has none of ``req.timer.queue``, ``bc.timer.connect``, ``res.timer.hdr`` and
    ``txn.sess_term_state``, and would refuse the whole configuration: the rules (and the
    table, ``_backend``) are HAProxy's only from ``FETCHES_SINCE`` on (``.if
    version_atleast``). An older proxy keeps no histogram; the agent's ``show table`` of it
    answers "No such table" (``stats.parse_latency`` leaves it out), and the service's p99
    falls back to the longest response."""
    v = LATENCY_VAR
    out = [
        f"    .if version_atleast({FETCHES_SINCE})",
        f"    http-response set-var({v}) req.timer.queue",
        f"    http-response set-var({v}) bc.timer.connect,add({v})",
        f"    http-response set-var({v}) res.timer.hdr,add({v})",
    ]
    low = 0
    for i, le in enumerate(LATENCY_BOUNDS_MS):
        when = f"le {le}" if i == 0 else f"{low + 1}:{le}"
        out.append(f"    http-response sc-inc-gpc({i},0) if {{ var({v}) -m int {when} }}")
        low = le
    slowest = len(LATENCY_BOUNDS_MS)
    out.append(f"    http-response sc-inc-gpc({slowest},0) if {{ var({v}) -m int gt {low} }}")
    timeout = latency_bucket(round(c.timeouts.request * 1000))
    queue = latency_bucket(round(c.breaker.queue_timeout * 1000))
    out += [
        f"    http-after-response sc-inc-gpc({timeout},0) if {{ status 504 }} "
        f"!{{ var({v}) -m found }}",
        f"    http-after-response sc-inc-gpc({queue},0) if {{ status 503 }} "
        "{ txn.sess_term_state sQ }",
        "    .endif",
    ]
    return out


def _named_errors(c: Cluster) -> list[str]:
    """The answers HAProxy itself gives, each naming the service and why (never an opaque
    5xx), in ``x-elastin-error`` and the body (for gRPC: a gRPC status, ``_error_answer``);
    the access log has the service, the endpoint and HAProxy's termination state for the
    same request."""
    b, name = backend_name(c.name), c.name
    # the iif() arguments may hold neither commas nor parentheses
    why_503 = (
        f"%[nbsrv({b}),iif(no endpoint of {name} took the request - connections failed"
        f" or its circuit breaker queue is full,"
        f"no endpoint of {name} is up - none is ready or all fail their checks)]"
    )
    why_502 = (
        f"invalid or empty response from an endpoint of {name}"
        f" (or over the mesh's limits of {MAX_HEADERS} headers / {HEADER_BYTES // 1024} KiB)"
    )
    why_504 = f"no answer from an endpoint of {name} within {_ms(c.timeouts.request)}"
    if c.protocol == "grpc":
        why_504 += " or the call's deadline"
    out = [
        f"    http-error {_error_answer(c, status, why)}"
        for status, why in ((503, why_503), (502, why_502), (504, why_504))
    ]
    if c.protocol == "grpc":
        # gRPC callers read a status only from an HTTP 200 (gRPC over HTTP/2, "Responses"):
        # every answer of the mesh itself (it carries x-elastin-error) becomes one; an
        # answer without a body gets no content-type from http-error, so it is set here
        mine = "if !{ status 200 } { res.hdr(x-elastin-error) -m found }"
        out += [
            f"    http-after-response set-header content-type application/grpc {mine}",
            f"    http-after-response set-status 200 {mine}",
        ]
    return out


# the gRPC status of each answer the mesh gives (as Envoy maps them: gRPC's
# doc/http-grpc-status-mapping.md): 14 UNAVAILABLE, 4 DEADLINE_EXCEEDED, 8 RESOURCE_EXHAUSTED
GRPC_STATUS = {502: 14, 503: 14, 504: 4, 429: 8, 431: 8}


def _error_answer(c: Cluster, status: int, why: str, *, in_frontend: bool = False) -> str:
    """The arguments of an ``http-error`` / ``http-request return`` (from ``status`` on) that
    answer ``status`` naming the service and why: a text body for HTTP; for gRPC a
    "Trailers-Only" answer (no body; ``grpc-status`` and ``grpc-message``). In a backend the
    ``http-after-response`` rules of ``_named_errors`` make that an HTTP 200 with content-type
    ``application/grpc``; an answer ``in_frontend`` (given before a backend is chosen, which
    those rules do not see) is written as one. ``why`` is a log-format string."""
    if c.protocol != "grpc":
        return (
            f'status {status} content-type text/plain hdr x-elastin-error "{why}" '
            f'lf-string "elastin: {why}\\n"'
        )
    grpc = (
        f"hdr grpc-status {GRPC_STATUS[status]} "
        f'hdr grpc-message "{why}" hdr x-elastin-error "{why}"'
    )
    if in_frontend:
        return f"status 200 hdr content-type application/grpc {grpc}"
    return f"status {status} {grpc}"


# gRPC's grpc-timeout header ("<digits><unit>", gRPC over HTTP/2) in milliseconds, for each
# unit: the factor and divisor applied to 9/10 of it (see _grpc_deadline)
_GRPC_UNITS = (
    ("H", 3_240_000, 1),
    ("M", 54_000, 1),
    ("S", 900, 1),
    ("m", 9, 10),
    ("u", 9, 10_000),
    ("n", 9, 10_000_000),
)


def _grpc_deadline(c: Cluster) -> list[str]:
    """A gRPC call waits on its endpoint at most 9/10 of the deadline its caller sent
    (``grpc-timeout``), never longer than the service's own timeout: an endpoint that does
    not answer in time is then the mesh's timeout (a 504: DEADLINE_EXCEEDED naming the
    service, counted by outlier detection) rather than the caller's cancel, which nothing
    counts. Envoy's ``grpc_timeout_header_offset`` does the same with a fixed offset."""
    limit = round(max(c.timeouts.request, c.timeouts.idle) * 1000)
    out = [
        f"    http-request set-var(txn.elastin_deadline) req.hdr(grpc-timeout),"
        f"field(1,{unit}),mul({mul}),div({div}) if {{ req.hdr(grpc-timeout) -m end {unit} }}"
        for unit, mul, div in _GRPC_UNITS
    ]
    out.append(
        "    http-request set-timeout server var(txn.elastin_deadline) if "
        f"{{ var(txn.elastin_deadline) -m int 1:{limit - 1} }}"
    )
    return out


# the HTTP/2 connection preface and an empty SETTINGS frame (RFC 9113 §3.4): an endpoint
# that speaks HTTP/2 answers with its own SETTINGS frame (type 4, on stream 0) at once. No
# request reaches the application (nothing in its logs); a frozen (SIGSTOPped) endpoint,
# whose kernel still accepts connections, fails it
H2_PREFACE_HEX = (
    "505249202a20485454502f322e300d0a0d0a534d0d0a0d0a"  # PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n
    "000000040000000000"  # SETTINGS, length 0, flags 0, stream 0
)


def _h2_check() -> list[str]:
    return [
        "    option tcp-check",
        f"    tcp-check send-binary {H2_PREFACE_HEX}",
        # the answer, hex-encoded: a 3-byte length, then type 04 (SETTINGS), flags 00
        "    tcp-check expect rbinary ^[0-9A-F]{6}0400",
    ]


def render(snapshot: MeshSnapshot, paths: Paths) -> str:
    clusters = {c.name: c for c in snapshot.clusters}
    lines = [
        f"# generated by elastin for node {snapshot.node or '-'}, version {snapshot.version}",
        "# do not edit: the agent rewrites it",
        "global",
        "    master-worker",
        f"    stats socket {paths.runtime_socket} mode 600 level admin expose-fd listeners",
        # the access log goes into a ring in memory, drained by the agent (accesslog.py)
        f"    log ring@{RING_NAME} len {LINE_MAX} format raw local0",
        "    hard-stop-after 30s",
        # limits at least Envoy's defaults (100 headers, 60 KiB of headers): a request's or
        # a response's headers must fit in a buffer less the room kept for rewrites
        f"    tune.bufsize {BUFSIZE}",
        f"    tune.maxrewrite {MAXREWRITE}",
        f"    tune.http.maxhdr {MAX_HEADERS}",
    ]
    if paths.pid_file:
        lines.append(f"    pidfile {paths.pid_file}")
    delays = any(lst.fault and lst.fault.delay > 0 for lst in snapshot.listeners)
    wakes = bool(paths.wake_url) and any(
        clusters[lst.cluster].scale_to_zero for lst in snapshot.listeners
    )
    if delays or wakes:
        if not paths.lua_file:
            why = "a listener injects delays" if delays else "a service scales to zero"
            raise MeshModelError(f"{why}: render needs Paths.lua_file")
        lines.append(f"    lua-load {paths.lua_file}")
    lines += [
        "",
        f"ring {RING_NAME}",
        "    description elastin-access-log",
        "    format raw",
        f"    maxlen {LINE_MAX}",
        f"    size {RING_BYTES}",
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
        lines += [*_frontend(lst, clusters[lst.cluster], paths.wake_url), ""]
    for c in snapshot.clusters:
        lines += [*_backend(c), ""]
    return "\n".join(lines)


def app_of(cluster: str) -> str:
    """The application a cluster belongs to (``<app>.<service>.<port>``; the whole name of a
    cluster named otherwise)."""
    return cluster.split(".", 1)[0]


def leave_out_unrenderable(
    snapshot: MeshSnapshot, paths: Paths
) -> tuple[MeshSnapshot, str, dict[str, str]]:
    """``snapshot`` without the applications whose part of the configuration cannot be
    rendered, its configuration, and why for each application left out (``{app:
    "ExceptionType: message"}``). A part is a cluster with the listeners that lead to it; an
    application is left out whole (all its clusters and every listener to them). Nothing is
    left out when the whole snapshot renders; the error of ``render`` when what is left does
    not render either (nothing there to blame on one application)."""
    try:
        return snapshot, render(snapshot, paths), {}
    except Exception:  # which part fails is found below
        pass
    bad: dict[str, str] = {}
    for c in snapshot.clusters:
        app = app_of(c.name)
        if app in bad:
            continue
        part = replace(
            snapshot,
            clusters=(c,),
            listeners=tuple(lst for lst in snapshot.listeners if lst.cluster == c.name),
        )
        try:
            render(part, paths)
        except Exception as e:  # any failure leaves this app out
            bad[app] = f"{type(e).__name__}: {e}"
    present = {c.name for c in snapshot.clusters}
    for lst in snapshot.listeners:  # a listener to a cluster the snapshot lacks
        if lst.cluster not in present:
            bad.setdefault(app_of(lst.cluster), f"listener {lst.name}: no cluster {lst.cluster}")
    kept = tuple(c for c in snapshot.clusters if app_of(c.name) not in bad)
    names = {c.name for c in kept}
    listeners = tuple(lst for lst in snapshot.listeners if lst.cluster in names)
    rest = replace(snapshot, clusters=kept, listeners=listeners)
    return rest, render(rest, paths), bad
