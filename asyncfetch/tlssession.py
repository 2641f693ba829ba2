"""TLS sessions kept for resumption: per origin, and per server address for the names its certificate covers.

A resumed TLS handshake skips the certificate (no chain to send, parse and verify, no
signature to check): on this machine it costs the client about half of a full one. Two
caches, both bounded:

* per origin: the last session of each host that has requests coming, offered to its next
  connection (the usual client behaviour);
* per server address: one session from a full, verified handshake with ``(address, port)``,
  with the DNS names its certificate was valid for. A new connection to *another* host at
  that address resumes it when the certificate covers the new name. RFC 8446 §4.6.1 allows
  exactly this ("Clients MUST only resume if the new SNI value is valid for the server
  certificate presented in the original session"); it is what lists of many hosts on one
  server or CDN (``*.example.com``, shared certificates) are made of. The server decides: one
  that does not know the ticket (other keys behind the address) answers with a full
  handshake, the certificate is then verified as always, and the address's session is
  replaced by the new one.

Only verified sessions are shared (never with ``-k``), and only for names the certificate
itself lists (its subject alternative names, a wildcard standing for one whole left-most
label): a resumed handshake has no certificate to check the name against, so that check is
made here, before the session is offered.
"""

from __future__ import annotations

import ssl
import time
from collections import OrderedDict
from typing import Any

from asyncfetch.http import Origin

# Sessions kept, per cache (a few KB each: ticket and peer certificate).
MAX_SESSIONS = 1024
# A server address's session is taken again from a later connection after this long, so
# that the ticket offered stays well within its lifetime (servers give hours; nginx 5 min).
SHARED_REFRESH = 60.0


class SessionCache:
    """Which session a new TLS connection offers, and which sessions to keep."""

    def __init__(self, *, share: bool, clock: Any = time.monotonic) -> None:
        self._share = share
        self._clock = clock
        self._by_origin: OrderedDict[Origin, ssl.SSLSession] = OrderedDict()
        # (address, port) -> (session, names its certificate covers, when it was taken)
        self._by_address: OrderedDict[tuple[str, int], tuple[ssl.SSLSession, frozenset[str], float]] = OrderedDict()

    def offer(self, origin: Origin, address: str) -> tuple[ssl.SSLSession | None, bool]:
        """The session a connection to ``origin`` at ``address`` offers, and whether it is another host's."""
        own = self._by_origin.get(origin)
        if own is not None:
            return own, False
        if self._share:
            shared = self._by_address.get((address, origin.port))
            if shared is not None and covers(shared[1], origin.host):
                return shared[0], True
        return None, False

    def refused(self, address: str, port: int) -> None:
        """The server at ``address`` did not resume an offered session: forget it, take the next one."""
        self._by_address.pop((address, port), None)

    def wants(self, remote: tuple[str, int] | None, *, for_origin: bool) -> bool:
        """Whether a finished connection's session is worth reading (reading one copies it: not free)."""
        return for_origin or self._wants_shared(remote)

    def keep(self, tls: ssl.SSLObject, origin: Origin, remote: tuple[str, int] | None, *, for_origin: bool) -> None:
        """Keep the session of a connection whose response is complete (TLS 1.3 tickets come after the handshake)."""
        session = tls.session
        if session is None:
            return
        if for_origin:
            _put(self._by_origin, origin, session)
        # Shared: TLS 1.3 tickets only, where the server takes the name from each handshake
        # (a TLS 1.2 session stays bound to the name it was made for).
        if remote is not None and session.has_ticket and tls.version() == "TLSv1.3" and self._wants_shared(remote):
            names = dns_names(tls.getpeercert())
            if names:
                _put(self._by_address, remote, (session, names, self._clock()))

    def _wants_shared(self, remote: tuple[str, int] | None) -> bool:
        if not self._share or remote is None:
            return False
        shared = self._by_address.get(remote)
        return shared is None or self._clock() - shared[2] > SHARED_REFRESH


def _put(cache: OrderedDict[Any, Any], key: Any, value: Any) -> None:
    cache[key] = value
    cache.move_to_end(key)
    if len(cache) > MAX_SESSIONS:
        cache.popitem(last=False)


def dns_names(certificate: dict[str, Any] | None) -> frozenset[str]:
    """The DNS names of a verified peer certificate (``getpeercert()``), lower case; empty when unverified."""
    if not certificate:
        return frozenset()
    return frozenset(value.lower() for kind, value in certificate.get("subjectAltName", ()) if kind == "DNS")


def covers(names: frozenset[str], host: str) -> bool:
    """Whether a certificate for ``names`` is valid for ``host``: the name itself, or ``*.`` and its parent.

    A wildcard stands for exactly one whole left-most label (RFC 6125 §6.4.3, as browsers and
    OpenSSL's X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS read it): ``*.a.com`` covers ``b.a.com``,
    neither ``a.com`` nor ``c.b.a.com``.
    """
    host = host.lower().rstrip(".")
    if host in names:
        return True
    label, dot, parent = host.partition(".")
    return bool(label and dot and "." in parent) and f"*.{parent}" in names
