"""TLS for the SDK: the client ``SSLContext`` of a ``wharfs://`` URL, and clear errors.

``wharfs://host`` (port 5681 by default) connects with TLS: the broker's certificate is
verified against the system CAs, or ``?cafile=``, and its name against the URL's host
(SNI and hostname check on).  ``?certfile=&keyfile=`` present a client certificate.  An
``ssl.SSLContext`` passed as ``connect(ssl=...)`` replaces all of that.

A failed TLS handshake raises :class:`TlsError` (a ``ConnectionLost`` that is not
retriable: the same certificates fail the same way again) whose message says which side
refused what, instead of OpenSSL's reason alone.
"""

from __future__ import annotations

import ssl
from typing import Final

from wharf.protocol.errors import ConnectionLost, InvalidArgument, WharfError

from .url import DEFAULT_PORT, DEFAULT_TLS_PORT, ConnectParams

# OpenSSL's reasons when the server's answer is not TLS at all (a plain port).
_NOT_TLS_REASONS: Final = frozenset(
    {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "UNKNOWN_PROTOCOL", "PACKET_LENGTH_TOO_LONG"}
)


# ConnectionLost is built from the error table (a variable to mypy); TlsError is one.
class TlsError(ConnectionLost):  # type: ignore[misc,valid-type]
    """The TLS handshake with the broker failed (certificate, CA, or not a TLS port)."""

    retriable = False


def client_context(params: ConnectParams, context: ssl.SSLContext | None) -> ssl.SSLContext | None:
    """The context to connect with: ``context`` as given, one built from the URL's
    ``cafile``/``certfile``/``keyfile`` for ``wharfs://``, or None (plain)."""
    if context is not None:
        if not params.tls:
            raise InvalidArgument(
                f"ssl= needs a wharfs:// URL (TLS, port {DEFAULT_TLS_PORT} by default); "
                f"wharf:// is the plain port ({DEFAULT_PORT})"
            )
        if params.cafile or params.certfile or params.keyfile:
            raise InvalidArgument(
                "give either ssl= or the URL's cafile/certfile/keyfile options, not both"
            )
        return context
    if not params.tls:
        return None
    try:
        ctx = ssl.create_default_context(cafile=params.cafile)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidArgument(f"cafile {params.cafile!r} cannot be loaded: {exc}") from None
    if params.certfile is not None:
        try:
            ctx.load_cert_chain(params.certfile, params.keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise InvalidArgument(
                f"certfile {params.certfile!r} / keyfile {params.keyfile!r} cannot be loaded: {exc}"
            ) from None
    return ctx


def connect_error(exc: OSError, where: str, host: str) -> TlsError | None:
    """A clear error for a TLS failure while connecting, or None if ``exc`` is none."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return TlsError(
            f"TLS: the broker at {where} presented a certificate that failed verification: "
            f"{exc.verify_message} (the CA is given by ?cafile= or ssl=; the name checked "
            f"is {host!r})",
            details={"tls": "server_certificate", "reason": exc.verify_message},
        )
    if isinstance(exc, ssl.SSLError):
        return tls_failure(exc, where)
    return None


def tls_failure(exc: ssl.SSLError, where: str) -> TlsError:
    """A clear error for an SSL error during or right after the TLS handshake."""
    reason = exc.reason or ""
    if reason in _NOT_TLS_REASONS:
        return TlsError(
            f"TLS: the broker at {where} did not answer with TLS ({reason}): is this the "
            f"plain port? wharfs:// is for the TLS port ({DEFAULT_TLS_PORT} by default), "
            f"wharf:// for the plain one ({DEFAULT_PORT})",
            details={"tls": "not_tls", "reason": reason},
        )
    if "ALERT" in reason and "CERTIFICATE" in reason or "UNKNOWN_CA" in reason:
        return TlsError(
            f"TLS: the broker at {where} refused the client certificate ({reason}): give "
            "one its tls_ca_file trusts (?certfile=&keyfile= or ssl=)",
            details={"tls": "client_certificate", "reason": reason},
        )
    return TlsError(
        f"TLS handshake with the broker at {where} failed: {reason or exc}",
        details={"tls": "handshake", "reason": reason},
    )


def closed_after_handshake(where: str) -> TlsError:
    """The broker closed a TLS connection before its first Wharf frame.  With TLS 1.3 the
    client's side of the handshake is done before the broker has checked the client
    certificate, and a broker that refuses it closes without an alert."""
    return TlsError(
        f"TLS: the broker at {where} closed the connection before answering: it probably "
        "refused the client certificate (none given, or not signed by its tls_ca_file); "
        "give one with ?certfile=&keyfile= or ssl= (the broker's log says why)",
        details={"tls": "client_certificate"},
    )


def plain_to_tls_hint(where: str) -> WharfError:
    """The broker closed a plain connection before answering: likely its TLS port."""
    return ConnectionLost(
        f"the broker at {where} closed the connection without answering the Wharf "
        f"handshake: if it is a TLS port ({DEFAULT_TLS_PORT} by default), connect with a "
        "wharfs:// URL",
        details={"host_port": where, "hint": "wharfs"},
    )
