"""The per-address connection count both listeners (SOCKS5 and MTProto) admit clients by."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from resistance.node.admission import PerAddress


def test_the_cap_holds_per_address_and_a_release_makes_room() -> None:
    table = PerAddress(2)
    assert table.take("198.51.100.1") and table.take("198.51.100.1")
    assert not table.take("198.51.100.1")
    assert table.take("198.51.100.2")
    table.release("198.51.100.1")
    assert table.take("198.51.100.1")


@given(
    limit=st.integers(1, 4),
    steps=st.lists(st.tuples(st.booleans(), st.sampled_from("abc")), max_size=60),
)
def test_it_agrees_with_a_plain_count_and_keeps_only_open_addresses(
    limit: int, steps: list[tuple[bool, str]]
) -> None:
    table, model = PerAddress(limit), dict.fromkeys("abc", 0)
    for take, ip in steps:
        if take:
            assert table.take(ip) == (model[ip] < limit)
            model[ip] = min(limit, model[ip] + 1)
        elif model[ip] > 0:
            table.release(ip)
            model[ip] -= 1
    assert table.counts == {ip: n for ip, n in model.items() if n}
    assert len(table) == sum(1 for n in model.values() if n)
