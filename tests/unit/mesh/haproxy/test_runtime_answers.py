"""How the runtime API's answers are read: HAProxy says no in a line of text, and a
refusal taken for a success leaves the proxy different from the snapshot (the answers are
HAProxy 2.6's own)."""

from __future__ import annotations

import pytest

from elastin.mesh.haproxy.runtime_client import refused


@pytest.mark.parametrize(
    "answer",
    [
        "No such server.\n\n",
        "No such backend.\n",
        "Already exists a server with the same name in backend.\n\n",
        "Server still has connections attached to it, cannot remove it.\n",
        "Only servers in maintenance mode can be deleted.\n",
        "Require 'backend/server'.\n",
        "'set server <srv> state' expects 'ready', 'drain' and 'maint'.\n",
        "unknown keyword 'bogus'.\n",
        "Empty weight string empty or preceded by garbage\n",
        "Unknown command: 'frobnicate', but maybe one of the following ones is a better match:",
    ],
)
def test_refusals_are_seen(answer: str) -> None:
    assert refused(answer)


@pytest.mark.parametrize(
    "answer",
    [
        "",
        "\n",
        "New server registered.\n\n",
        "Server deleted.\n",
        "no need to change the addr, port changed from '1' to '3' by 'stats socket command'\n",
        "IP changed from '127.0.0.1' to '127.0.0.2' by 'stats socket command'\n",
        "# pxname,svname,qcur,qmax,scur\nc_shop.api,e_a1-http,0,0,0\n",
    ],
)
def test_successes_are_not_refusals(answer: str) -> None:
    assert not refused(answer)
