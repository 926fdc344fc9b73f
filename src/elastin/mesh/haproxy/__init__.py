"""HAProxy as the data plane: ``render`` (snapshot -> haproxy.cfg, pure), ``runtime``
(snapshot diff -> runtime API commands, pure) and ``process`` (checking configs, talking to
the runtime socket; the only I/O here)."""
