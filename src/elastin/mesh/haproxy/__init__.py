"""HAProxy as the mesh's data plane, one per node, driven by the agent's mesh manager.

Layer 3: it reads the neutral model (``elastin.mesh.model``) and nothing else of ours, and only
the agent imports it (a contract in pyproject.toml keeps it so).

Modules:
    render     snapshot -> haproxy.cfg (pure)
    runtime    snapshot diff -> runtime API commands, so endpoint churn needs no reload (pure)
    stats      ``show stat`` read back into per-cluster counters (pure)
    accesslog  drains the access log ring HAProxy writes into, to the node's log file
    runtime_client  the one asynchronous client of the runtime API socket (I/O)
    process    checking configs, starting and reloading the master-worker HAProxy (I/O)
"""
