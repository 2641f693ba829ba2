"""What a TLS connection says about the server (``--tls``): protocol, cipher, ALPN, leaf certificate.

    describe(ssl_object)  # {"version": "TLSv1.3", "cipher": ..., "not_after": ..., "expires_in_days": 41, ...}

The certificate is read from its DER bytes with ``cryptography``, not from
``getpeercert()``: that returns ``{}`` when verification is off (``-k``), which is exactly
when a user most wants to see what the server presented. A certificate is parsed once per
distinct certificate (a small cache), not once per response on a kept-alive connection.
"""

from __future__ import annotations

import datetime
import functools
import math
import ssl
from typing import Any

_UTC = datetime.UTC


def describe(ssl_object: ssl.SSLObject | ssl.SSLSocket, *, now: float | None = None) -> dict[str, Any]:
    """The ``tls`` object of a record: protocol facts of the connection and its leaf certificate."""
    cipher = ssl_object.cipher()
    facts: dict[str, Any] = {
        "version": ssl_object.version(),
        "cipher": cipher[0] if cipher else None,
        "alpn": ssl_object.selected_alpn_protocol(),
    }
    der = ssl_object.getpeercert(binary_form=True)
    certificate = _certificate(der) if der else _NO_CERTIFICATE
    facts.update(certificate)
    not_after = certificate.get("not_after")
    if not_after is None:
        facts["expires_in_days"] = None
    else:
        moment = datetime.datetime.now(_UTC) if now is None else datetime.datetime.fromtimestamp(now, _UTC)
        expiry = datetime.datetime.fromisoformat(not_after)
        # Whole days left, rounded down: 0 on its last day, negative once expired.
        facts["expires_in_days"] = math.floor((expiry - moment).total_seconds() / 86400)
    return facts


_NO_CERTIFICATE: dict[str, Any] = {"subject": None, "issuer": None, "sans": [], "not_before": None, "not_after": None}


@functools.lru_cache(maxsize=1024)
def _certificate(der: bytes) -> dict[str, Any]:
    # Imported here: only --tls runs pay for loading cryptography.
    from cryptography import x509

    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return _NO_CERTIFICATE
    try:
        extension = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (x509.ExtensionNotFound, ValueError):
        sans: list[str] = []
    else:
        sans = [str(name.value) for name in extension.value]
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "sans": sans,
        "not_before": _iso(cert.not_valid_before_utc),
        "not_after": _iso(cert.not_valid_after_utc),
    }


def _iso(moment: datetime.datetime) -> str:
    return moment.astimezone(_UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
