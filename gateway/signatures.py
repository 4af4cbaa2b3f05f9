"""Standard Webhooks signatures: `whsec_<base64>` secrets, v1 HMAC-SHA256, key rotation."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence

from gateway.errors import ConfigError, GatewayError

PREFIX = "whsec_"
SIGNATURE_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


class SignatureError(GatewayError):
    """A webhook request is unsigned, wrongly signed, or outside the time window (401)."""


def secret_keys(secret: str) -> tuple[bytes, ...]:
    """The HMAC keys of `webhook.secret`: one `whsec_<base64>` secret, or several separated by
    spaces while the gateway's own secret is rotated (the new and the old one: a request
    signed with either is taken). Each key is the base64-decoded bytes after `whsec_`."""
    parts = secret.split()
    keys = []
    for n, part in enumerate(parts or [secret], 1):
        which = f"the {_ordinal(n)} secret: " if len(parts) > 1 else ""
        if not part.startswith(PREFIX):
            raise ConfigError("webhook.secret", f"{which}must be written {PREFIX}<base64>")
        try:
            key = base64.b64decode(part[len(PREFIX):], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ConfigError("webhook.secret",
                              f"{which}the part after {PREFIX} is not base64") from exc
        if not key:
            raise ConfigError("webhook.secret", f"{which}the key is empty")
        keys.append(key)
    return tuple(keys)


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def sign(key: bytes, msg_id: str, timestamp: int | str, body: bytes) -> str:
    """The `webhook-signature` value for one key: `v1,<base64 HMAC>`."""
    content = msg_id.encode() + b"." + str(timestamp).encode() + b"." + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(keys: Sequence[bytes], headers: Mapping[str, str], body: bytes, now: float,
           tolerance_s: int) -> str:
    """Checks the three headers against each key; returns the webhook-id. Raises
    SignatureError."""
    msg_id = headers.get("webhook-id")
    stamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not msg_id or not stamp or not signatures:
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature")
    # ASCII digits only: int() would take " 7", "1_000", "+7" and other scripts' digits
    if not (stamp.isascii() and stamp.isdigit()):
        raise SignatureError("webhook-timestamp is not a whole number of seconds")
    timestamp = int(stamp)
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError(f"webhook-timestamp is outside the {tolerance_s}s window")
    # over the header as it came; several space-separated signatures allow the sender's key
    # rotation, several keys the gateway's: every pair compared, each in constant time
    expected = [sign(key, msg_id, stamp, body).encode() for key in keys]
    matched = False
    for candidate in signatures.split():
        if candidate.startswith("v1,"):
            for one in expected:
                matched |= hmac.compare_digest(candidate.encode(), one)
    if not matched:
        raise SignatureError("no valid v1 signature")
    return msg_id
