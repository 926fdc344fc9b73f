"""HAProxy as the data plane: ``render`` (snapshot -> haproxy.cfg, pure), ``runtime``
(snapshot diff -> runtime API commands, pure), ``runtime_client`` (the one asynchronous
client of the runtime API socket), ``process`` (checking configs, starting and reloading
HAProxy) and ``accesslog`` (draining the access log ring into the node's log file)."""
