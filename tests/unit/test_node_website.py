"""The node's TLS side answers what is not SOCKS5 as a small website does (pure part)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from resistance.node import website


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, status, _ = lines[0].split(" ", 2)
    assert version == "HTTP/1.1"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(status), headers, body


def test_a_browser_get_gets_the_page() -> None:
    status, headers, body = parse(website.answer(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
    assert status == 200 and body == website.PAGE
    assert int(headers["Content-Length"]) == len(body)
    assert headers["Connection"] == "close"


def test_head_gets_the_headers_only() -> None:
    status, headers, body = parse(website.answer(b"HEAD / HTTP/1.1\r\n\r\n"))
    assert (status, body) == (200, b"") and int(headers["Content-Length"]) == len(website.PAGE)


def test_the_answer_is_http_a_real_parser_reads() -> None:
    """httpx's own response parser (h11) accepts it."""
    import h11

    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
    conn.receive_data(website.answer(b"GET / HTTP/1.1\r\n"))
    event = conn.next_event()
    assert isinstance(event, h11.Response) and event.status_code == 200


@given(st.binary(min_size=1, max_size=200))
def test_any_first_bytes_get_a_complete_response(first: bytes) -> None:
    status, headers, body = parse(website.answer(first, now=0))
    assert status in (200, 400, 405)
    assert int(headers["Content-Length"]) == len(body) or first.startswith(b"HEAD ")


@given(st.integers(0, 255).filter(lambda b: b != 5), st.binary(max_size=50))
def test_only_a_version_5_start_is_socks5(first: int, rest: bytes) -> None:
    assert website.is_socks5(b"\x05" + rest)
    assert not website.is_socks5(bytes([first]) + rest)


def test_a_post_is_not_allowed_and_garbage_is_a_bad_request() -> None:
    assert parse(website.answer(b"POST /x HTTP/1.1\r\n"))[0] == 405
    assert parse(website.answer(b"\x16\x03\x01\x00"))[0] == 400
