"""The TLS controls on 127.0.0.1: a handshake with a chosen server name, and the
benign-name control that tells an SNI block from a dead or fingerprinted server."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from resistance.node.tlscert import make_self_signed
from resistance.probe.batch import BatchError, parse_batch, result_json
from resistance.probe.check import Failure
from resistance.probe.controls import sni_evidence, tls_attempt, tls_reach
from resistance.probe.diagnose import Attempt, Evidence, Mechanism, Stage, diagnose
from resistance.probe.runner import CheckResult, CheckSettings, Target, run_check
from tests.probe.test_controls import World
from tests.probe.test_parsers import signed


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[int]:
    cert, key = make_self_signed("lab")
    (tmp_path / "c.pem").write_bytes(cert)
    (tmp_path / "k.pem").write_bytes(key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    yield server.sockets[0].getsockname()[1]
    server.close()


@pytest.fixture
async def sni_censor(tls_server: int) -> AsyncIterator[int]:
    """A forwarder to the TLS server that swallows hellos naming blocked.example."""
    held: list[asyncio.StreamWriter] = []

    async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(65536):
            dst.write(data)
        dst.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.read(65536)
        held.append(writer)
        if b"blocked.example" in first:
            return  # dropped: the client hears nothing
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", tls_server)
        held.append(up_writer)
        up_writer.write(first)
        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for w in held:
        w.close()
    server.close()


async def test_a_tls_handshake_passes_and_names_where_it_stops(tls_server: int) -> None:
    assert (await tls_attempt("127.0.0.1", tls_server, "any.example", 2.0)).ok
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        port = silent.getsockname()[1]
        stopped = await tls_attempt("127.0.0.1", port, "any.example", 0.3)
        assert (stopped.stage, stopped.failure) == (Stage.HANDSHAKE, Failure.TIMEOUT)
    closed = await tls_attempt("127.0.0.1", port, "any.example", 0.3)
    assert (closed.stage, closed.failure) == (Stage.TCP, Failure.REFUSED)


async def test_the_benign_name_control_names_an_sni_block(sni_censor: int) -> None:
    evidence = await sni_evidence("127.0.0.1", sni_censor, "blocked.example", 0.5)
    assert evidence.benign_sni is not None and evidence.benign_sni.ok
    assert diagnose(evidence).mechanism is Mechanism.BLOCKED_SNI
    # near miss: an allowed name passes, no control needed
    allowed = await sni_evidence("127.0.0.1", sni_censor, "allowed.example", 0.5)
    assert allowed.main.ok and diagnose(allowed).mechanism is Mechanism.OK


@pytest.fixture
async def hello_eater() -> AsyncIterator[int]:
    """Accepts TCP, swallows whatever comes (every TLS hello), answers nothing."""
    held: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for w in held:
        w.close()
    server.close()


async def plain_result(behaviour: str) -> CheckResult:
    """A SOCKS5 check of 127.0.0.1:1080 over a scripted seam ('silent' or 'drop')."""
    net = World({"127.0.0.1:1080": behaviour})
    target = Target("127.0.0.1", 1080, "probe", "pw", 7)
    return await run_check(target, None, net, CheckSettings(step_timeout=0.1))


async def test_tls_reach_ok_fingerprinted_or_address_blocked(
    tls_server: int, hello_eater: int
) -> None:
    fingerprinted = await plain_result("silent")  # a socks5 fingerprint block beside it
    evidence, found = await tls_reach(fingerprinted, tls_server, seconds=1.0, outside_ok=True)
    assert found.mechanism is Mechanism.OK and evidence.main.ok
    evidence, found = await tls_reach(fingerprinted, hello_eater, seconds=0.3, outside_ok=True)
    assert found.mechanism is Mechanism.BLOCKED_FINGERPRINT
    assert evidence.benign_sni is not None and not evidence.benign_sni.ok  # the hello itself
    # the plain check ran first: its TCP outcome is no "went dark after this flow"
    assert evidence.other_port is None
    with socket.create_server(("127.0.0.1", 0)) as gone:
        closed = gone.getsockname()[1]
    dark = await plain_result("drop")
    _, found = await tls_reach(dark, closed, seconds=0.3, outside_ok=True)
    assert found.mechanism is Mechanism.BLOCKED_IP
    _, found = await tls_reach(dark, closed, seconds=0.3, outside_ok=False)
    assert found.mechanism is Mechanism.DOWN


async def test_tls_reach_names_a_whitelist_with_the_plain_checks_controls() -> None:
    with socket.create_server(("127.0.0.1", 0)) as gone:
        closed = gone.getsockname()[1]
    dark = await plain_result("drop")
    no_tcp = Attempt.stopped(Stage.TCP, Failure.TIMEOUT)
    plain = Evidence(main=no_tcp, control_host=no_tcp, listed_host=Attempt.passed())
    evidence, found = await tls_reach(
        dark, closed, seconds=0.3, outside_ok=True, plain_evidence=plain
    )
    assert found.mechanism is Mechanism.WHITELISTED_OUT, evidence
    # near miss: the unlisted control host answers: the address, not a whitelist
    plain = Evidence(main=no_tcp, control_host=Attempt.passed(), listed_host=Attempt.passed())
    _, found = await tls_reach(dark, closed, seconds=0.3, outside_ok=True, plain_evidence=plain)
    assert found.mechanism is Mechanism.BLOCKED_IP


async def test_tls_reach_travels_in_the_signed_batch(tls_server: int) -> None:
    result = await plain_result("silent")
    result.transports["tls"] = await tls_reach(result, tls_server, seconds=1.0, outside_ok=True)
    raw = result_json(result)
    assert raw["transports"]["tls"]["mechanism"] == "ok"
    assert parse_batch(signed([raw])).results[0].transports == (("tls", "ok"),)
    forged = {**raw, "transports": {"tls": {**raw["transports"]["tls"], "mechanism": "down"}}}
    with pytest.raises(BatchError, match="evidence gives ok"):
        parse_batch(signed([forged]))
    with pytest.raises(BatchError, match="names only tls"):
        parse_batch(signed([{**raw, "transports": {"quic": raw["transports"]["tls"]}}]))


async def test_after_one_handshake_the_probe_names_the_certificates_name(tmp_path: Path) -> None:
    """As the client does: the first hello names a plausible server, the next ones the
    name the listener's certificate showed (what an SNI list would hold)."""
    from resistance.client.hello import server_name
    from resistance.probe.controls import listener_key

    cert, key = make_self_signed("www.probe-learns.net")
    (tmp_path / "c.pem").write_bytes(cert)
    (tmp_path / "k.pem").write_bytes(key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    names: list[str | None] = []
    ctx.sni_callback = lambda sock, name, _: names.append(name)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        first = server_name("127.0.0.1", listener_key("127.0.0.1", port))
        assert first != "www.probe-learns.net"
        assert (await tls_attempt("127.0.0.1", port, first, 5.0)).ok
        assert server_name("127.0.0.1", listener_key("127.0.0.1", port)) == "www.probe-learns.net"
        learned = server_name("127.0.0.1", listener_key("127.0.0.1", port))
        assert (await tls_attempt("127.0.0.1", port, learned, 5.0)).ok
        assert names == [first, "www.probe-learns.net"]
    finally:
        server.close()
