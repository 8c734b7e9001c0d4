"""Query images from URLs (lens.remote): a local test server for what works, and every refusal (SSRF, size, type)."""

from __future__ import annotations

import io
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from lens import remote
from lens.remote import UrlFetchError, check_url, fetch_image_bytes, resolve_public


def _jpeg(color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, format="JPEG")
    return buf.getvalue()


JPEG = _jpeg()


class _Handler(BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        status, headers, body = self.routes.get(self.path, (404, {"Content-Type": "text/plain"}, b"no"))
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            try:
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    port = httpd.server_address[1]
    base = f"http://127.0.0.1:{port}"
    _Handler.routes = {
        "/photo.jpg": (200, {"Content-Type": "image/jpeg"}, JPEG),
        "/photo-charset.jpg": (200, {"Content-Type": "image/jpeg; charset=binary"}, JPEG),
        "/page.html": (200, {"Content-Type": "text/html"}, b"<html>not an image</html>"),
        "/huge.jpg": (200, {"Content-Type": "image/jpeg", "Content-Length": str(300 * 2**20)}, b""),
        "/big-no-length.jpg": (200, {"Content-Type": "image/jpeg", "Content-Length": str(5000)}, b"\xff" * 5000),
        "/redirect": (302, {"Location": "/photo.jpg"}, b""),
        "/redirect-private": (302, {"Location": "http://10.0.0.1/secret.jpg"}, b""),
        "/redirect-metadata": (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b""),
        "/loop": (302, {"Location": "/loop"}, b""),
        "/missing.jpg": (404, {"Content-Type": "text/plain"}, b"gone"),
    }
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield base
    httpd.shutdown()
    httpd.server_close()


def test_fetches_an_image_and_follows_a_redirect(server: str) -> None:
    got = fetch_image_bytes(f"{server}/photo.jpg", allow_loopback=True)
    assert got.data == JPEG and got.content_type == "image/jpeg"
    assert fetch_image_bytes(f"{server}/photo-charset.jpg", allow_loopback=True).data == JPEG
    redirected = fetch_image_bytes(f"{server}/redirect", allow_loopback=True)
    assert redirected.data == JPEG and redirected.url.endswith("/photo.jpg")


@pytest.mark.parametrize(
    ("path", "kwargs", "message"),
    [
        ("/page.html", {}, "not a JPEG, PNG or WebP image"),
        ("/huge.jpg", {}, "300.0 MB, over the 20 MB limit"),
        ("/big-no-length.jpg", {"max_bytes": 1000}, "over the"),
        ("/missing.jpg", {}, "HTTP 404"),
        ("/loop", {}, "redirects more than"),
        ("/redirect-private", {}, "private-network address"),
        ("/redirect-metadata", {}, "link-local"),
    ],
)
def test_bad_urls_get_a_message(server: str, path: str, kwargs: dict, message: str) -> None:
    with pytest.raises(UrlFetchError, match=message):
        fetch_image_bytes(f"{server}{path}", allow_loopback=True, **kwargs)


def test_loopback_is_refused_unless_asked(server: str) -> None:
    with pytest.raises(UrlFetchError, match="loopback"):
        fetch_image_bytes(f"{server}/photo.jpg")
    with pytest.raises(UrlFetchError, match="loopback"):
        fetch_image_bytes("http://localhost:9/photo.jpg")
    # The private-network switch does not open loopback.
    with pytest.raises(UrlFetchError, match="loopback"):
        fetch_image_bytes(f"{server}/photo.jpg", allow_private=True)


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
        ("172.16.5.4", "private"),
        ("100.64.0.1", "private"),  # carrier-grade NAT: not global
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("0.0.0.0", "reserved"),
        ("224.0.0.1", "reserved"),
    ],
)
def test_non_public_addresses_are_refused(monkeypatch: pytest.MonkeyPatch, address: str, why: str) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    monkeypatch.setattr(
        remote.socket, "getaddrinfo", lambda *a, **k: [(family, socket.SOCK_STREAM, 6, "", (address, 80))]
    )
    with pytest.raises(UrlFetchError, match=why):
        resolve_public("images.example.com", 80)


def test_a_name_with_one_private_address_among_public_ones_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = [("93.184.216.34", 80), ("10.0.0.7", 80)]
    monkeypatch.setattr(
        remote.socket,
        "getaddrinfo",
        lambda *a, **k: [(socket.AF_INET, socket.SOCK_STREAM, 6, "", a) for a in answers],
    )
    with pytest.raises(UrlFetchError, match="10.0.0.7"):
        resolve_public("images.example.com", 80)
    assert resolve_public("images.example.com", 80, allow_private=True) == "93.184.216.34"


def test_the_connection_goes_to_the_checked_address(monkeypatch: pytest.MonkeyPatch, server: str) -> None:
    """DNS rebinding: the name is resolved once; a second lookup that would answer 127.0.0.1 never happens."""
    port = int(server.rsplit(":", 1)[1])
    calls = []

    def fake_getaddrinfo(host, port_, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port_))]

    monkeypatch.setattr(remote.socket, "getaddrinfo", fake_getaddrinfo)
    got = fetch_image_bytes(f"http://images.example.test:{port}/photo.jpg", allow_loopback=True)
    assert got.data == JPEG
    assert calls.count("images.example.test") == 1  # the socket connects to the literal address, no second lookup
    assert set(calls) == {"images.example.test", "127.0.0.1"}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "Type the address"),
        ("ftp://example.com/a.jpg", "Only http"),
        ("file:///etc/passwd", "Only http"),
        ("http://user:pw@example.com/a.jpg", "user name or password"),
        ("http:///a.jpg", "names no host"),
        ("http://example.com/" + "a" * 3000, "characters long"),
        ("http://exa mple.com/a.jpg", "spaces or control"),
        ("http://example.com:99999/a.jpg", "invalid port"),
    ],
)
def test_malformed_urls(url: str, message: str) -> None:
    with pytest.raises(UrlFetchError, match=message):
        check_url(url)


def test_offline_resolution_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(remote.socket, "getaddrinfo", offline)
    with pytest.raises(UrlFetchError, match="offline"):
        fetch_image_bytes("https://images.example.com/photo.jpg")
