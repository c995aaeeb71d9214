"""The lab's Telegram step alone (root only): an MTProto volunteer, the app's view.

A lab of its own: the data centre is blocked from the censored network; the
fifth volunteer's MTProto proxy registers (the registry proves it with the
operator's prober secret) and a Telegram-like client in the censored network
gets a resPQ through the tg://proxy link, and none directly.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Iterator

import pytest

from resistance.lab import netns
from resistance.lab import topology as topo
from resistance.lab.story import Story
from resistance.lab.telegram import MTPROTO_ADDR
from resistance.lab.world import Lab
from tests.e2e.labkit import kept_on_failure

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="the lab needs root (network namespaces)"),
    pytest.mark.timeout(240),
]


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    name = f"t{os.getpid() % 100000}"
    lab = Lab(topo.Topology(name), tmp_path_factory.mktemp("lab"))
    narration: list[str] = []
    lab.up(say=narration.append)
    try:
        with kept_on_failure(lab.topology, lab.dir):
            yield Story(lab, narration.append)
    finally:
        pids = [p.pid for p in lab.processes]
        lab.down()
        assert not set(lab.topology.namespaces) & netns.namespaces()
        assert not [pid for pid in pids if netns.process_start_ticks(pid) is not None]
        print("\n".join(narration))


def test_the_telegram_app_gets_through_an_mtproto_proxy(story: Story) -> None:
    result = story.step7_telegram()
    assert result.figures["direct_ok"] is False  # the censor blocks the data centre
    assert result.figures["via_proxy_ok"] is True
    document = story.directory()  # published now, signatures verified
    (entry,) = [e for e in document["proxies"] if e["endpoint"]["host"] == MTPROTO_ADDR]
    assert entry["protocols"] == ["mtproto"] and entry["mtproto"]["mode"] == "ee"
    config = tomllib.loads((story.lab.dir / "mtproto-node" / "node.toml").read_text())
    keys = list(config["mtproto_users"].values())
    assert len(keys) == 2 and not any(k in json.dumps(document) for k in keys)  # no secret
