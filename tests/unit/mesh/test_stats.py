"""HAProxy ``show stat`` read back into Elastin's names, and its Prometheus text (pure)."""

from __future__ import annotations

from elastin.cli.render import TrafficRates
from elastin.mesh.haproxy.stats import parse_stats, prometheus_lines

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
            req_tot=100,
            hrsp_2xx=95,
            hrsp_5xx=3,
            eresp=1,
            econ=2,
            wretr=4,
            wredis=1,
            scur=2,
            rtime=7,
        ),
        row("c_shop.db.pg", "BACKEND", status="UP", mode="tcp", stot=12),
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
    assert api.labels == {"app": "shop", "service": "api", "port": "http"}
    assert stats["shop.db.pg"].requests == 12  # tcp: connections
    assert parse_stats("") == {} and parse_stats("garbage") == {}


def test_prometheus_text_has_one_help_per_metric_and_elastin_labels() -> None:
    stats = parse_stats(TEXT)
    lines = prometheus_lines([(stats, {"node": "n1"}), (stats, {"node": "n2"})])
    assert lines.count("# TYPE elastin_mesh_requests_total counter") == 1
    assert 'elastin_mesh_requests_total{app="shop",service="api",port="http",node="n2"} 100' in (
        lines
    )
    assert 'elastin_mesh_endpoints_up{app="shop",service="api",port="http",node="n1"} 1' in lines


def test_traffic_rates_between_changed_samples() -> None:
    rates = TrafficRates()
    r = {"cluster": "a.b.c", "requests": 100, "errors": 0}
    assert rates.update([r], 0.0) == {}
    assert rates.update([r], 2.0) == {}  # unchanged: no rate yet
    assert rates.update([{**r, "requests": 150, "errors": 5}], 5.0) == {"a.b.c": (10.0, 1.0)}
    assert rates.update([{**r, "requests": 150, "errors": 5}], 10.0) == {"a.b.c": (10.0, 1.0)}
    assert rates.update([{**r, "requests": 150, "errors": 5}], 21.0) == {"a.b.c": (0.0, 0.0)}
