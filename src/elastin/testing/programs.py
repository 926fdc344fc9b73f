"""Small workload programs for tests that run real instances: each is Python source for
``python -c``, so a spec can carry it in its ``command``."""

from __future__ import annotations

ECHO_ALLOC_ID = (
    "import http.server, os\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        b = os.environ['ELASTIN_ALLOC_ID'].encode()\n"
    "        self.send_response(200); self.send_header('Content-Length', str(len(b)))\n"
    "        self.end_headers(); self.wfile.write(b)\n"
    "    def log_message(self, *a): pass\n"
    "http.server.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), H)"
    ".serve_forever()\n"
)
"""An HTTP server on ``$PORT`` that answers every GET with its allocation id (which instance
a request reached, e.g. through the mesh)."""
