"""The dashboard over HTTP on SQLite and PostgreSQL: pages, sessions, CSRF, boundaries."""

from __future__ import annotations

import base64
import re
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from resistance.registry.models import ApiToken
from resistance.registry.ui import charts, sessions
from resistance.registry.ui.pages import SIGNIN_LIMIT
from tests.grants.helpers import CHANGE_DESCRIPTOR, DESCRIPTOR, embit_sign, utxos_for
from tests.registry.conftest import RunningRegistry
from tests.registry.dashboard_seed import Seeded, seed

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
SECRETS = ("s3cret pass", "their-secret", "0" * 32, "c" * 43, "bcrt1q")


async def world(running: RunningRegistry) -> tuple[str, str, Seeded]:
    mine = await running.operator("alice")
    theirs = await running.operator("bob")
    reg = running.registry
    async with reg.sessions() as db:
        from sqlalchemy import select

        rows = await db.execute(select(ApiToken.operator_id).where(ApiToken.role == "operator"))
        ids = sorted(r[0] for r in rows.all())
    seeded = await seed(reg, operator_id=ids[0], other_operator_id=ids[1])
    return mine, theirs, seeded


def csrf_of(page: httpx.Response) -> str:
    found = CSRF.search(page.text)
    assert found, page.text[:500]
    return found.group(1)


async def sign_in(client: httpx.AsyncClient, token: str) -> httpx.Response:
    form = await client.get("/ui/signin")
    return await client.post("/ui/signin", data={"token": token, "csrf": csrf_of(form)})


async def test_public_pages_show_the_network_and_no_secrets(running: RunningRegistry) -> None:
    _, _, seeded = await world(running)
    client = running.client()
    pages = {}
    for path in ("/ui/", "/ui/proxies", "/ui/reachability", "/ui/blocking", "/ui/censor"):
        response = await client.get(path)
        assert response.status_code == 200, (path, response.text[:300])
        assert response.headers["content-type"].startswith("text/html")
        assert '<html lang="en">' in response.text and "<h1>" in response.text
        assert "<table>" in response.text
        assert ("<svg" in response.text) == (path != "/ui/proxies")  # each chart, with its table
        for secret in SECRETS:
            assert secret not in response.text, (path, secret)
        pages[path] = response.text
    now = pages["/ui/"]
    # SOCKS5: one blocked (ours) + one down (theirs); MTProto serving; WireGuard probation.
    assert re.search(
        r'<th scope="row">SOCKS5</th><td class="num">0</td><td class="num">0</td>'
        r'<td class="num">1</td><td class="num">1</td><td class="num">2</td>',
        now,
    )
    assert re.search(
        r'<th scope="row">MTProto</th><td class="num">0</td><td class="num">1</td>', now
    )
    assert re.search(
        r'<th scope="row">RU</th><td>inside</td><td class="num">1</td>'
        r'<td class="num">1</td><td class="num">1</td>',
        now,
    )
    # Only public proxies, with the address the directory publishes.
    assert "198.51.100.7:1080" in pages["/ui/proxies"]
    assert "198.51.100.9" not in pages["/ui/proxies"] and "203.0.113.5" not in pages["/ui/proxies"]
    # Inside: day 4 the SOCKS5 proxy failed (48 of 72 got through); outside all did.
    assert f'<th scope="row">{seeded.days[3]}</th>' in pages["/ui/reachability"]
    assert "48 / 72" in pages["/ui/reachability"] and "72 / 72" in pages["/ui/reachability"]
    # Blocked 5 days after registration, minus two hours: the 3-7 d bucket.
    assert re.search(r'3-7 d</th><td class="num">1</td>', pages["/ui/blocking"])
    censor = pages["/ui/censor"]
    assert "<dd>256</dd>" in censor and "<dd>255</dd>" in censor  # covered, collateral
    # The public proxy the list blocks, with the import that blocked it (the second).
    blocked = re.search(
        r'<th scope="row">198\.51\.100\.7:1080</th><td class="num">(\d+)</td>', censor
    )
    assert blocked is not None
    ids = [int(i) for i in re.findall(r'<tr><th scope="row">(\d+)</th>', censor)]
    assert int(blocked.group(1)) == max(ids) and len(ids) == 2


async def test_static_files_and_unknown_ones(running: RunningRegistry) -> None:
    client = running.client()
    css = await client.get("/ui/static/ui.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert (await client.get("/ui/static/..%2Fpages.py")).status_code == 404
    assert (await client.get("/ui/static/pages.py")).status_code == 404


async def test_boundaries_between_public_operator_and_funder(running: RunningRegistry) -> None:
    mine, _, seeded = await world(running)
    public = running.client()
    for path in ("/ui/operator", f"/ui/operator/proxies/{seeded.socks_id}", "/ui/funder"):
        response = await public.get(path)
        assert response.status_code == 401, path
        assert "Sign in" in response.text
    operator = running.client()
    signed = await sign_in(operator, mine)
    assert signed.status_code == 303 and signed.headers["location"] == "/ui/operator"
    assert (await operator.get("/ui/funder")).status_code == 403
    assert (await operator.get("/ui/funder/rounds/x")).status_code == 403
    # Someone else's proxy is not found, not shown.
    other = await operator.get(f"/ui/operator/proxies/{seeded.other_id}")
    assert other.status_code == 404 and "their-secret" not in other.text
    funder = running.client()
    signed = await sign_in(funder, running.admin_token)
    assert signed.headers["location"] == "/ui/funder"
    assert (await funder.get("/ui/operator")).status_code == 403
    assert (await funder.get("/ui/funder")).status_code == 200


async def test_path_ids_are_held_to_the_apis_rules(running: RunningRegistry) -> None:
    """Ids past the 32-bit column and round ids with NUL are refused (422) before the
    database, which on PostgreSQL answered them with a 500."""
    mine, _, _ = await world(running)
    operator = running.client()
    await sign_in(operator, mine)
    for proxy_id in (2**31, 2**62):
        assert (await operator.get(f"/ui/operator/proxies/{proxy_id}")).status_code == 422
    funder = running.client()
    await sign_in(funder, running.admin_token)
    for bad in ("fz%00op", "x" * 65):
        assert (await funder.get(f"/ui/funder/rounds/{bad}")).status_code == 422
        assert (await funder.post(f"/ui/funder/rounds/{bad}/approve")).status_code == 422


async def test_operator_sees_verdicts_evidence_links_and_awards(running: RunningRegistry) -> None:
    mine, _, seeded = await world(running)
    client = running.client()
    await sign_in(client, mine)
    home = await client.get("/ui/operator")
    assert home.status_code == 200
    assert "alice" in home.text and "198.51.100.7:1080" in home.text
    assert "203.0.113.5" not in home.text
    page = await client.get(f"/ui/operator/proxies/{seeded.socks_id}")
    assert page.status_code == 200
    text = page.text
    assert 'id="state">blocked</span> in RU' in text
    assert "ru-moscow-1" in text and "ip-blackhole" in text and "no answer to SYN" in text
    assert (
        "tg://socks?server=198.51.100.7&amp;port=1080&amp;user=friend&amp;pass=s3cret+pass" in text
    )
    assert "<svg" in text  # the QR code


async def test_forged_csrf_is_refused(running: RunningRegistry) -> None:
    mine, _, _ = await world(running)
    client = running.client()
    await client.get("/ui/signin")
    for csrf in ("", "forged", sessions.csrf_token(b"k" * 32, "nonce")):
        response = await client.post("/ui/signin", data={"token": mine, "csrf": csrf})
        assert response.status_code == 403, csrf
        assert sessions.SESSION_COOKIE not in response.cookies
    # A token made for another visitor's nonce does not fit this one's cookie.
    stranger = running.client()
    theirs = csrf_of(await stranger.get("/ui/signin"))
    response = await client.post("/ui/signin", data={"token": mine, "csrf": theirs})
    assert response.status_code == 403
    # Signed in, a form without the right token changes nothing either.
    await sign_in(client, running.admin_token)
    made = await client.post(
        "/ui/funder/preview",
        data={"csrf": "forged", "period_start": "2026-01-01", "period_end": "2026-01-02",
              "target_country": "RU", "budget_sat": "100000"},
    )  # fmt: skip
    assert made.status_code == 403
    assert (await running.client(token=running.admin_token).get("/api/v1/grants/rounds")).json()[
        "rounds"
    ] == []


async def test_expired_altered_and_revoked_sessions_are_refused(running: RunningRegistry) -> None:
    mine, _, _ = await world(running)
    reg = running.registry
    client = running.client()
    await sign_in(client, mine)
    assert (await client.get("/ui/operator")).status_code == 200
    cookie = client.cookies[sessions.SESSION_COOKIE]
    body, mac = cookie.split(".")
    # Altered: the role changed to admin, the MAC no longer fits.
    forged = (
        base64.urlsafe_b64encode(
            base64.urlsafe_b64decode(body + "==").replace(b'"operator"', b'"admin"')
        )
        .rstrip(b"=")
        .decode()
    )
    client.cookies.set(
        sessions.SESSION_COOKIE, f"{forged}.{mac}", domain="registry.test", path="/ui/"
    )
    assert (await client.get("/ui/funder")).status_code == 401
    client.cookies.set(sessions.SESSION_COOKIE, cookie, domain="registry.test", path="/ui/")
    assert (await client.get("/ui/operator")).status_code == 200
    # Expired: eight hours and a second later.
    real = reg.clock
    later = real() + sessions.SESSION_SECONDS + 1
    reg.clock = lambda: later
    try:
        assert (await client.get("/ui/operator")).status_code == 401
    finally:
        reg.clock = real
    assert (await client.get("/ui/operator")).status_code == 200
    # Revoked: the token the session came from is gone.
    async with reg.sessions.begin() as db:
        from sqlalchemy import delete

        await db.execute(delete(ApiToken).where(ApiToken.role == "operator"))
    assert (await client.get("/ui/operator")).status_code == 401


async def test_sign_out_ends_the_session(running: RunningRegistry) -> None:
    mine, _, _ = await world(running)
    client = running.client()
    await sign_in(client, mine)
    page = await client.get("/ui/operator")
    out = await client.post("/ui/signout", data={"csrf": csrf_of(page)})
    assert out.status_code == 303
    assert (await client.get("/ui/operator")).status_code == 401


async def test_sign_in_is_rate_limited_per_network(running: RunningRegistry) -> None:
    client = running.client(ip="192.0.2.10")
    form = await client.get("/ui/signin")
    statuses = []
    for _ in range(SIGNIN_LIMIT.burst + 2):
        response = await client.post(
            "/ui/signin", data={"token": "rst_wrong", "csrf": csrf_of(form)}
        )
        statuses.append(response.status_code)
    assert statuses[: SIGNIN_LIMIT.burst] == [401] * SIGNIN_LIMIT.burst
    assert statuses[-1] == 429
    # Another network is not held back.
    other = running.client(ip="198.18.0.1")
    form = await other.get("/ui/signin")
    response = await other.post("/ui/signin", data={"token": "rst_wrong", "csrf": csrf_of(form)})
    assert response.status_code == 401


async def funder_round(running: RunningRegistry, seeded: Seeded) -> tuple[httpx.AsyncClient, str]:
    client = running.client()
    await sign_in(client, running.admin_token)
    page = await client.get("/ui/funder")
    made = await client.post(
        "/ui/funder/preview",
        data={"csrf": csrf_of(page), "period_start": seeded.days[0], "period_end": seeded.days[-1],
              "target_country": "RU", "budget_sat": "1000000", "fee_reserve_sat": "50000",
              "operator_cap_bp": "6000"},
    )  # fmt: skip
    assert made.status_code == 303, re.findall(r"role=\"alert\"[^<]*", made.text)
    return client, made.headers["location"]


async def test_funder_previews_approves_downloads_psbt_and_pays_once(
    running: RunningRegistry,
) -> None:
    _, _, seeded = await world(running)
    client, where = await funder_round(running, seeded)
    page = await client.get(where)
    assert page.status_code == 200
    text = page.text
    assert "draft" in text and "alice" in text and "bob" in text
    assert "570000 sat each" in text  # operator cap: 60 % of the 950,000 sat pool
    assert re.search(r"<th scope=\"row\">alice</th>.*?<td>yes</td>", text, re.S)  # cap bit
    assert "7 / 8" not in text and '<td class="num">4</td>' in text  # days per proxy
    approved = await client.post(where + "/approve", data={"csrf": csrf_of(page)})
    assert approved.status_code == 303
    page = await client.get(where)
    assert "Download the PSBT" in page.text
    utxos = utxos_for([3_000_000])
    import json

    form: dict[str, Any] = {
        "csrf": csrf_of(page), "descriptor": DESCRIPTOR, "change_descriptor": CHANGE_DESCRIPTOR,
        "utxos": json.dumps(utxos), "fee_rate": "2",
    }  # fmt: skip
    psbt = await client.post(where + "/psbt", data=form)
    assert psbt.status_code == 200, psbt.text[:800]
    assert "attachment" in psbt.headers["content-disposition"]
    assert base64.b64decode(psbt.text)[:5] == b"psbt\xff"
    signed, tx_hex = embit_sign(psbt.text)
    assert signed >= 1 and tx_hex
    round_id = where.rsplit("/", 1)[1]
    paid = await running.client(token=running.admin_token).post(
        f"/api/v1/grants/rounds/{round_id}/mark-paid",
        json={"tx_hex": tx_hex, "change_descriptor": CHANGE_DESCRIPTOR},
    )
    assert paid.status_code == 200, paid.text
    page = await client.get(where)
    assert "paid once, by" in page.text
    again = await client.post(where + "/psbt", data={**form, "csrf": csrf_of(page)})
    assert again.status_code == 409 and "never paid twice" in again.text
    # The operator sees the paid award with its transaction id.
    operator = running.client()
    async with running.registry.sessions.begin() as db:
        from resistance.registry.tokens import new_token, token_hash

        token = new_token()
        db.add(ApiToken(role="operator", operator_id=1, token_hash=token_hash(token), created_at=0))
    await sign_in(operator, token)
    home = await operator.get("/ui/operator")
    assert paid.json()["txid"] in home.text and ">paid<" in home.text


async def test_bad_round_form_is_one_clear_line(running: RunningRegistry) -> None:
    client = running.client()
    await sign_in(client, running.admin_token)
    page = await client.get("/ui/funder")
    made = await client.post(
        "/ui/funder/preview",
        data={"csrf": csrf_of(page), "period_start": "2026-02-10", "period_end": "2026-02-01",
              "target_country": "RU", "budget_sat": "1000"},
    )  # fmt: skip
    assert made.status_code == 422
    assert "period_end is before period_start" in made.text


# --- properties of the cookie parser and the charts -------------------------------------


@given(st.text(max_size=600))
def test_any_cookie_text_is_a_session_or_none(text: str) -> None:
    assert sessions.unseal(b"k" * 32, text, now=0) is None


@given(
    st.sampled_from(["operator", "admin"]),
    st.integers(1, 2**31),
    st.one_of(st.none(), st.integers(1, 2**31)),
    st.integers(1, 2**40),
    st.binary(min_size=1, max_size=8),
)
def test_sealed_sessions_open_until_they_expire(
    role: str, token_id: int, operator_id: int | None, expires: int, flip: bytes
) -> None:
    key = b"k" * 32
    session = sessions.Session(role, token_id, operator_id, expires)
    cookie = sessions.seal(key, session)
    assert sessions.unseal(key, cookie, now=expires - 1) == session
    assert sessions.unseal(key, cookie, now=expires) is None
    assert sessions.unseal(b"j" * 32, cookie, now=0) is None
    tampered = cookie[:-2] + ("AA" if not cookie.endswith("AA") else "BB")
    assert sessions.unseal(key, tampered, now=0) is None


@given(st.text(max_size=40), st.lists(st.integers(0, 10**9), max_size=20))
def test_chart_text_is_escaped(name: str, values: list[int]) -> None:
    labels = [f"<b>{n}" for n in range(len(values))]
    svg = str(charts.bar_chart(name, labels, [charts.Series(name, values)]))
    svg += str(charts.line_chart(name, labels, [charts.Series(name, values)]))
    assert "<b>" not in svg and "<script" not in svg.lower()
    assert svg.count("<svg") == 2


@pytest.mark.parametrize("value", [0, 0.5, 7, 99, 1234])
def test_chart_axis_tops_cover_the_largest_value(value: float) -> None:
    assert charts._nice_max(value) >= value


async def test_daily_reach_totals_follow_every_rollup_change(running: RunningRegistry) -> None:
    """The triggers of migration 0011 keep the per-day totals equal to the rollups' sums."""
    from sqlalchemy import delete, func, select, update

    from resistance.registry.models import ProbeRollup, Proxy
    from resistance.registry.ui.queries import reach_by_day

    _, _, seeded = await world(running)
    reg = running.registry

    async def both() -> tuple[list[Any], list[Any]]:
        async with reg.sessions() as db:
            kept = await reach_by_day(db, since="0000")
            direct = await db.execute(
                select(
                    ProbeRollup.day,
                    ProbeRollup.control,
                    func.sum(ProbeRollup.attempts),
                    func.sum(ProbeRollup.successes),
                )
                .group_by(ProbeRollup.day, ProbeRollup.control)
                .order_by(ProbeRollup.day, ProbeRollup.control)
            )
        summed = [(d, bool(c), int(a), int(s)) for d, c, a, s in direct.all()]
        return [k for k in kept if k[2] or k[3]], summed

    kept, summed = await both()
    assert kept == summed and len(kept) == 8
    async with reg.sessions.begin() as db:
        # Ingestion's read-modify-write, a day moved, and a deleted row.
        await db.execute(
            update(ProbeRollup)
            .where(ProbeRollup.proxy_id == seeded.socks_id, ProbeRollup.control.is_(False))
            .values(attempts=ProbeRollup.attempts + 5, successes=ProbeRollup.successes + 1)
        )
        await db.execute(
            update(ProbeRollup)
            .where(ProbeRollup.proxy_id == seeded.mtproto_id, ProbeRollup.day == seeded.days[0])
            .values(day="2000-01-01")
        )
        await db.execute(delete(ProbeRollup).where(ProbeRollup.proxy_id == seeded.other_id))
    kept, summed = await both()
    assert kept == summed and ("2000-01-01", True, 24, 24) in kept
    async with reg.sessions.begin() as db:  # a proxy removed takes its rollups (cascade)
        await db.execute(delete(Proxy).where(Proxy.id == seeded.socks_id))
    kept, summed = await both()
    assert kept == summed


async def test_migration_0011_goes_down_and_up_again(db_url: str) -> None:
    from sqlalchemy import inspect

    from resistance.registry.db import make_engine, migrate
    from tests.registry.test_wireguard import downgrade

    async def tables() -> set[str]:
        engine = make_engine(db_url)
        try:
            async with engine.connect() as conn:
                return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
        finally:
            await engine.dispose()

    await migrate(db_url)
    assert "dashboard_daily_reach" in await tables()
    await downgrade(db_url, "0007")
    assert "dashboard_daily_reach" not in await tables()
    await migrate(db_url)
    assert "dashboard_daily_reach" in await tables()


async def test_public_aggregates_are_computed_once_a_window(
    running: RunningRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    from resistance.registry.ui import pages

    calls = []
    real = pages.queries.kinds_by_state

    async def counted(db: Any) -> Any:
        calls.append(1)
        return await real(db)

    monkeypatch.setattr(pages.queries, "kinds_by_state", counted)
    client = running.client()
    for _ in range(3):
        assert (await client.get("/ui/")).status_code == 200
    assert len(calls) == 1
    monkeypatch.setattr(pages, "AGGREGATE_SECONDS", 0.0)
    await client.get("/ui/")  # the reused value expired: computed again
    await client.get("/ui/")
    assert len(calls) == 3


async def test_funder_drops_a_preview_and_an_approved_round_stays(
    running: RunningRegistry,
) -> None:
    _, _, seeded = await world(running)
    client, where = await funder_round(running, seeded)
    page = await client.get(where)
    gone = await client.post(where + "/delete", data={"csrf": csrf_of(page)})
    assert gone.status_code == 303 and gone.headers["location"] == "/ui/funder"
    assert (await client.get(where)).status_code == 404
    client, where = await funder_round(running, seeded)  # the days are free again
    page = await client.get(where)
    await client.post(where + "/approve", data={"csrf": csrf_of(page)})
    page = await client.get(where)
    kept = await client.post(where + "/delete", data={"csrf": csrf_of(page)})
    assert kept.status_code == 409 and (await client.get(where)).status_code == 200
