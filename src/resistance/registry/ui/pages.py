"""The dashboard's pages under ``/ui/``: public, operator (signed in) and funder (admin).

Routes stay thin: read a bounded query (:mod:`.queries`), shape rows for a
template, draw charts (:mod:`.charts`).  Every form posts a CSRF token;
operator and funder pages need a session of their role (:mod:`.sessions`):
signed out is 401, the wrong role 403.  Refusals are pages, not JSON, since a
person reads them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup
from pydantic import ValidationError

from resistance.grants.errors import GrantsError
from resistance.registry import repositories as repo
from resistance.registry import rounds as registry_rounds
from resistance.registry.errors import ApiError
from resistance.registry.ratelimit import Limiter, client_network
from resistance.registry.schemas import RoundCreateRequest, RoundIdPath, RowIdPath
from resistance.registry.services import Registry
from resistance.registry.settings import RateLimit
from resistance.registry.tokens import token_hash
from resistance.registry.ui import charts, queries, sessions
from resistance.registry.ui.charts import Series

PAGE_SIZE = 50
#: Proxies per page of a round's inputs on the funder's round page.
ROUND_PAGE_SIZE = 500
#: The public aggregates (counts over every proxy and every vantage's evidence) are
#: computed at most once per this many seconds per process; probes report every few
#: minutes, so a page is never more than this much behind them.
AGGREGATE_SECONDS = 60.0
#: Sign-in attempts per client network: 10 at once, then one every 6 seconds.
SIGNIN_LIMIT = RateLimit(per_second=1 / 6, burst=10)
STATIC = {"ui.css": "text/css; charset=utf-8", "ui.js": "text/javascript; charset=utf-8"}
STATE_COLOURS = {
    "probation": "#1f5fa8",
    "serving": "#1e6b2a",
    "blocked": "#a3301a",
    "down": "#5a5a5a",
}
ROLE_HOME = {"operator": "/ui/operator", "admin": "/ui/funder"}


def _when(ts: int | None) -> str:
    if ts is None:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _btc(sat: int) -> str:
    return f"{sat // 100_000_000}.{sat % 100_000_000:08d}"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("resistance.registry.ui", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["when"] = _when
    env.filters["btc"] = _btc
    return env


class Refused(Exception):
    """A page refused: its status and the one line that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Dashboard:
    """The dashboard's own state: templates, the sign-in limit, cached collateral."""

    def __init__(self) -> None:
        self.env = _environment()
        self.limiter: Limiter | None = None
        #: Addresses the current blocklist import covers, by import id (ranges are fixed
        #: per import, so the sum is computed once).
        self.covered: dict[int, tuple[int, int]] = {}
        self._aggregates: dict[str, tuple[float, Any]] = {}
        self._aggregate_lock = asyncio.Lock()

    async def aggregate(self, name: str, compute: Callable[[], Awaitable[Any]]) -> Any:
        """``compute()``'s value, reused for :data:`AGGREGATE_SECONDS`; one computes at a time,
        so a burst of visitors costs one query, not one each."""
        async with self._aggregate_lock:
            found = self._aggregates.get(name)
            if found is not None and time.monotonic() < found[0] + AGGREGATE_SECONDS:
                return found[1]
            value = await compute()
            self._aggregates[name] = (time.monotonic(), value)
            return value

    def registry(self, request: Request) -> Registry:
        registry: Registry = request.app.state.registry
        if self.limiter is None:
            self.limiter = registry.make_limiter("signin", SIGNIN_LIMIT)
        return registry

    def key(self, request: Request) -> bytes:
        return sessions.derive_key(self.registry(request).ring_key)

    async def session(self, request: Request) -> sessions.Session | None:
        registry = self.registry(request)
        found = sessions.unseal(
            self.key(request), request.cookies.get(sessions.SESSION_COOKIE), now=registry.now()
        )
        if found is None:
            return None
        async with registry.sessions() as db:
            token = await queries.token_by_id(db, token_id=found.token_id)
        if token is None or token.role != found.role or token.operator_id != found.operator_id:
            return None
        return found

    async def require(self, request: Request, role: str) -> sessions.Session:
        found = await self.session(request)
        if found is None:
            raise Refused(401, "Sign in to see this page.")
        if found.role != role:
            whose = "funders (the admin token)" if role == "admin" else "operators"
            raise Refused(403, f"This page is for {whose} only.")
        return found

    def render(
        self,
        request: Request,
        template: str,
        context: Mapping[str, Any],
        *,
        status: int = 200,
        who: sessions.Session | None = None,
    ) -> HTMLResponse:
        nonce = request.cookies.get(sessions.CSRF_COOKIE)
        fresh = nonce is None or len(nonce) > 64
        if fresh:
            nonce = sessions.new_nonce()
        assert nonce is not None
        html = self.env.get_template(template).render(
            request_path=request.url.path,
            csrf=sessions.csrf_token(self.key(request), nonce),
            who=who,
            **context,
        )
        response = HTMLResponse(html, status_code=status)
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        )
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-store"
        if fresh:
            sessions.set_cookie(request, response, sessions.CSRF_COOKIE, nonce, 7 * 86400)
        return response

    def refused(self, request: Request, exc: Refused) -> HTMLResponse:
        return self.render(
            request, "refused.html", {"status": exc.status, "message": exc.message},
            status=exc.status,
        )  # fmt: skip

    async def check_form(self, request: Request) -> dict[str, str]:
        form = await request.form()
        values = {k: v for k, v in form.items() if isinstance(v, str)}
        if not sessions.csrf_ok(
            self.key(request), request.cookies.get(sessions.CSRF_COOKIE), values.get("csrf")
        ):
            raise Refused(403, "This form expired or did not come from this site; reload it.")
        return values


def _after(request: Request) -> int:
    text = request.query_params.get("after", "0")
    return int(text) if text.isascii() and text.isdigit() and len(text) < 12 else 0


def _page(rows: list[Any], limit: int) -> tuple[list[Any], int | None]:
    """The rows to show and the id to continue after (``None`` on the last page)."""
    if len(rows) > limit:
        rows = rows[:limit]
        return rows, rows[-1].proxy.id
    return rows, None


def router() -> APIRouter:
    """The dashboard's routes; the registry app mounts them with one line."""
    ui = Dashboard()
    api = APIRouter(prefix="/ui", include_in_schema=False)

    async def guarded(request: Request, page: Any) -> Response:
        try:
            response: Response = await page()
        except Refused as exc:
            return ui.refused(request, exc)
        return response

    # --- public ---------------------------------------------------------------------

    @api.get("/")
    async def network_now(request: Request) -> Response:
        registry = ui.registry(request)

        async def compute() -> tuple[Any, Any]:
            async with registry.sessions() as db:
                return await queries.kinds_by_state(db), await queries.vantages(db)

        counts, vantages = await ui.aggregate("network", compute)
        states = list(queries.STATES.values())
        chart = charts.bar_chart(
            "Proxies by kind and state",
            list(queries.KINDS),
            [
                Series(s, [counts.get((k, s), 0) for k in queries.KINDS], STATE_COLOURS.get(s))
                for s in states
            ],
        )
        return ui.render(
            request,
            "network.html",
            {
                "kinds": queries.KINDS,
                "states": states,
                "counts": counts,
                "vantages": vantages,
                "chart": chart,
            },
            who=await ui.session(request),
        )

    @api.get("/proxies")
    async def public_proxies(request: Request) -> Response:
        registry = ui.registry(request)
        after = _after(request)
        async with registry.sessions() as db:
            rows = await queries.proxies_page(
                db, after=after, limit=PAGE_SIZE + 1, public=True, operator_id=None
            )
        rows, next_after = _page(rows, PAGE_SIZE)
        return ui.render(
            request,
            "proxies.html",
            {"rows": rows, "next_after": next_after, "kind_of": queries.kind_of},
            who=await ui.session(request),
        )

    @api.get("/reachability")
    async def reachability(request: Request) -> Response:
        registry = ui.registry(request)
        today = dt.datetime.fromtimestamp(registry.now(), dt.UTC).date()
        days = [(today - dt.timedelta(days=n)).isoformat() for n in range(29, -1, -1)]
        async with registry.sessions() as db:
            rows = await queries.reach_by_day(db, since=days[0])
        by = {(d, c): (a, s) for d, c, a, s in rows}
        table = []
        for day in days:
            inside = by.get((day, False))
            outside = by.get((day, True))
            table.append((day, inside, outside))

        def rate(v: tuple[int, int] | None) -> float | None:
            return None if not v or not v[0] else 100.0 * v[1] / v[0]

        chart = charts.line_chart(
            "Share of checks that got through, per day",
            [d[5:] for d in days],
            [
                Series("inside the censored network", [rate(t[1]) for t in table], "#a3301a"),
                Series("outside (control)", [rate(t[2]) for t in table], "#1f5fa8"),
            ],
            unit="%",
        )
        return ui.render(
            request,
            "reachability.html",
            {"table": table, "chart": chart, "rate": rate},
            who=await ui.session(request),
        )

    @api.get("/blocking")
    async def blocking(request: Request) -> Response:
        registry = ui.registry(request)

        async def compute() -> list[tuple[str, int]]:
            async with registry.sessions() as db:
                return await queries.time_to_block(db)

        buckets = await ui.aggregate("time-to-block", compute)
        chart = charts.bar_chart(
            "Time from registration to first blocked verdict",
            [b[0] for b in buckets],
            [Series("proxies", [b[1] for b in buckets])],
        )
        return ui.render(
            request,
            "blocking.html",
            {"buckets": buckets, "chart": chart},
            who=await ui.session(request),
        )

    @api.get("/censor")
    async def censor(request: Request) -> Response:
        registry = ui.registry(request)

        async def compute() -> tuple[Any, int, int, tuple[int, int], Any]:
            async with registry.sessions() as db:
                imports = await queries.blocklist_imports(db)
                checked, listed = await queries.listed_proxies(db)
                blocked = await queries.listed_public_proxies(db)
                covered = (0, 0)
                if imports:
                    current = imports[-1].id
                    if current not in ui.covered:
                        ranges = await queries.current_ranges(db)
                        ui.covered = {current: _covered(ranges)}
                    covered = ui.covered[current]
            return imports, checked, listed, covered, blocked

        imports, checked, listed, covered, blocked = await ui.aggregate("censor", compute)
        chart = charts.line_chart(
            "Prefixes in the censor's registry, per import",
            [i.updated or _when(i.imported_at)[:10] for i in imports],
            [Series("prefixes", [i.prefixes for i in imports])],
        )
        return ui.render(
            request,
            "censor.html",
            {
                "imports": imports,
                "blocked": blocked,
                "chart": chart,
                "checked": checked,
                "listed": listed,
                "v4": covered[0],
                "v6_64": covered[1],
                "collateral": max(0, covered[0] - listed),
            },
            who=await ui.session(request),
        )

    @api.get("/static/{name}")
    async def static(name: str) -> Response:
        if name not in STATIC:
            return Response("not found", status_code=404, media_type="text/plain")
        data = resources.files("resistance.registry.ui").joinpath("static", name).read_bytes()
        return Response(
            data, media_type=STATIC[name], headers={"Cache-Control": "public, max-age=3600"}
        )

    # --- sign-in --------------------------------------------------------------------

    @api.get("/signin")
    async def signin_form(request: Request) -> Response:
        return ui.render(request, "signin.html", {"error": None}, who=await ui.session(request))

    @api.post("/signin")
    async def signin(request: Request) -> Response:
        async def page() -> Response:
            registry = ui.registry(request)
            assert ui.limiter is not None
            wait = await ui.limiter.allow(
                client_network(request.client.host if request.client else None), registry.clock()
            )
            if wait > 0:
                response = ui.render(
                    request,
                    "signin.html",
                    {"error": "Too many sign-in attempts from your network; wait a minute."},
                    status=429,
                )
                response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
                return response
            form = await ui.check_form(request)
            token = form.get("token", "").strip()
            found = None
            if 0 < len(token) <= 200:
                async with registry.sessions() as db:
                    found = await queries.token_by_hash(db, digest=token_hash(token))
            if found is None or found.role not in ROLE_HOME:
                return ui.render(
                    request,
                    "signin.html",
                    {"error": "That token is not an operator or admin token of this registry."},
                    status=401,
                )
            session = sessions.Session(
                found.role, found.id, found.operator_id, registry.now() + sessions.SESSION_SECONDS
            )
            signed_in = RedirectResponse(ROLE_HOME[found.role], status_code=303)
            sessions.set_cookie(
                request,
                signed_in,
                sessions.SESSION_COOKIE,
                sessions.seal(ui.key(request), session),
                sessions.SESSION_SECONDS,
            )
            sessions.set_cookie(
                request, signed_in, sessions.CSRF_COOKIE, sessions.new_nonce(), 7 * 86400
            )
            return signed_in

        return await guarded(request, page)

    @api.post("/signout")
    async def signout(request: Request) -> Response:
        async def page() -> Response:
            await ui.check_form(request)
            response = RedirectResponse("/ui/", status_code=303)
            sessions.clear_cookie(request, response, sessions.SESSION_COOKIE)
            sessions.clear_cookie(request, response, sessions.CSRF_COOKIE)
            return response

        return await guarded(request, page)

    # --- operator -------------------------------------------------------------------

    @api.get("/operator")
    async def operator_home(request: Request) -> Response:
        async def page() -> Response:
            who = await ui.require(request, "operator")
            registry = ui.registry(request)
            async with registry.sessions() as db:
                rows = await queries.proxies_page(
                    db,
                    after=_after(request),
                    limit=PAGE_SIZE + 1,
                    public=None,
                    operator_id=who.operator_id,
                )
                operator_rounds = await queries.rounds(db, statuses=("approved", "paid"))
                operator = await repo.operator_by_id(db, operator_id=who.operator_id or 0)
            rows, next_after = _page(rows, PAGE_SIZE)
            name = operator.name if operator else ""
            awards = _awards_of(operator_rounds, name)
            return ui.render(
                request,
                "operator.html",
                {
                    "operator": operator,
                    "rows": rows,
                    "next_after": next_after,
                    "kind_of": queries.kind_of,
                    "awards": awards,
                },
                who=who,
            )

        return await guarded(request, page)

    @api.get("/operator/proxies/{proxy_id}")
    async def operator_proxy(request: Request, proxy_id: RowIdPath) -> Response:
        async def page() -> Response:
            who = await ui.require(request, "operator")
            registry = ui.registry(request)
            async with registry.sessions() as db:
                row = await queries.proxy_of(
                    db, operator_id=who.operator_id or 0, proxy_id=proxy_id
                )
                if row is None:
                    raise Refused(404, "You have no proxy with that number.")
                evidence = await queries.evidence_of(db, proxy_id=proxy_id)
                history = await queries.history_of(db, proxy_id=proxy_id, limit=100)
                results = await queries.recent_results(db, proxy_id=proxy_id, limit=50)
            return ui.render(
                request,
                "proxy.html",
                {
                    "row": row,
                    "kind": queries.kind_of(row.proxy.protocols),
                    "links": _links(row.proxy),
                    "evidence": evidence,
                    "history": history,
                    "results": results,
                },
                who=who,
            )

        return await guarded(request, page)

    # --- funder ---------------------------------------------------------------------

    @api.get("/funder")
    async def funder_home(request: Request) -> Response:
        async def page() -> Response:
            who = await ui.require(request, "admin")
            return await _funder_page(request, who, error=None, status=200)

        return await guarded(request, page)

    async def _funder_page(
        request: Request, who: sessions.Session, *, error: str | None, status: int
    ) -> Response:
        registry = ui.registry(request)
        async with registry.sessions() as db:
            all_rounds = await queries.rounds(db)
        today = dt.datetime.fromtimestamp(registry.now(), dt.UTC).date()
        start = today.replace(day=1)
        return ui.render(
            request,
            "funder.html",
            {
                "rounds": all_rounds,
                "error": error,
                "default_start": start.isoformat(),
                "default_end": today.isoformat(),
            },
            who=who,
            status=status,
        )

    @api.post("/funder/preview")
    async def funder_preview(request: Request) -> Response:
        async def page() -> Response:
            who = await ui.require(request, "admin")
            form = await ui.check_form(request)
            try:
                body = RoundCreateRequest.model_validate(
                    {
                        "period_start": form.get("period_start", ""),
                        "period_end": form.get("period_end", ""),
                        "target_country": form.get("target_country", "").upper(),
                        "budget_sat": int(form.get("budget_sat", "0") or 0),
                        "fee_reserve_sat": int(form.get("fee_reserve_sat", "0") or 0),
                        "operator_cap_bp": int(form.get("operator_cap_bp", "10000") or 10000),
                    }
                )
                made = await registry_rounds.create_round(ui.registry(request), request=body)
            except (ValueError, ValidationError) as exc:
                message = str(exc).splitlines()[0] if str(exc) else "bad form"
                if isinstance(exc, ValidationError):
                    first = exc.errors()[0]
                    message = f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}"
                return await _funder_page(request, who, error=message, status=422)
            except ApiError as exc:
                return await _funder_page(request, who, error=exc.message, status=exc.status)
            return RedirectResponse(f"/ui/funder/rounds/{made['round_id']}", status_code=303)

        return await guarded(request, page)

    async def _round_page(
        request: Request, who: sessions.Session, round_id: str, *, error: str | None, status: int
    ) -> Response:
        registry = ui.registry(request)
        try:
            shown = await registry_rounds.show_round(registry, round_id=round_id)
        except ApiError as exc:
            raise Refused(exc.status, exc.message) from None
        after = _after(request)
        async with registry.sessions() as db:
            row = await repo.round_by_id(db, round_id=round_id)
            assert row is not None
            page = await repo.round_proxies_page(
                db, round_pk=row.id, after=after, limit=ROUND_PAGE_SIZE + 1
            )
            legacy = not page and after == 0 and row.summary is None
            stored = await registry_rounds.stored_round(db, row) if legacy else None
        if stored is not None:  # computed before migration 0015: summed from its inputs
            per_proxy = [
                _page_row(i, p) for i, p in enumerate(registry_rounds.per_proxy(stored.inputs), 1)
            ]
            per_proxy, next_after = per_proxy[:ROUND_PAGE_SIZE], None
        else:
            per_proxy = [_page_row(p.position, p) for p in page[:ROUND_PAGE_SIZE]]
            next_after = per_proxy[-1]["position"] if len(page) > ROUND_PAGE_SIZE else None
        settings = shown["settings"]
        pool = shown["pool_sat"]
        operator_cap = pool * settings["operator_cap_bp"] // 10_000
        return ui.render(
            request,
            "round.html",
            {
                "round": shown,
                "per_proxy": per_proxy,
                "next_after": next_after,
                "carried_in": registry_rounds.inputs_summary(row)["carried_in"],
                "operator_cap": operator_cap,
                "operator_capped": settings["operator_cap_bp"] < 10_000,
                "network_cap": pool * settings["network_cap_bp"] // 10_000,
                "error": error,
            },
            who=who,
            status=status,
        )

    @api.get("/funder/rounds/{round_id}")
    async def funder_round(request: Request, round_id: RoundIdPath) -> Response:
        async def page() -> Response:
            who = await ui.require(request, "admin")
            return await _round_page(request, who, round_id, error=None, status=200)

        return await guarded(request, page)

    async def round_action(
        request: Request,
        round_id: str,
        action: Callable[..., Awaitable[Any]],
        then: str,
    ) -> Response:
        """A funder's form on a round: the action, then ``then``; its refusal on the page."""

        async def page() -> Response:
            who = await ui.require(request, "admin")
            await ui.check_form(request)
            try:
                await action(ui.registry(request), round_id=round_id)
            except ApiError as exc:
                return await _round_page(
                    request, who, round_id, error=exc.message, status=exc.status
                )
            return RedirectResponse(then, status_code=303)

        return await guarded(request, page)

    @api.post("/funder/rounds/{round_id}/approve")
    async def funder_approve(request: Request, round_id: RoundIdPath) -> Response:
        return await round_action(
            request, round_id, registry_rounds.approve_round, f"/ui/funder/rounds/{round_id}"
        )

    @api.post("/funder/rounds/{round_id}/delete")
    async def funder_delete(request: Request, round_id: RoundIdPath) -> Response:
        return await round_action(request, round_id, registry_rounds.delete_draft, "/ui/funder")

    @api.post("/funder/rounds/{round_id}/psbt")
    async def funder_psbt(request: Request, round_id: RoundIdPath) -> Response:
        async def page() -> Response:
            who = await ui.require(request, "admin")
            form = await ui.check_form(request)
            registry = ui.registry(request)
            async with registry.sessions() as db:
                row = await repo.round_by_id(db, round_id=round_id)
                stored = None if row is None else await registry_rounds.stored_round(db, row)
            if row is None or stored is None:
                raise Refused(404, f"There is no round {round_id}.")
            if row.status == "paid":
                return await _round_page(
                    request, who, round_id, status=409,
                    error=f"This round is paid (txid {row.txid}); it is never paid twice.",
                )  # fmt: skip
            try:
                psbt = await asyncio.to_thread(_build_psbt, stored, form, registry.settings.network)
            except (ValueError, GrantsError) as exc:
                return await _round_page(request, who, round_id, error=str(exc), status=422)
            return Response(
                psbt,
                media_type="application/octet-stream",
                headers={
                    "Content-Disposition": f'attachment; filename="{round_id}.psbt"',
                    "Cache-Control": "no-store",
                },
            )

        return await guarded(request, page)

    return api


def _build_psbt(round_: Any, form: Mapping[str, str], network: str) -> str:
    """The unsigned PSBT (base64) paying an approved round from the funder's UTXOs."""
    from resistance.grants import payout

    fee_text = form.get("fee_rate", "")
    if not fee_text.isdigit() or not 1 <= int(fee_text) <= 10_000:
        raise ValueError("fee rate must be a whole number of sat/vB, 1-10000")
    built = payout.build_payout_psbt(
        round_,
        descriptor=form.get("descriptor", "").strip(),
        change_descriptor=form.get("change_descriptor", "").strip(),
        utxos=payout.load_utxos(form.get("utxos", "")),
        fee_rate_sat_vb=int(fee_text),
        network=network,
    )
    return built.psbt_base64


def _covered(ranges: Any) -> tuple[int, int]:
    """IPv4 addresses and IPv6 /64s that the ranges cover (fixed-width hex, see models)."""
    v4 = v6 = 0
    top = 1 << 128
    for start_hex, end_hex in ranges:
        a, b = int(start_hex, 16), int(end_hex, 16)
        if a >= top:
            v4 += b - a + 1
        else:
            v6 += (b >> 64) - (a >> 64) + 1
    return v4, v6


def _links(proxy: Any) -> list[dict[str, Any]]:
    """Links (and their QR codes as inline SVG) an operator hands to users."""
    import segno

    from resistance.links import socks_links

    out = []
    if "socks5" in proxy.protocols:
        for cred in proxy.credentials[:10]:
            links = socks_links(proxy.host, proxy.port, cred.get("username"), cred.get("password"))
            qr = segno.make(links.https, error="m").svg_inline(scale=3, dark="#000", light="#fff")
            out.append(
                {
                    "label": f"SOCKS5 for user {cred.get('username', '')}",
                    "tg": links.tg,
                    "https": links.https,
                    "qr": Markup(qr),
                }
            )
    return out


def _page_row(position: int, p: Any) -> dict[str, Any]:
    """One per-proxy row of a round for its page (a stored row, or a dict of one)."""
    get = p.get if isinstance(p, dict) else lambda name: getattr(p, name)
    return {
        "position": position,
        "proxy_id": get("proxy_id"),
        "operator": get("operator"),
        "network": get("network"),
        "days": get("days"),
        "ca": get("control_attempts"),
        "cs": get("control_successes"),
        "ta": get("target_attempts"),
        "ts": get("target_successes"),
    }


def _awards_of(rows: list[Any], operator_name: str) -> list[dict[str, Any]]:
    """This operator's awards in approved (pending) and paid rounds."""
    out = []
    for row in rows:
        for award in json.loads(row.result)["awards"]:
            if award["operator_id"] != operator_name:
                continue
            out.append(
                {
                    "round_id": row.round_id,
                    "period": f"{row.period_start} .. {row.period_end}",
                    "status": "paid" if row.status == "paid" else "pending",
                    "amount_sat": award["amount_sat"],
                    "carried_out_sat": award["carried_out_sat"],
                    "txid": row.txid,
                }
            )
    return out
