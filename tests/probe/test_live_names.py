"""A proxy registered by DNS name, measured by a real agent that resolves it per measurement
with a DNS server the test runs on 127.0.0.1 (``--dns``); nothing else is resolved."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from resistance.config import Endpoint
from tests.dns_responder import DnsResponder
from tests.probe.live import RegistryServer, agents, sqlite_rows, start_agent, wait_for
from tests.probe.test_live import NODE_ARGS, sqlite_url, status_is


def _addresses_in_batches(db: Path) -> list[str | None]:
    found = []
    for (body,) in sqlite_rows(db, "SELECT body FROM probe_batches ORDER BY created_at"):
        for result in json.loads(body)["document"]["results"]:
            found.append(result.get("address"))
    return found


def test_a_named_proxy_is_measured_at_its_pinned_address_until_the_name_moves(
    tmp_path: Path, node_factory: Any
) -> None:
    dns = DnsResponder({"node.example": ["127.0.0.1"]})
    url, db = sqlite_url(tmp_path)
    registry = RegistryServer(tmp_path / "registry", url, dns=Endpoint("127.0.0.1", dns.port))
    registry.start()
    try:
        node_state = tmp_path / "node"
        node = node_factory(*NODE_ARGS, state_dir=node_state)
        proxy_id = registry.register(node_state, node.port, host="node.example")
        assert ("node.example", "A") in dns.asked  # the registry asked our server
        (row,) = sqlite_rows(db, f"SELECT host, addresses FROM proxies WHERE id = {proxy_id}")
        assert row[0] == "node.example" and json.loads(row[1]) == ["127.0.0.1"]
        token = registry.add_probe(tmp_path / "p-nl", "ams-1", "NL", control=True)
        with agents() as running:
            running.append(start_agent(
                registry, token, tmp_path / "p-nl", "ams-1", "NL",
                extra=("--dns", dns.server),
            ))  # fmt: skip
            wait_for(lambda: status_is(registry, proxy_id, "functional"), 30, "functional")
            assert set(_addresses_in_batches(db)) == {"127.0.0.1"}

            # the name now points at an address whose control nobody proved
            dns.table["node.example"] = ["127.0.0.9"]
            wait_for(lambda: status_is(registry, proxy_id, "down"), 30, "down")
            details = [d for (d,) in sqlite_rows(db, "SELECT detail FROM probe_results")]
            assert any("none of the proven 127.0.0.1" in d for d in details), details
            assert running[0].stop() == 0
        assert None in _addresses_in_batches(db)  # the failed ones dialled nothing
    finally:
        registry.stop()
        dns.close()
