"""Fetch a query image from a URL, safely: a timeout, a size cap, a content-type check, and no request to a loopback,
link-local, private or otherwise non-public address (server-side request forgery), at any redirect hop.

Every host name is resolved once, every address it resolves to is checked, and the connection goes to the checked
address (the name is kept for the ``Host`` header and TLS), so a DNS answer that changes between the check and the
connection (DNS rebinding) cannot reach an internal address. Redirects are followed by hand, each hop checked again.

Only the standard library is used; the caller decodes the bytes (``lens.images.open_image``).
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from lens.errors import LensError

ALLOWED_TYPES = ("image/jpeg", "image/png", "image/webp")
"""Content types accepted from a URL (what an upload accepts)."""
MAX_BYTES = 20 * 2**20
"""Default size cap of a fetched image (the dashboard's upload limit)."""
TIMEOUT_S = 10.0
MAX_REDIRECTS = 5
MAX_URL_CHARS = 2048
ALLOW_PRIVATE_ENV = "LENS_ALLOW_PRIVATE_URLS"
"""Set to 1 to allow URLs on private networks (an intranet image server); loopback stays refused unless tests ask."""

_USER_AGENT = "lens-image-fetch/1"


class UrlFetchError(LensError):
    """A URL that cannot be used as a query image: refused, unreachable, too big, or not an image."""


@dataclass(frozen=True)
class Fetched:
    """A fetched image: its bytes, the content type the server declared, and the final URL after redirects."""

    data: bytes
    content_type: str
    url: str


def check_url(url: str) -> tuple[str, str, int, str]:
    """``(scheme, host, port, path_and_query)`` of an ``http``/``https`` URL.

    Raises:
        UrlFetchError: not a string, too long, another scheme, credentials in the URL, or no host.
    """
    if not isinstance(url, str) or not url.strip():
        raise UrlFetchError("Type the address of a product photo, e.g. https://example.com/photo.jpg.")
    url = url.strip()
    if len(url) > MAX_URL_CHARS:
        raise UrlFetchError(f"That URL is {len(url):,} characters long; addresses of up to {MAX_URL_CHARS:,} are used.")
    if any(ord(c) < 32 or c == " " for c in url):
        raise UrlFetchError("That URL contains spaces or control characters; copy the image address again.")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise UrlFetchError(f"Only http:// and https:// image addresses are fetched, not {parts.scheme or 'this'!r}.")
    if parts.username or parts.password:
        raise UrlFetchError("Image addresses with a user name or password are not fetched.")
    host = parts.hostname
    if not host:
        raise UrlFetchError(f"{url!r} names no host; copy the full image address (https://…).")
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        raise UrlFetchError(f"{url!r} has an invalid port.") from None
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return parts.scheme.lower(), host, port, path


def _refusal(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, *, allow_private: bool, allow_loopback: bool
) -> str | None:
    """Why ``address`` is refused, or ``None`` when it may be contacted."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return None if allow_loopback else "a loopback address (this machine)"
    if address.is_link_local:
        return "a link-local address (e.g. a cloud metadata service)"
    if address.is_multicast or address.is_unspecified or address.is_reserved:
        return "a reserved address"
    if address.is_private or not address.is_global:
        return None if allow_private else "a private-network address"
    return None


def resolve_public(host: str, port: int, *, allow_private: bool = False, allow_loopback: bool = False) -> str:
    """The address to connect to for ``host``: every address the name resolves to must be allowed.

    Raises:
        UrlFetchError: the name does not resolve (offline?), or one of its addresses is refused.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UrlFetchError(
            f"Cannot resolve {host!r} ({exc}): this machine may be offline, or the address is mistyped. "
            "Download the photo and upload it instead."
        ) from None
    addresses = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        why = _refusal(address, allow_private=allow_private, allow_loopback=allow_loopback)
        if why is not None:
            raise UrlFetchError(
                f"Refused to fetch from {host!r}: it resolves to {address}, {why}. lens fetches query images from "
                f"public addresses only (set {ALLOW_PRIVATE_ENV}=1 to allow an intranet image server)."
            )
        addresses.append(str(address))
    if not addresses:
        raise UrlFetchError(f"{host!r} resolves to no address.")
    return addresses[0]


def _connection(scheme: str, host: str, port: int, address: str, timeout: float) -> http.client.HTTPConnection:
    """A connection to ``address`` that speaks to ``host`` (Host header, TLS server name and certificate check)."""
    conn: http.client.HTTPConnection
    if scheme == "https":
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ssl.create_default_context())
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)

    def pinned(_address, timeout=timeout, source_address=None):  # noqa: ANN001, ANN202
        return socket.create_connection((address, port), timeout, source_address)

    conn._create_connection = pinned  # type: ignore[attr-defined]  # the checked address, not a second lookup
    return conn


def fetch_image_bytes(
    url: str,
    *,
    max_bytes: int = MAX_BYTES,
    timeout: float = TIMEOUT_S,
    allow_private: bool | None = None,
    allow_loopback: bool = False,
) -> Fetched:
    """Download the image at ``url`` (``http``/``https``), following up to :data:`MAX_REDIRECTS` redirects.

    Args:
        max_bytes: refuse a body larger than this (declared by Content-Length or met while reading).
        timeout: seconds for the connection and for each read.
        allow_private: allow private-network addresses; default from ``$LENS_ALLOW_PRIVATE_URLS``.
        allow_loopback: allow this machine's addresses (tests serve images from 127.0.0.1).

    Raises:
        UrlFetchError: with a message that says what to do, for every failure (nothing else escapes).
    """
    if allow_private is None:
        allow_private = os.environ.get(ALLOW_PRIVATE_ENV, "").strip().lower() in ("1", "true", "yes")
    current = url.strip() if isinstance(url, str) else url
    for _hop in range(MAX_REDIRECTS + 1):
        scheme, host, port, path = check_url(current)
        address = resolve_public(host, port, allow_private=allow_private, allow_loopback=allow_loopback)
        conn = _connection(scheme, host, port, address, timeout)
        try:
            try:
                conn.request("GET", path, headers={"User-Agent": _USER_AGENT, "Accept": ", ".join(ALLOWED_TYPES)})
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                raise UrlFetchError(
                    f"Could not fetch {current!r}: {exc or type(exc).__name__}. Check the address, or download the "
                    "photo and upload it instead."
                ) from None
            if response.status in (301, 302, 303, 307, 308):
                location = response.getheader("Location")
                if not location:
                    raise UrlFetchError(f"{current!r} redirects without saying where to.")
                current = urljoin(current, location)
                continue
            if response.status != 200:
                raise UrlFetchError(
                    f"{current!r} answered HTTP {response.status} {response.reason}; check that the address opens "
                    "the photo itself in a browser."
                )
            content_type = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
            if content_type not in ALLOWED_TYPES:
                raise UrlFetchError(
                    f"{current!r} is not a JPEG, PNG or WebP image (the server says {content_type or 'nothing'!r}); "
                    "use the address of the photo itself (right-click the image, 'Copy image address')."
                )
            declared = response.getheader("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise UrlFetchError(_too_big(current, int(declared), max_bytes))
            try:
                data = response.read(max_bytes + 1)
            except (OSError, http.client.HTTPException) as exc:
                raise UrlFetchError(f"The download of {current!r} broke off: {exc}.") from None
            if len(data) > max_bytes:
                raise UrlFetchError(_too_big(current, None, max_bytes))
            if not data:
                raise UrlFetchError(f"{current!r} returned an empty body.")
            return Fetched(data=data, content_type=content_type, url=current)
        finally:
            conn.close()
    raise UrlFetchError(f"{url!r} redirects more than {MAX_REDIRECTS} times; use the photo's final address.")


def _too_big(url: str, size: int | None, max_bytes: int) -> str:
    what = f"{size / 2**20:.1f} MB" if size else "larger than the limit"
    return (
        f"{url!r} is {what}, over the {max_bytes / 2**20:g} MB limit for a query image; use a smaller version of the "
        "photo."
    )
