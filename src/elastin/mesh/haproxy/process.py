"""The I/O around HAProxy: validate a configuration with ``haproxy -c`` and talk to the
runtime API socket. (Starting, reloading and supervising the proxy build on these.)

Exceptions: ``HaproxyError`` with HAProxy's own message.
"""

from __future__ import annotations

import shutil
import socket
import subprocess


class HaproxyError(Exception):
    """HAProxy rejected a configuration or a runtime command."""


def haproxy_binary() -> str | None:
    """The haproxy executable (Debian installs it in /usr/sbin, not always on PATH)."""
    return shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")


def check_config(path: str, binary: str = "haproxy") -> None:
    """Raise ``HaproxyError`` with HAProxy's messages when ``path`` is not a valid config."""
    proc = subprocess.run(
        [binary, "-c", "-q", "-f", path], capture_output=True, text=True, timeout=30
    )
    if proc.returncode != 0:
        raise HaproxyError(f"haproxy rejected {path}:\n{proc.stdout}{proc.stderr}".strip())


def runtime(socket_path: str, command: str, timeout: float = 5.0) -> str:
    """Send one command to the runtime API; return its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(socket_path)
        s.sendall(command.encode() + b"\n")
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    answer = b"".join(chunks).decode(errors="replace")
    lowered = answer.lower()
    if (
        "unknown command" in lowered
        or lowered.startswith(("no such", "error"))
        or ("not found" in lowered)
    ):
        raise HaproxyError(f"haproxy refused {command!r}: {answer.strip()}")
    return answer
