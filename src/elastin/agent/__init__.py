"""The node agent: fingerprints its node, registers with the server, and runs the
allocations placed on it through drivers (``agent.drivers``).

Modules:
    agent      the main loop: register, heartbeat, watch allocations, re-attach; ``Reporter``
    reconcile  what should run on this node: the server's allocations -> actions (pure)
    runner     ``AllocRunner``: one allocation's life, along the checked lifecycle table
    restart    the restart policy: restart after a delay, give up, complete or fail (pure)
    health     health probes (HTTP via httpx, TCP, gRPC via grpcio-health-checking, exec)
               and the pure threshold logic
    mesh       the mesh manager: keeps the node's proxy in step with its mesh snapshot
    api        the agent's own HTTP API (token-protected): its instances' logs and its
               mesh log, relayed by the server
    logfiles   log files kept within bounds (copy-truncate), tailed and followed (inotify)
    metrics    the agent's ``/metrics``, served by prometheus_client

It talks to the server only through ``elastin.client`` and never imports the server.
"""
