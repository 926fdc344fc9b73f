"""The node agent: fingerprints its node, registers with the server, and runs the
allocations placed on it through drivers (``agent.drivers``): ``agent`` (main loop,
``Reporter``), ``reconcile`` (what should run here, pure), ``runner`` (one allocation's
life), ``restart`` (the restart policy, pure), ``mesh`` (the node's proxy), ``logfiles``."""
