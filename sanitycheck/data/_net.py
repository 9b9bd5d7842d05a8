"""A quick, bounded "are we online?" probe so that offline downloads fail fast instead of hanging."""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlparse


def reachable(url: str, timeout: float = 3.0) -> bool:
    """True if a TCP connection to ``url``'s host can be opened within ``timeout`` seconds.

    ``SANITYCHECK_OFFLINE=1`` forces False. DNS lookups ignore socket timeouts, so the
    probe runs in a daemon thread that is abandoned after ``timeout``.
    """
    if os.environ.get("SANITYCHECK_OFFLINE", "").strip() not in ("", "0", "false", "False"):
        return False
    parsed = urlparse(url)
    host = parsed.hostname
    if not host:
        return False
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    result = {"ok": False}

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result["ok"] = True
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return result["ok"]
