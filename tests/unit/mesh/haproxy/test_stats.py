"""HAProxy ``show stat`` read into the mesh's traffic model, and what is exported of it
(pure)."""

from __future__ import annotations

from elastin.cli.render import TrafficRates
from elastin.mesh.haproxy.stats import (
    InFlight,
    allocation_in_flight,
    endpoints_in_flight,
    parse_stats,
)
from elastin.mesh.model.names import ClusterName
from elastin.mesh.model.traffic import TRAFFIC_METRICS, traffic_samples

HEADER = (
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,"
    "wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,sid,throttle,"
    "lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,check_duration,hrsp_1xx,"
    "hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,req_rate,req_rate_max,req_tot,"
    "cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,lastsess,last_chk,last_agt,qtime,"
    "ctime,rtime,ttime,agent_status,agent_code,agent_duration,check_desc,agent_desc,check_rise,"
    "check_fall,check_health,agent_rise,agent_fall,agent_health,addr,cookie,mode,algo,"
)


def row(px: str, sv: str, **values: object) -> str:
    cols = HEADER[2:].rstrip(",").split(",")
    data = dict.fromkeys(cols, "")
    data.update({"pxname": px, "svname": sv})
    data.update({k: str(v) for k, v in values.items()})
    return ",".join(data[c] for c in cols) + ","


TEXT = "\n".join(
    [
        HEADER,
        row("l_w1.api", "FRONTEND", req_tot=99, mode="http"),  # not a cluster: ignored
        row("c_shop.api.http", "e_a1-http", status="UP", scur=2, stot=60, check_status="L4OK"),
        row("c_shop.api.http", "e_a2-http", status="MAINT", scur=0, stot=40),
        row(
            "c_shop.api.http",
            "BACKEND",
            status="UP",
            mode="http",
            stot=100,
            req_tot=98,  # answered; 2 still in flight
            hrsp_2xx=95,
            hrsp_5xx=3,
            eresp=1,
            econ=2,
            wretr=4,
            wredis=1,
            scur=2,
            rtime=7,
        ),
        row("c_shop.db.pg", "e_a1-pg", status="UP", scur=3, stot=12),
        row("c_shop.db.pg", "BACKEND", status="UP", mode="tcp", stot=12),
        row("c_not-a-cluster", "BACKEND", status="UP", mode="http", req_tot=5),  # ignored
        "",
    ]
)


def test_parse_stats_per_cluster_with_endpoints() -> None:
    stats = parse_stats(TEXT)
    assert set(stats) == {"shop.api.http", "shop.db.pg"}
    api = stats["shop.api.http"]
    assert (api.requests, api.responses_2xx, api.responses_5xx, api.errors) == (100, 95, 3, 4)
    assert (api.connect_errors, api.retries, api.redispatches, api.active) == (2, 4, 1, 2)
    assert api.avg_response_ms == 7
    assert [(e.id, e.status, e.active, e.served) for e in api.endpoints] == [
        ("a1-http", "UP", 2, 60),
        ("a2-http", "MAINT", 0, 40),
    ]
    assert api.name == ClusterName("shop", "api", "http")
    assert (api.app, api.service, api.port) == ("shop", "api", "http")
    assert api.labels == {"app": "shop", "service": "api", "port": "http"}
    assert api.endpoints_up == 1
    assert stats["shop.db.pg"].requests == 12  # tcp: connections
    assert parse_stats("") == {} and parse_stats("garbage") == {}


def test_in_flight_sums_the_endpoints_of_one_allocation() -> None:
    busy = endpoints_in_flight([TEXT])
    # a1-http (2 requests) and a1-pg (3 connections: its backend says tcp)
    assert allocation_in_flight(busy, "a1") == InFlight(requests=2, connections=3)
    assert allocation_in_flight(busy, "a2") == InFlight() == allocation_in_flight(busy, "a")
    assert allocation_in_flight(endpoints_in_flight([""]), "a1") == InFlight()


def test_traffic_samples_one_entry_per_metric_labelled_with_elastin_names() -> None:
    stats = parse_stats(TEXT)
    out = dict((m.name, samples) for m, samples in traffic_samples([(stats, {"node": "n1"})]))
    assert list(out) == [m.name for m in TRAFFIC_METRICS]
    assert out["elastin_mesh_requests_total"] == [
        ({"app": "shop", "service": "api", "port": "http", "node": "n1"}, 100.0),
        ({"app": "shop", "service": "db", "port": "pg", "node": "n1"}, 12.0),
    ]
    assert out["elastin_mesh_errors_total"][0][1] == 4.0
    assert out["elastin_mesh_endpoints_up"][0][1] == 1.0
    assert all(samples == [] for _, samples in traffic_samples([]))


def test_traffic_rates_between_changed_samples() -> None:
    rates = TrafficRates()
    r = {"cluster": "a.b.c", "requests": 100, "errors": 0}
    assert rates.update([r], 0.0) == {}
    assert rates.update([r], 2.0) == {}  # unchanged: no rate yet
    assert rates.update([{**r, "requests": 150, "errors": 5}], 5.0) == {"a.b.c": (10.0, 1.0)}
    assert rates.update([{**r, "requests": 150, "errors": 5}], 10.0) == {"a.b.c": (10.0, 1.0)}
    assert rates.update([{**r, "requests": 150, "errors": 5}], 21.0) == {"a.b.c": (0.0, 0.0)}
