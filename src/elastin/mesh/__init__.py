"""The service mesh: how workloads find and call each other, through one HAProxy per node.

The server turns applications and their running instances into a ``MeshSnapshot`` for each
node; the node's agent applies it to its HAProxy, by runtime API commands when only endpoints
changed and by a hitless reload otherwise. docs/mesh.md describes it for users.

    model     pure, layer 2: the neutral mesh config of one node (listeners, clusters,
              endpoints, policies), the service registry it is built from, and the diff between
              two snapshots. The server builds snapshots with it; the client decodes them.
    haproxy   layer 3, the data plane: a snapshot rendered into haproxy.cfg and a diff into
              runtime API commands (both pure), the HAProxy process, its statistics and its
              access log. Only the agent imports it (a contract in pyproject.toml).
    dns       layer 3: the DNS server each agent runs (A and SRV answers for
              ``<service>.service.elastin``).

The activator, which holds calls to a service scaled to zero, is still to come. This
``__init__`` imports nothing, so that importing ``elastin.mesh.model`` loads no HAProxy code.
"""
