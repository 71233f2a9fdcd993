"""Inactive-client expiration shared by the SMP router and the XFTP server (the reference's
``Server/Expiration.hs`` ``ExpirationConfig`` as used by ``inactiveClientExpiration``).

``[INACTIVE_CLIENTS] disconnect = on`` closes connections idle for longer than ``ttl``, checked
every ``check_interval`` seconds: the SMP router only those without subscriptions (smp.md §3.7,
``disconnectTransport``), the XFTP server any (xftp-ntf.md §1.13, ``expireInactiveClient``).
Pure: the runtimes keep the activity times and the timers.
"""

from __future__ import annotations

import attrs

DEFAULT_INACTIVE_CLIENT_TTL = 21600  # seconds (defaultInactiveClientExpiration: 6 hours)
DEFAULT_INACTIVE_CLIENT_CHECK = 3600  # seconds (every hour)


@attrs.frozen
class InactiveClients:
    """``[INACTIVE_CLIENTS] disconnect = on`` (``inactiveClientExpiration``): every
    ``check_interval`` seconds a connection whose last activity was more than ``ttl`` seconds
    ago is closed. Activity: XFTP — the start of any HTTP/2 request (handshake, PING, any
    command); SMP — any block received or sent, and the router keeps connections that hold a
    subscription (smp.md §3.7)."""

    ttl: float = DEFAULT_INACTIVE_CLIENT_TTL
    check_interval: float = DEFAULT_INACTIVE_CLIENT_CHECK


def client_inactive(active_at: float, now: float, ttl: float) -> bool:
    """Whether a connection last active at ``active_at`` is expired at ``now`` (``activeAt <
    now - ttl``, as ``expireInactiveClient`` and ``disconnectTransport``; the reference compares
    whole seconds, so it may disconnect up to a second later than this)."""
    return active_at < now - ttl


__all__ = ["DEFAULT_INACTIVE_CLIENT_CHECK", "DEFAULT_INACTIVE_CLIENT_TTL", "InactiveClients", "client_inactive"]
