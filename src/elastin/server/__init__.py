"""The Elastin server: the REST API, the scheduler loop and its plan applier.

Modules:
    errors      ``ServerError`` hierarchy (translated to HTTP statuses by the API)
    repo        typed reads and writes of the cluster's state in a ``StateStore``
    auth        the API token: created at first start, kept 0600 in the data directory
    applier     runs the scheduler on a snapshot and commits its plan with a revision check
    api         ASGI handlers (translation only) under ``/v1`` with an OpenAPI document
    app         wires store, applier and API into one runnable server
"""
