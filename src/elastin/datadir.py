"""The data directory's own protection, shared by the server and the agent: made ``0700``
when new, empty or plainly Elastin's; refused when it is a directory others use (``/tmp``, a
home), which a ``chmod`` would break for everyone else."""

from __future__ import annotations

import os
import stat
from pathlib import Path

# what Elastin keeps there (any one of them says the directory is Elastin's)
MARKERS = (
    "token",
    "state.db",
    "state.db.reserve",
    "server.json",
    "agent",
    "allocs",
    "mesh",
    "elastin.log",  # `up --detach`'s daemon log
    "sdk-server.log",  # the SDK's
)


def ensure_private(path: Path) -> None:
    """Make ``path`` a directory only its owner (root) may enter. Raises ``OSError`` (with
    the path, what is wrong and the fix) for an existing directory open to others that holds
    files but nothing of Elastin's (``/tmp``, a home); an empty one (a file system mounted
    for it, whose root is often 1777) is made 0700."""
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    else:
        os.chmod(path, 0o700)  # mkdir's mode passes through the umask
        return
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(20, "the data directory is not a directory", str(path))
    if stat.S_IMODE(st.st_mode) & 0o077 == 0:
        return
    names = set(os.listdir(path)) - {"lost+found"}
    if names and not names & set(MARKERS):  # others' files: a directory in use by others
        raise PermissionError(
            13,
            "the data directory is shared with others (Elastin would have to make it 0700); "
            "give it a directory of its own, e.g. ELASTIN_DATA_DIR=/var/lib/elastin",
            str(path),
        )
    os.chmod(path, 0o700)
