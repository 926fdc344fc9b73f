"""``render`` at the edges (issue #12): header limits, gRPC statuses for the mesh's own
answers, the grpc-timeout rules and the HTTP/2 handshake check (pure: the text rendered;
tests/integration/mesh/test_edges.py runs it in a real HAProxy)."""

from __future__ import annotations

from elastin.mesh.haproxy.render import GRPC_STATUS, H2_PREFACE_HEX, Paths, render
from elastin.mesh.model import Cluster, Endpoint, Listener, MeshSnapshot, OutlierDetection
from elastin.model.workload import Protocol


def config(protocol: Protocol, **kw: object) -> str:
    cluster = Cluster("a.s.p", protocol=protocol, endpoints=(Endpoint("e1", "127.0.0.1", 1),), **kw)  # type: ignore[arg-type]
    listener = Listener("l", 20000, cluster.name, protocol=protocol)
    return render(MeshSnapshot(1, "n", (listener,), (cluster,)), Paths("/run/x.sock"))


def test_header_limits_are_at_least_envoys() -> None:
    text = config("http")
    assert "    tune.bufsize 16384" in text
    assert "    tune.maxrewrite 1024" in text
    assert "    tune.http.maxhdr 256" in text


def test_a_service_s_header_limits_are_checked_first_with_a_named_431() -> None:
    text = config("http", max_request_headers=50, max_request_header_bytes=4096)
    frontend = text.split("frontend l_l\n")[1].split("\nbackend ")[0]
    rules = [line for line in frontend.splitlines() if "http-request" in line]
    assert rules[0] == (
        '    http-request return status 431 content-type text/plain hdr x-elastin-error "request'
        ' over the limit of 50 headers of a.s.p" lf-string "elastin: request over the limit of'
        ' 50 headers of a.s.p\\n" if { req.fhdr_cnt gt 50 }'
    )
    assert rules[1].endswith("if { req.hdrs,length gt 4096 }")
    assert "4096 bytes of headers of a.s.p" in rules[1]


def test_the_byte_limit_is_checked_only_when_the_service_sets_one() -> None:
    text = config("http")
    assert "req.fhdr_cnt gt 100 }" in text  # Envoy's default count
    assert "req.hdrs" not in text  # by default: what the proxy holds
    assert "if { req.hdrs,length gt 14336 }" in config("http", max_request_header_bytes=14336)


def test_over_the_header_limits_a_grpc_caller_gets_resource_exhausted() -> None:
    text = config("grpc")
    assert (
        "    http-request return status 200 hdr content-type application/grpc hdr grpc-status 8"
        ' hdr grpc-message "request over the limit of 100 headers of a.s.p" hdr x-elastin-error'
        ' "request over the limit of 100 headers of a.s.p" if { req.fhdr_cnt gt 100 }'
    ) in text


def test_tcp_ports_have_no_header_limits() -> None:
    assert "req.fhdr_cnt" not in config("tcp")


def test_grpc_errors_are_grpc_statuses_and_http_ones_are_not() -> None:
    grpc = config("grpc", rate_limit=3)
    for status, code in GRPC_STATUS.items():
        if status != 431:  # answered in the frontend (test below)
            assert f"status {status} hdr grpc-status {code} " in grpc
    assert "http-after-response set-status 200 if !{ status 200 }" in grpc
    assert "http-after-response set-header content-type application/grpc" in grpc
    http = config("http", rate_limit=3)
    assert "grpc-status" not in http
    assert "http-after-response" not in http


def test_grpc_timeout_bounds_the_wait_on_the_endpoint() -> None:
    text = config("grpc")
    assert "req.hdr(grpc-timeout),field(1,S),mul(900),div(1)" in text
    # never longer than the service's own timeout (60 s: max of request and idle)
    assert "set-timeout server var(txn.elastin_deadline) if" in text
    assert "-m int 1:59999 }" in text
    assert "grpc-timeout" not in config("http2")


def test_h2_ports_get_a_handshake_check_http11_a_connect_check() -> None:
    for protocol in ("http2", "grpc"):
        assert f"tcp-check send-binary {H2_PREFACE_HEX}" in config(protocol)
    assert "tcp-check" not in config("http")
    assert "tcp-check" not in config("tcp")
    assert "tcp-check" not in config("grpc", outlier=OutlierDetection(enabled=False))
