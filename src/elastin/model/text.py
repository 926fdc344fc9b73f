"""Text that came from a spec or a workload, made fit for an event, an error or a log line.

``printable(text, limit)``: every character that is not printable (control characters such
as terminal escapes and newlines; format characters such as bidirectional overrides) shown as
a Python escape (``\\x1b``), at most ``limit`` characters (``…`` when cut). A process's
command line and a path in a spec are their authors' to choose: unescaped, they could write to
the terminal of whoever reads the message. Pure.
"""

from __future__ import annotations


def printable(text: str, limit: int = 200) -> str:
    """``text`` escaped and bounded (see the module)."""
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: limit + 1])
    return out if len(out) <= limit else out[: limit - 1] + "…"
