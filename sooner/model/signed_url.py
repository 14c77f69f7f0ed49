"""Signed trigger URLs (``sooner sign JOB``): ``/t/<token>`` queues a run of JOB with the signed data.

A token is ``<body>.<mac>``, both base64url without padding (so never ``/``,
``+`` or ``=``: a token is one URL path segment as it is). ``body`` is compact
JSON ``{"j": job, "d": data, "e": expiry (Unix seconds)}``; ``mac`` is
HMAC-SHA256 over ``body`` under a key derived from the site's ``secret_key``
for this use only (:func:`signing_key`), never the session key itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sooner.errors import SoonerError
from sooner.model.data import check_data

MAX_DATA_BYTES = 4 * 1024  # it travels in the URL
MAX_TOKEN_CHARS = 8 * 1024
MAX_EXPIRES = timedelta(days=366)
MAX_WAIT_S = 60
_LABEL = b"sooner signed trigger URL v1"
_DURATION = re.compile(r"(\d{1,6})([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class InvalidSignedUrl(SoonerError, ValueError):
    """A signed URL that is tampered with, expired or malformed, or a request to sign one that is not valid."""


@dataclass(frozen=True)
class SignedRequest:
    """What a valid token asks: a run of ``job`` with ``data``; the URL is valid until ``expires_at``."""

    job: str
    data: Any
    expires_at: datetime


def signing_key(secret_key: str) -> bytes:
    """The key that signs trigger URLs: HMAC-SHA256 of a fixed label under the site's secret_key."""
    if not secret_key:
        raise InvalidSignedUrl("the site has no secret_key (config.json): it signs trigger URLs")
    return hmac.new(secret_key.encode(), _LABEL, hashlib.sha256).digest()


def parse_expires(text: str) -> timedelta:
    """``90s``, ``30m``, ``12h``, ``7d`` or ``2w`` as a duration (at most a year)."""
    match = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise InvalidSignedUrl(f"expiry {str(text)[:30]!r} is not a duration such as 90s, 30m, 12h, 7d or 2w")
    duration = timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])
    if not timedelta(0) < duration <= MAX_EXPIRES:
        raise InvalidSignedUrl("a signed URL expires within 1 s to 366 days")
    return duration


def sign(key: bytes, job: str, data: Any, expires_at: datetime) -> str:
    """A token for a run of ``job`` with ``data`` (JSON, at most 4 KiB) valid until ``expires_at``."""
    check_data(data, "the signed data", max_bytes=MAX_DATA_BYTES)
    body = json.dumps({"j": job, "d": data, "e": int(expires_at.timestamp())}, separators=(",", ":"),
                      sort_keys=True).encode()
    encoded = _b64(body)
    return f"{encoded}.{_b64(_mac(key, encoded))}"


def verify(key: bytes, token: str, now: datetime) -> SignedRequest:
    """The request a token signs; :class:`InvalidSignedUrl` when it is malformed, tampered with or expired."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or token.count(".") != 1:
        raise InvalidSignedUrl("this is not a signed trigger URL")
    encoded, mac = token.split(".")
    try:
        sent = _unb64(mac)
    except (binascii.Error, ValueError):
        raise InvalidSignedUrl("this is not a signed trigger URL") from None
    if not hmac.compare_digest(_mac(key, encoded), sent):
        raise InvalidSignedUrl("the URL's signature does not match: it was changed, or signed for another site")
    body = json.loads(_unb64(encoded))  # signed by us: well-formed
    expires_at = datetime.fromtimestamp(int(body["e"]), tz=timezone.utc)
    if now >= expires_at:
        raise InvalidSignedUrl(f"this URL expired at {expires_at:%Y-%m-%d %H:%M:%S} UTC")
    return SignedRequest(job=str(body["j"]), data=body.get("d"), expires_at=expires_at)


def wait_seconds(text: str | None) -> float:
    """``?wait=N``: seconds to wait for the run's end, 0-60 (none: 0)."""
    if text is None or text == "":
        return 0.0
    try:
        value = float(text)
    except ValueError:
        raise InvalidSignedUrl(f"wait={text[:20]!r} is not a number of seconds (0-{MAX_WAIT_S})") from None
    if not 0 <= value <= MAX_WAIT_S:
        raise InvalidSignedUrl(f"wait is 0-{MAX_WAIT_S} seconds, not {text[:20]}")
    return value


def _mac(key: bytes, encoded: str) -> bytes:
    return hmac.new(key, encoded.encode(), hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
