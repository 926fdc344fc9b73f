"""Shared by the end-to-end tests: a small HTTP service for a spec's ``command`` and a GET
through the node's HAProxy that says only its status."""

from __future__ import annotations

import urllib.error
import urllib.request


def http_service(slow: float) -> str:
    """Python source of a service on ``$PORT`` that answers ``ok`` at once, and after
    ``slow`` seconds on ``/slow``; for ``command: [python, -c, …]``."""
    return (
        "import http.server, os, time\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        f"        if self.path == '/slow': time.sleep({slow:g})\n"
        "        self.send_response(200); self.send_header('Content-Length', '2')\n"
        "        self.end_headers(); self.wfile.write(b'ok')\n"
        "    def log_message(self, *a): pass\n"
        "http.server.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), H)"
        ".serve_forever()\n"
    )


def status(url: str, timeout: float = 30) -> int:
    """The status of a GET of ``url`` (an error's too); 0 when there is no answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0
