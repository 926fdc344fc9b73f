"""The node agent: fingerprints its node, registers with the server, and runs the
allocations placed on it through drivers (``agent.drivers``)."""
