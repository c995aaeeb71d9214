"""The probe's MTProto check on real sockets: through a proxy to the lab's data centre.

The data centre is the lab's stand-in (``resistance.lab.datacentre``), which
answers req_pq_multi over obfuscated2.  The proxy is
``tests.integration.mtproxy_standin`` (built from the project's fake-TLS and
obfuscated2 cores) until the node's own MTProto listener is on this branch.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import AsyncIterator

import pytest

from resistance.config import Endpoint
from resistance.lab import datacentre
from resistance.links import MTProtoSecret
from resistance.net.mtproto import ask_res_pq
from resistance.probe.batch import parse_batch, result_json, sign_batch
from resistance.probe.check import Failure, Step
from resistance.probe.mtproto import run_mtproto_check
from resistance.probe.runner import CheckSettings, Target
from tests.integration.mtproxy_standin import MTProxyStandIn

KEY = secrets.token_bytes(16)
SETTINGS = CheckSettings(step_timeout=5.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
async def dc() -> AsyncIterator[tuple[str, int]]:
    port = free_port()
    ready = asyncio.Event()
    task = asyncio.create_task(datacentre.serve(Endpoint("127.0.0.1", port), ready=ready))
    await asyncio.wait_for(ready.wait(), 5)
    try:
        yield ("127.0.0.1", port)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def secret_for(mode: str, key: bytes = KEY) -> MTProtoSecret:
    return MTProtoSecret(mode, key, "example.com" if mode == "ee" else None)


def target(port: int, secret: MTProtoSecret) -> Target:
    return Target("127.0.0.1", port, None, None, 7, "mtproto", None, secret.hex)


async def test_a_data_centre_answers_directly(dc: tuple[str, int]) -> None:
    answer = await ask_res_pq(*dc, None, within=5)
    assert answer.ok, answer.reason
    assert answer.step == "respq" and answer.handshake_us is None


@pytest.mark.parametrize("mode", ["classic", "dd", "ee"])
async def test_a_working_proxy_passes_every_step(dc: tuple[str, int], mode: str) -> None:
    with MTProxyStandIn([secrets.token_bytes(16), KEY], dc, tls=mode == "ee") as proxy:
        result = await run_mtproto_check(target(proxy.port, secret_for(mode)), SETTINGS)
        assert proxy.served == 1
    assert result.verdict.ok, result.verdict
    steps = [o.step for o in result.outcomes]
    expected = [Step.TCP, Step.HANDSHAKE, Step.RESPQ] if mode == "ee" else [Step.TCP, Step.RESPQ]
    assert steps == expected
    assert result.timings.connect_us is not None and result.timings.ttfb_us is not None
    # The result goes into a signed batch the registry's parser takes back.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from resistance.directory.keys import public_key_text

    key = Ed25519PrivateKey.generate()
    body = sign_batch(
        key=key, probe_key=public_key_text(key.public_key()), batch_id="ab" * 16,
        vantage="msk-1", country="RU", created_at=result.at, results=[result_json(result)],
    )  # fmt: skip
    (record,) = parse_batch(body).results
    assert record.protocol == "mtproto" and record.ok and record.canary is None


@pytest.mark.parametrize("mode", ["classic", "dd", "ee"])
async def test_a_proxy_without_our_key_fails(dc: tuple[str, int], mode: str) -> None:
    with MTProxyStandIn([secrets.token_bytes(16)], dc, tls=mode == "ee") as proxy:
        result = await run_mtproto_check(target(proxy.port, secret_for(mode)), SETTINGS)
        assert proxy.served == 0
    assert not result.verdict.ok
    # ee fails at the handshake (the hello is not verified); classic/dd once the proxy
    # closes on an init it cannot read, before any resPQ.
    assert result.verdict.failed_step == (Step.HANDSHAKE if mode == "ee" else Step.RESPQ)
    assert result.verdict.failure is Failure.CLOSED


async def test_a_tls_site_instead_of_a_proxy_is_a_wrong_answer() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read(4096))  # TLS-looking bytes, not signed with our key
        await writer.drain()
        await reader.read(1)
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        result = await run_mtproto_check(target(port, secret_for("ee")), SETTINGS)
    assert result.verdict.failed_step is Step.HANDSHAKE
    assert result.verdict.failure is Failure.WRONG_ANSWER


async def test_a_closed_port_is_refused_at_tcp() -> None:
    result = await run_mtproto_check(target(free_port(), secret_for("dd")), SETTINGS)
    assert result.verdict.failed_step is Step.TCP
    assert result.verdict.failure is Failure.REFUSED


async def test_a_silent_data_centre_is_a_respq_timeout() -> None:
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    dc = ("127.0.0.1", silent.sockets[0].getsockname()[1])
    async with silent:
        with MTProxyStandIn([KEY], dc, tls=True) as proxy:
            result = await run_mtproto_check(
                target(proxy.port, secret_for("ee")), CheckSettings(step_timeout=1.0)
            )
    assert [o.step for o in result.outcomes][:2] == [Step.TCP, Step.HANDSHAKE], result.outcomes
    assert result.verdict.failed_step is Step.RESPQ
    assert result.verdict.failure is Failure.TIMEOUT


async def test_a_bad_secret_from_the_registry_is_an_error_not_a_crash() -> None:
    bad = Target("127.0.0.1", 1, None, None, 7, "mtproto", None, "00")
    result = await run_mtproto_check(bad, SETTINGS)
    assert not result.verdict.ok and result.verdict.failure is Failure.ERROR
