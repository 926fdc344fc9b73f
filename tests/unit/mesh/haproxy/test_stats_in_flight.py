"""What a drain waits for, read from ``show stat`` (pure): a ``mode tcp`` server's current
sessions are connections (an idle pooled one among them), a ``mode http`` server's are
requests; summed over the answers of every HAProxy worker."""

from __future__ import annotations

from elastin.mesh.haproxy.stats import InFlight, allocation_in_flight, endpoints_in_flight

HEAD = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,status,mode,\n"
CURRENT = (
    HEAD + "c_shop.db.pg,e_x1-pg,0,0,1,1,,1,UP,tcp,\n"  # an idle pooled client connection
    "c_shop.db.pg,BACKEND,0,0,1,1,,1,UP,tcp,\n"
    "c_shop.api.http,e_x1-http,0,0,2,2,,9,UP,http,\n"  # two requests
    "c_shop.api.grpc,e_x1-grpc,0,0,1,1,,3,UP,http,\n"  # a gRPC stream (HTTP/2: mode http)
    "c_shop.api.http,e_x12-http,0,0,4,4,,9,UP,http,\n"  # another allocation (x12)
    "l_caller.web,FRONTEND,0,0,7,7,,9,OPEN,http,\n"  # not a cluster
)
OLD = HEAD + "c_shop.api.http,e_x1-http,0,0,1,1,,5,MAINT,http,\n"  # a reload's old worker


def test_tcp_connections_and_http_requests_are_told_apart() -> None:
    busy = endpoints_in_flight([CURRENT, OLD])
    assert busy == {
        "x1-pg": InFlight(connections=1),
        "x1-http": InFlight(requests=3),  # 2 on the current worker, 1 on the old one
        "x1-grpc": InFlight(requests=1),
        "x12-http": InFlight(requests=4),
    }
    assert allocation_in_flight(busy, "x1") == InFlight(requests=4, connections=1)
    assert allocation_in_flight(busy, "x12") == InFlight(requests=4)
    assert allocation_in_flight(busy, "x") == InFlight()


def test_a_server_without_its_mode_takes_its_backends_or_counts_as_http() -> None:
    no_mode = "# pxname,svname,scur\nc_shop.db.pg,e_x1-pg,2\nc_shop.api.http,e_x1-http,1\n"
    backend = "# pxname,svname,scur,mode\nc_shop.db.pg,BACKEND,2,tcp\n"
    # the backend's row may come from another worker's answer: the mode is the proxy's
    assert endpoints_in_flight([no_mode, backend]) == {
        "x1-pg": InFlight(connections=2),
        "x1-http": InFlight(requests=1),
    }
    # nothing says: a request (waited for up to stop_grace, as before)
    assert endpoints_in_flight([no_mode])["x1-pg"] == InFlight(requests=2)
    assert endpoints_in_flight(["", "garbage"]) == {}
