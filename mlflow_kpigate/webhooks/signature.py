"""Verify the signature and freshness of an MLflow registry webhook delivery (pure, no I/O).

MLflow (3.3 and later) signs each delivery with the webhook's shared secret: the
``X-MLflow-Signature`` header is ``v1,`` followed by the base64 HMAC-SHA256 of
``"{delivery_id}.{timestamp}.{body}"``, where ``delivery_id`` and ``timestamp`` (Unix
seconds) are sent in ``X-MLflow-Delivery-Id`` and ``X-MLflow-Timestamp`` and ``body`` is the
raw request body. The HMAC covers the timestamp and the delivery id, so checking their
freshness and uniqueness after the signature stops replays of a captured request.

The MAC is computed over the raw bytes rather than a decoded string so that a body that is
not valid UTF-8 is simply rejected as unsigned instead of raising. Several signatures
separated by spaces are accepted (any one matching suffices), the form the Standard
Webhooks convention uses while a secret is being rotated.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "DELIVERY_ID_HEADER",
    "SIGNATURE_HEADER",
    "SIGNATURE_VERSION",
    "TIMESTAMP_HEADER",
    "Rejected",
    "SignedDelivery",
    "check_timestamp",
    "sign",
    "signature_matches",
    "verify_delivery",
]

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_ID_HEADER = "X-MLflow-Delivery-Id"
SIGNATURE_VERSION = "v1"
_MAX_DELIVERY_ID = 200  # MLflow sends a UUID; a longer id is not one of its deliveries


class Rejected(Exception):
    """A delivery that must not be acted on; ``status`` is the HTTP status to answer with.

    The message is one line saying what is wrong and, where the sender can act on it, what
    would fix it. It never contains the secret or the signature.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class SignedDelivery:
    """A delivery whose signature and timestamp were verified."""

    delivery_id: str
    timestamp: int
    body: bytes


def _mac(secret: str, delivery_id: str, timestamp: str, body: bytes) -> bytes:
    signed = delivery_id.encode() + b"." + timestamp.encode() + b"." + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).digest()


def sign(secret: str, delivery_id: str, timestamp: str | int, body: bytes) -> str:
    """The ``X-MLflow-Signature`` value MLflow would send for this delivery.

    Useful for sending a test delivery to the bridge by hand (see docs/webhook-bridge.md).
    """
    mac = _mac(secret, delivery_id, str(timestamp), body)
    return f"{SIGNATURE_VERSION},{base64.b64encode(mac).decode()}"


def signature_matches(secret: str, delivery_id: str, timestamp: str, body: bytes,
                      header: str) -> bool:
    """True when one of the ``v1,<base64>`` signatures in ``header`` is valid for the content.

    The comparison is constant-time (``hmac.compare_digest``) so that response timing does
    not reveal how much of a forged signature was right.
    """
    expected = _mac(secret, delivery_id, timestamp, body)
    matched = False
    for candidate in header.split():
        version, sep, encoded = candidate.partition(",")
        if not sep or version != SIGNATURE_VERSION:
            continue
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        # No early exit: every candidate is compared, whatever the first one's outcome.
        matched = hmac.compare_digest(given, expected) or matched
    return matched


def check_timestamp(timestamp: str, now: float, max_age: float) -> int:
    """The header's Unix timestamp, if it is within ``max_age`` seconds of ``now``.

    Raises :class:`Rejected` (400) for a value that is not whole seconds, and (401) for a
    timestamp older than ``max_age`` or further than ``max_age`` in the future.
    """
    text = timestamp.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        raise Rejected(400, f"{TIMESTAMP_HEADER}: {timestamp[:40]!r} is not Unix seconds; "
                            "send the delivery time as an integer")
    value = int(text)
    if abs(now - value) > max_age:
        age = now - value
        when = f"{age:.0f}s old" if age > 0 else f"{-age:.0f}s in the future"
        raise Rejected(401, f"{TIMESTAMP_HEADER}: delivery is {when}, outside the "
                            f"{max_age:g}s window; check the clocks of MLflow and the bridge")
    return value


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:  # plain dicts are case-sensitive; HTTP header names are not
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    if value is None or not value.strip():
        raise Rejected(401, f"{name}: header missing; register the MLflow webhook with the "
                            "bridge's secret so that deliveries are signed")
    return value.strip()


def verify_delivery(headers: Mapping[str, str], body: bytes, secret: str, *, now: float,
                    max_age: float) -> SignedDelivery:
    """Check the three MLflow webhook headers against ``body`` and ``secret``.

    Order matters: the signature is checked before the timestamp's age, so an unsigned
    request learns nothing about the bridge's clock. Raises :class:`Rejected` with the HTTP
    status to answer with (401 unsigned, forged or stale; 400 malformed headers).
    """
    if not secret:
        raise ValueError("secret must not be empty")
    signature = _header(headers, SIGNATURE_HEADER)
    delivery_id = _header(headers, DELIVERY_ID_HEADER)
    timestamp = _header(headers, TIMESTAMP_HEADER)
    if len(delivery_id) > _MAX_DELIVERY_ID or not delivery_id.isprintable():
        raise Rejected(400, f"{DELIVERY_ID_HEADER}: not a delivery id (at most "
                            f"{_MAX_DELIVERY_ID} printable characters)")
    if not signature_matches(secret, delivery_id, timestamp, body, signature):
        raise Rejected(401, f"{SIGNATURE_HEADER}: signature does not match; the webhook's "
                            "secret must equal the bridge's --secret-env value")
    return SignedDelivery(delivery_id, check_timestamp(timestamp, now, max_age), body)
