"""The dashboard feed (DESIGN 3.8) as a Starlette app the daemon mounts and serves.

The daemon hands in what the feed needs as callables and an EventHub; the feed itself
holds no daemon state. Blocking calls (the record, the callbacks) run in a worker
thread so a slow database never stalls the event streams.
"""

from __future__ import annotations

import html
import inspect
import json
import time
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tagwatch.feed.actions import AlertResolved, UnknownAlert, latest_record
from tagwatch.feed.auth import OPERATOR, User, Users, bearer_token
from tagwatch.feed.events import EventHub
from tagwatch.feed.geo import track_geojson, zones_geojson
from tagwatch.feed.stream import event_stream
from tagwatch.notify.ack import AckError
from tagwatch.notify.records import parse_ts
from tagwatch.record import Record
from tagwatch.shipped import static
from zones import ZoneSet

STATIC = static()  # package data (tagwatch.shipped)
STATES = ("open", "updated", "acknowledged", "escalated", "resolved")
TRACK_DEFAULT_S = 3600.0
FALLBACK_LIMIT = 10_000
CLOCK_SLACK_S = 1.0  # a record's `raised` and its event id come from two clock readings


def create_app(
    *,
    record: Record,
    zones_provider: Callable[[], ZoneSet],
    users: Iterable,
    hub: EventHub,
    on_ack: Callable[[str, str, str], dict],
    on_resolve: Callable[[str, str, str], dict],
    health: Callable[[], dict],
    metrics: Callable[[], bytes],
    tile_url: str | None = None,
    default_warn_m: float = 250.0,
) -> Starlette:
    """The feed app. on_ack/on_resolve(alert_id, user name, note) -> the new alert record
    (sync or async); they write it to the record and publish it to the hub."""
    feed = _Feed(
        record,
        zones_provider,
        Users(users),
        hub,
        on_ack,
        on_resolve,
        health,
        metrics,
        tile_url,
        default_warn_m,
    )
    routes = [
        Route("/", feed.page),
        Route("/healthz", feed.healthz),
        Route("/readyz", feed.readyz),
        Route("/metrics", feed.metrics_text),
        Route("/api/alerts", feed.alerts),
        Route("/api/alerts/{id}/ack", feed.ack, methods=["POST"]),
        Route("/api/alerts/{id}/resolve", feed.resolve, methods=["POST"]),
        Route("/api/alerts/{id}/deliveries", feed.deliveries),
        Route("/api/events", feed.events),
        Route("/api/tags/{tag}/track", feed.track),
        Route("/api/cases/{case}/zones", feed.zones),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _error})


async def _error(request: Request, exc: HTTPException) -> Response:
    headers = dict(exc.headers or {})
    return JSONResponse({"error": exc.detail}, exc.status_code, headers=headers)


class _Feed:
    def __init__(
        self,
        record,
        zones_provider,
        users,
        hub,
        on_ack,
        on_resolve,
        health,
        metrics,
        tile_url,
        default_warn_m,
    ) -> None:
        self.record: Record = record
        self.zones_provider = zones_provider
        self.users: Users = users
        self.hub: EventHub = hub
        self.on_ack, self.on_resolve = on_ack, on_resolve
        self.health, self.metrics = health, metrics
        self.tile_url = tile_url
        self.default_warn_m = default_warn_m
        self.page_html = _page_html(tile_url)

    # --- auth ----------------------------------------------------------------------

    def user(self, request: Request, query_token: bool = False) -> User:
        token = bearer_token(request.headers.get("authorization"))
        if token is None and query_token:
            token = request.query_params.get("access_token")
        user = self.users.authenticate(token)
        if user is None:
            what = "no bearer token" if token is None else "unknown bearer token"
            raise HTTPException(
                401, f"{request.url.path}: {what}", headers={"WWW-Authenticate": "Bearer"}
            )
        return user

    # --- open paths ----------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        return HTMLResponse(self.page_html, headers=_page_headers(self.tile_url))

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "alive"})

    async def readyz(self, request: Request) -> Response:
        state = dict(await run_in_threadpool(self.health))
        state["feed"] = self.hub.stats()
        return JSONResponse(state, 200 if state.get("ready") else 503)

    async def metrics_text(self, request: Request) -> Response:
        body = await run_in_threadpool(self.metrics)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    # --- alerts --------------------------------------------------------------------

    async def alerts(self, request: Request) -> Response:
        self.user(request)
        state = request.query_params.get("state")
        if state is not None and state not in STATES:
            raise HTTPException(400, f"state={state!r}: must be one of {', '.join(STATES)}")
        limit = _int_param(request, "limit", 1000, 1, 100_000)
        # Every event up to the watermark was recorded before this read, so the page
        # can open the stream at the watermark and miss nothing in between.
        watermark = self.hub.last_id
        alerts = await run_in_threadpool(self.record.latest_alerts, state, limit)
        return JSONResponse(alerts, headers={"X-Last-Event-ID": str(watermark)})

    async def ack(self, request: Request) -> Response:
        return await self._act(request, self.on_ack)

    async def resolve(self, request: Request) -> Response:
        return await self._act(request, self.on_resolve)

    async def _act(self, request: Request, action: Callable) -> Response:
        user = self.user(request)
        alert_id = request.path_params["id"]
        if user.role != OPERATOR:
            raise HTTPException(
                403,
                f"{request.url.path}: user {user.name!r} has role "
                f"{user.role!r}; only an operator may do this",
            )
        note = await _note(request)
        try:
            latest = await run_in_threadpool(latest_record, self.record, alert_id)
            if latest.get("state") == "resolved":
                raise AlertResolved(f"alert {alert_id}: already resolved")
            if inspect.iscoroutinefunction(action):
                result = await action(alert_id, user.name, note)
            else:
                result = await run_in_threadpool(action, alert_id, user.name, note)
        except UnknownAlert as exc:
            raise HTTPException(404, str(exc)) from None
        except (AlertResolved, AckError) as exc:
            raise HTTPException(409, str(exc)) from None
        return JSONResponse(result)

    async def deliveries(self, request: Request) -> Response:
        """How the alert's SMS, calls and police webhook went (Record.deliveries)."""
        self.user(request)
        alert_id = request.path_params["id"]
        try:
            found = await run_in_threadpool(self._deliveries, alert_id)
        except UnknownAlert as exc:
            raise HTTPException(404, f"{request.url.path}: {exc}") from None
        return JSONResponse(found)

    def _deliveries(self, alert_id: str) -> list[dict]:
        latest_record(self.record, alert_id)  # raises UnknownAlert
        return self.record.deliveries(alert_id)

    # --- event stream --------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        self.user(request, query_token=True)
        last_id = _last_event_id(request)
        resume = self.hub.subscribe(last_id)

        async def fallback(since_id: int) -> list[tuple[dict, str]]:
            return await run_in_threadpool(self._changed_since, since_id, resume.watermark)

        return StreamingResponse(
            event_stream(resume, last_id, fallback),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    def _changed_since(self, since_id: int, watermark: int) -> list[tuple[dict, str]]:
        """Latest record of each alert changed after the time an event id encodes."""
        if since_id > watermark:  # an id from a clock ahead of ours: send every open alert
            found = self.record.latest_alerts("open", FALLBACK_LIMIT)
        else:
            since = since_id / 1e6 - CLOCK_SLACK_S
            found = [
                a for a in self.record.latest_alerts(None, FALLBACK_LIMIT) if _raised(a) >= since
            ]
        found.reverse()  # oldest first, as they happened
        return [(a, json.dumps(a, separators=(",", ":"), ensure_ascii=False)) for a in found]

    # --- map -----------------------------------------------------------------------

    async def track(self, request: Request) -> Response:
        self.user(request)
        tag = request.path_params["tag"]
        text = request.query_params.get("since")
        try:
            since = parse_ts(text, "since") if text else time.time() - TRACK_DEFAULT_S
        except ValueError as exc:
            raise HTTPException(400, f"{request.url.path}: {exc}") from None
        fixes = await run_in_threadpool(self.record.track, tag, since)
        return JSONResponse(track_geojson(tag, fixes))

    async def zones(self, request: Request) -> Response:
        self.user(request)
        case_id = request.path_params["case"]
        case = next((c for c in self.zones_provider().cases if c.id == case_id), None)
        if case is None:
            raise HTTPException(404, f"{request.url.path}: no case {case_id!r} is loaded")
        return JSONResponse(zones_geojson(case, self.default_warn_m))


async def _note(request: Request) -> str:
    raw = await request.body()
    if not raw.strip():
        return ""
    try:
        body = json.loads(raw)
    except ValueError:
        raise HTTPException(400, f"{request.url.path}: body is not JSON") from None
    note = body.get("note", "") if isinstance(body, dict) else None
    if not isinstance(note, str):
        raise HTTPException(400, f'{request.url.path}: body must be {{"note": string}}')
    return note


def _last_event_id(request: Request) -> int | None:
    # The header is what EventSource sends when it reconnects; the query parameter lets
    # the page start at the watermark of its first /api/alerts read.
    text = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise HTTPException(400, f"Last-Event-ID {text!r}: not an event id (an integer)") from None


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise HTTPException(400, f"{name}={text!r}: not an integer") from None
    if not low <= value <= high:
        raise HTTPException(400, f"{name}={value}: must be {low}..{high}")
    return value


def _raised(alert: dict) -> float:
    try:
        return parse_ts(alert.get("raised"), f"alert {alert.get('id')!r}: raised")
    except ValueError:
        return float("inf")  # unreadable: send it rather than risk a gap


def _page_html(tile_url: str | None) -> str:
    text = (STATIC / "index.html").read_text(encoding="utf-8")
    return text.replace('data-tile-url=""', f'data-tile-url="{html.escape(tile_url or "")}"')


def _page_headers(tile_url: str | None) -> dict[str, str]:
    images = "'self' data:"
    if tile_url:
        parts = urlsplit(tile_url.replace("{s}", "*"))  # {s}: the tile server's subdomains
        images += f" {parts.scheme}://{parts.netloc}"
    csp = (
        f"default-src 'self'; img-src {images}; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'"
    )
    return {
        "Content-Security-Policy": csp,
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
    }
