"""MTProto through the system with the real node: `resist node --mtproto-listen` on 127.0.0.1.

The node relays to the lab's data-centre stand-in (``--mtproto-dc``) and fronts
whatever does not authenticate to a local echo server (``--mtproto-front``).
The probe's check and the registry's proof of control go through it as a
Telegram client would: fake-TLS (ee) or obfuscated2 (dd, classic), then
req_pq_multi answered by the data centre's resPQ.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from resistance.config import Endpoint
from resistance.lab import datacentre
from resistance.links import MODES_BY_NAME
from resistance.net.mtproto import ask_res_pq
from resistance.probe.check import Failure, Step
from resistance.probe.mtproto import run_mtproto_check
from resistance.probe.runner import CheckSettings, Target
from resistance.proto.faketls import ProxySecret
from tests.conftest import EchoServer, RunningNode, launch_node
from tests.registry.conftest import db_url, pg_template, start_registry

__all__ = ["db_url", "pg_template"]  # the registry's database fixtures, SQLite and PostgreSQL

DOMAIN = "example.com"
ALICE = secrets.token_bytes(16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
async def dc() -> AsyncIterator[int]:
    port = free_port()
    ready = asyncio.Event()
    task = asyncio.create_task(datacentre.serve(Endpoint("127.0.0.1", port), ready=ready))
    await asyncio.wait_for(ready.wait(), 5)
    try:
        yield port
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.fixture
def front() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


def start_mtproto_node(
    state_dir: Path, dc_port: int, front_port: int, users: dict[str, bytes]
) -> tuple[RunningNode, int]:
    port = free_port()
    args = [
        "--mtproto-listen", f"127.0.0.1:{port}", "--mtproto-domain", DOMAIN,
        "--mtproto-modes", "classic,dd,ee", "--mtproto-dc", f"2=127.0.0.1:{dc_port}",
        "--mtproto-front", f"127.0.0.1:{front_port}",
    ]  # fmt: skip
    for name, key in users.items():
        args += ["--mtproto-user", f"{name}:{key.hex()}"]
    node = launch_node(args, state_dir)
    for _ in range(100):  # bounded: the MTProto listener opens right after the SOCKS5 one
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return node, port
        time.sleep(0.05)
    node.stop()
    raise AssertionError("the node's MTProto listener did not open")


@pytest.fixture
def node(tmp_path: Path, dc: int, front: EchoServer) -> Iterator[int]:
    running, port = start_mtproto_node(tmp_path / "node", dc, front.port, {"alice": ALICE})
    yield port
    running.stop()


def target(port: int, secret: ProxySecret) -> Target:
    return Target("127.0.0.1", port, None, None, 1, "mtproto", None, secret.to_hex())


@pytest.mark.parametrize("mode", ["ee", "dd", "classic"])
async def test_the_probe_gets_a_res_pq_through_the_node(node: int, mode: str) -> None:
    secret = ProxySecret(ALICE, MODES_BY_NAME[mode], DOMAIN if mode == "ee" else None)
    result = await run_mtproto_check(target(node, secret), CheckSettings(step_timeout=5))
    assert result.verdict.ok, result.verdict
    assert result.outcomes[-1].step is Step.RESPQ


async def test_a_wrong_key_is_fronted_and_fails_the_handshake(node: int) -> None:
    secret = ProxySecret(secrets.token_bytes(16), MODES_BY_NAME["ee"], DOMAIN)
    result = await run_mtproto_check(target(node, secret), CheckSettings(step_timeout=5))
    # The node relays our hello to the front (an echo here), whose answer is not signed.
    assert result.verdict.failed_step is Step.HANDSHAKE
    assert result.verdict.failure is Failure.WRONG_ANSWER


async def test_a_wrong_key_in_dd_gets_no_res_pq(node: int) -> None:
    answer = await ask_res_pq(
        "127.0.0.1", node, ProxySecret(secrets.token_bytes(16), MODES_BY_NAME["dd"]), within=3
    )
    assert not answer.ok and answer.step == "respq"


async def test_the_registry_proves_the_node_with_the_operators_prober_secret(
    tmp_path: Path, db_url: str, dc: int, front: EchoServer
) -> None:
    async with start_registry(tmp_path / "reg", db_url, challenge_timeout=5.0) as reg:
        token = await reg.operator("mt-op")
        operator = reg.client(token=token)
        key = bytes.fromhex((await operator.get("/api/v1/mtproto/prober-secret")).json()["key"])
        body: dict[str, Any] = {"mode": "ee", "domain": DOMAIN, "public": True}
        without, port = start_mtproto_node(tmp_path / "n1", dc, front.port, {"alice": ALICE})
        try:
            body["endpoint"] = {"host": "127.0.0.1", "port": port}
            refused = await operator.post("/api/v1/mtproto/endpoints", json=body)
        finally:
            without.stop()
        assert refused.status_code == 422 and "handshake" in refused.json()["error"]
        users = {"alice": ALICE, "registry": key}
        with_key, port = start_mtproto_node(tmp_path / "n2", dc, front.port, users)
        try:
            body["endpoint"] = {"host": "127.0.0.1", "port": port}
            accepted = await operator.post("/api/v1/mtproto/endpoints", json=body)
        finally:
            with_key.stop()
        assert accepted.status_code == 201, accepted.text
        assert accepted.json()["mtproto"] == {"mode": "ee", "domain": DOMAIN}


async def test_the_telegram_like_client_gets_through_the_node(node: int, dc: int) -> None:
    from click.testing import CliRunner

    from resistance.lab.cli import lab

    link = f"tg://proxy?server=127.0.0.1&port={node}&secret=ee{ALICE.hex()}{DOMAIN.encode().hex()}"
    runner = CliRunner()
    through = await asyncio.to_thread(runner.invoke, lab, ["telegram", link])
    assert through.exit_code == 0, through.output
    assert through.output.startswith("resPQ from the data centre through the proxy")
    direct = await asyncio.to_thread(runner.invoke, lab, ["telegram", f"127.0.0.1:{dc}"])
    assert direct.exit_code == 0 and "directly at" in direct.output
    closed = await asyncio.to_thread(
        runner.invoke, lab, ["telegram", "--within", "2", f"127.0.0.1:{free_port()}"]
    )
    assert closed.exit_code == 1 and closed.output.startswith("no resPQ directly")
    assert "tcp: refused" in closed.output


def test_an_operator_registers_the_node_with_the_cli(tmp_path: Path, front: EchoServer) -> None:
    import httpx
    from click.testing import CliRunner

    from resistance.cli import main
    from resistance.registry.app import create_app
    from tests.registry.conftest import ThreadedServer, make_settings

    db_url = f"sqlite+aiosqlite:///{tmp_path / 'registry.sqlite3'}"
    app = create_app(make_settings(tmp_path / "reg", db_url), on_admin_token=lambda _: None)
    dc_port = free_port()
    dc_proc = subprocess.Popen(
        [sys.executable, "-m", "resistance", "lab", "datacentre", "--listen",
         f"127.0.0.1:{dc_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        with ThreadedServer(app) as server:
            base = f"http://127.0.0.1:{server.port}"
            made = httpx.post(f"{base}/api/v1/operators", json={"name": "op"}, timeout=10)
            env = {"RESIST_REGISTRY_TOKEN": made.json()["token"]}
            runner = CliRunner()
            shown = runner.invoke(main, ["registry", "mtproto-secret", "--registry", base], env=env)
            assert shown.exit_code == 0, shown.output
            key = shown.output.splitlines()[0]
            assert f"--mtproto-user registry:{key}" in shown.output
            running, port = start_mtproto_node(
                tmp_path / "node", dc_port, front.port, {"registry": bytes.fromhex(key)}
            )
            try:
                done = runner.invoke(
                    main,
                    ["registry", "register-mtproto", "--registry", base, "--public-host",
                     "127.0.0.1", "--port", str(port), "--domain", DOMAIN, "--public"],
                    env=env,
                )  # fmt: skip
            finally:
                running.stop()
            assert done.exit_code == 0, done.output
            assert done.output.startswith("registered MTProto proxy 1 at 127.0.0.1:")
            assert "(ee, example.com; public)" in done.output
            again = runner.invoke(
                main,
                ["registry", "register-mtproto", "--registry", base, "--public-host",
                 "127.0.0.1", "--port", str(port), "--mode", "dd"],
                env=env,
            )  # fmt: skip
            assert again.exit_code == 2  # one line on stderr, status 2, like every command
            assert "registry refused (422): proof of control failed: tcp: refused" in again.output
    finally:
        dc_proc.terminate()
        dc_proc.wait(10)


async def test_resist_probe_check_takes_an_mtproto_link(node: int) -> None:
    from click.testing import CliRunner

    from resistance.cli import main

    secret = f"ee{ALICE.hex()}{DOMAIN.encode().hex()}"
    runner = CliRunner()
    good = f"https://t.me/proxy?server=127.0.0.1&port={node}&secret={secret}"
    passed = await asyncio.to_thread(runner.invoke, main, ["probe", "check", good])
    assert passed.exit_code == 0, passed.output
    lines = passed.output.splitlines()
    assert lines[0] == f"checking MTProto proxy 127.0.0.1:{node} (ee)"
    assert [line.split()[0] for line in lines[1:4]] == ["tcp", "handshake", "respq"]
    assert lines[-1] == "functional: every step passed"
    wrong = f"mtproto://dd{secrets.token_bytes(16).hex()}@127.0.0.1:{node}"
    failed = await asyncio.to_thread(
        runner.invoke, main, ["probe", "check", wrong, "--step-timeout", "2"]
    )
    assert failed.exit_code == 1 and "failed at respq" in failed.output
