"""The Elastin server: the REST API, the cluster's rooms, the scheduling loop and its
plan applier.

Modules:
    cluster     ``Cluster``: the rooms below, built over one store and wired together
    apps        apply / diff / scale / stop / delete applications; where one stands
    nodes       registration, heartbeats, liveness; a node's blocking allocation query
    reports     agents' reports on allocations, checked against the lifecycle
    applier     runs the scheduler on a snapshot and commits its plan with a revision check
    meshfeed    mesh snapshots for every node, pushed as they change; acks; the registry
    telemetry   measured usage and proxy counters, in memory only
    views       read-only views the API serves
    waits       ``Watermark``: "wait until the version passes N", for every blocking query
    repo        typed reads and writes of the cluster's state in a ``StateStore``
    api/        ASGI handlers (translation only) under ``/v1`` with an OpenAPI document
    auth        the API token: created at first start, kept 0600 in the data directory
    errors      ``ServerError`` hierarchy (translated to HTTP statuses by the API)
    app         wires store, cluster and API into one runnable server
"""
