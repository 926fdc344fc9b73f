"""Typed HTTP client of the server's API, used by the CLI, the SDK and the agent.

``discovery`` finds a local server (URL and token) from the environment or the data
directory; ``local`` starts one in the background (``elastin daemon``) when there is none;
``http`` holds ``Client`` (synchronous, for the CLI and SDK) and ``AsyncClient``
(for the agent); ``errors`` their exceptions.
"""

from elastin.client.discovery import default_data_dir, find_server
from elastin.client.errors import ApiError, ClientError, DaemonFailed, ServerUnavailable
from elastin.client.http import AsyncClient, Client

__all__ = [
    "ApiError",
    "AsyncClient",
    "Client",
    "ClientError",
    "DaemonFailed",
    "ServerUnavailable",
    "default_data_dir",
    "find_server",
]
