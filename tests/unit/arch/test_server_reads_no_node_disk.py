"""The server opens no file under an agent's directory: a node's logs come through its agent
(``server/relay.py``), and no node attribute names a path on the node."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[3] / "src" / "elastin"

FILE_CALLS = {"open", "read_bytes", "read_text", "stat", "exists", "iterdir", "glob"}


def test_no_server_module_reads_a_nodes_files() -> None:
    found = []
    for path in sorted((SRC / "server").rglob("*.py")):
        text = path.read_text()
        for word in ("agent.alloc_root", "agent.mesh_dir", "haproxy.log"):
            if word in text:
                found.append(f"{path.relative_to(SRC)} names {word}")
        if path.name in ("auth.py", "app.py"):  # the server's own token and server.json
            continue
        for node in ast.walk(ast.parse(text)):
            func = node.func if isinstance(node, ast.Call) else None
            if isinstance(func, ast.Attribute) and func.attr in FILE_CALLS:
                found.append(f"{path.relative_to(SRC)}:{func.lineno} calls .{func.attr}")
    assert not found, "\n".join(found)


def test_agents_publish_no_paths() -> None:
    text = (SRC / "agent" / "agent.py").read_text()
    assert "agent.alloc_root" not in text and "agent.mesh_dir" not in text
