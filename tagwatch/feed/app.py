"""The dashboard feed (DESIGN 3.8) as a Starlette app the daemon mounts and serves.

The daemon hands in what the feed needs as callables and an EventHub; the feed itself
holds no daemon state. Blocking calls (the record, the callbacks) run in a worker
thread so a slow database never stalls the event streams.
"""

from __future__ import annotations

import html
import inspect
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tagwatch.delivery_terms import redact_urls
from tagwatch.feed.actions import AlertResolved, UnknownAlert, latest_record
from tagwatch.feed.auth import INGEST, INVESTIGATOR, OPERATOR, User, Users, bearer_token
from tagwatch.feed.events import EventHub
from tagwatch.feed.geo import track_geojson, zones_geojson
from tagwatch.feed.limits import MAX_BODY_BYTES, BodyLimit, SecurityHeaders
from tagwatch.feed.stream import event_stream
from tagwatch.ingest.traccar import TraccarError, traccar_fix
from tagwatch.notify.ack import AckError
from tagwatch.notify.records import parse_ts
from tagwatch.record import Record
from tagwatch.shipped import static
from tagwatch.wire import rfc3339
from zones import ZoneSet

STATIC = static()  # package data (tagwatch.shipped)
STATES = ("open", "updated", "acknowledged", "escalated", "resolved")
TRACK_DEFAULT_S = 3600.0
FALLBACK_LIMIT = 10_000
CLOCK_SLACK_S = 1.0  # a record's `raised` and its event id come from two clock readings
SSE_MAX_CLIENTS = 200  # event streams at once, all users ([feed] sse_max_clients)
SSE_MAX_PER_USER = 10  # per user ([feed] sse_max_per_user)
ALERTS_MAX = 10_000  # /api/alerts?limit= at most; more: page with ?before=
TRACK_PAGE = 10_000  # fixes per /api/tags/{tag}/track page by default
TRACK_MAX = 50_000  # ?limit= at most; more: page with ?after=
MAX_NOTE_CHARS = 2_000  # an operator's note; the record it goes into must fit one MQTT packet


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
    device_position: Callable[[str], tuple[float, float, float] | None] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    sse_max_clients: int = SSE_MAX_CLIENTS,
    sse_max_per_user: int = SSE_MAX_PER_USER,
    on_traccar: Callable[[str, bytes], object] | None = None,
    cases_view: Callable[[], list[dict]] | None = None,
) -> Starlette:
    """The feed app. on_ack/on_resolve(alert_id, user name, note) -> the new alert record
    (sync or async); they write it to the record and publish it to the hub.
    device_position(victim device id) -> (ts, lon, lat) of its last fix, or None: the
    engine's memory (victim positions are not in the record); without it, none shown."""
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
        _Streams(sse_max_clients, sse_max_per_user),
    )
    feed.device_position = device_position
    feed.on_traccar = on_traccar
    feed.cases_view = cases_view
    routes = [
        Route("/", feed.page),
        Route("/healthz", feed.healthz),
        Route("/readyz", feed.readyz),
        Route("/metrics", feed.metrics_text),
        Route("/api/alerts", feed.alerts),
        Route("/api/alerts/{id}/ack", feed.ack, methods=["POST"]),
        Route("/api/alerts/{id}/resolve", feed.resolve, methods=["POST"]),
        Route("/api/alerts/{id}/deliveries", feed.deliveries),
        Route("/api/alerts/{id}/victim", feed.victim),
        Route("/api/events", feed.events),
        Route("/api/tags/{tag}/track", feed.track),
        Route("/api/cases", feed.cases),
        Route("/api/cases/{case}/zones", feed.zones),
        Route("/api/near", feed.near),
        Route("/ingest/traccar", feed.traccar, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(BodyLimit, max_bytes=max_body_bytes),
    ]
    return Starlette(
        routes=routes, middleware=middleware, exception_handlers={HTTPException: _error}
    )


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
        streams,
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
        self.streams: _Streams = streams

    # --- auth ----------------------------------------------------------------------

    def user(self, request: Request, query_token: bool = False, ingest: bool = False) -> User:
        """The authenticated user; a user of role ingest only where `ingest` (and only it)."""
        token = bearer_token(request.headers.get("authorization"))
        if token is None and query_token:
            token = request.query_params.get("access_token")
        user = self.users.authenticate(token)
        if user is None:
            what = "no bearer token" if token is None else "unknown bearer token"
            raise HTTPException(
                401, f"{request.url.path}: {what}", headers={"WWW-Authenticate": "Bearer"}
            )
        if (user.role == INGEST) != ingest:
            only = "only POST /ingest/traccar" if user.role == INGEST else "not this path"
            raise HTTPException(
                403, f"{request.url.path}: user {user.name!r} has role {user.role!r}: {only}"
            )
        return user

    async def cases(self, request: Request) -> Response:
        """Each case with its tags' state and each victim's protection (feed/cases.py)."""
        self.user(request)
        if self.cases_view is None:
            return JSONResponse([])
        return JSONResponse(self.cases_view())

    async def traccar(self, request: Request) -> Response:
        """Traccar's JSON position forwarding (DESIGN 3.1): 200 once the fix is committed,
        4xx with the reason for what is not a fix (tagwatch/ingest/traccar.py)."""
        self.user(request, ingest=True)
        if self.on_traccar is None:
            raise HTTPException(503, f"{request.url.path}: the daemon takes no fixes here")
        body = await request.body()
        try:
            tag, payload = traccar_fix(body)
        except TraccarError as exc:
            raise HTTPException(400, f"{request.url.path}: {exc}") from None
        status, answer = await self.on_traccar(tag, payload)  # type: ignore[misc]
        if status != 200:
            raise HTTPException(status, f"{request.url.path}: {answer['error']}")
        return JSONResponse(answer)

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
        limit = _int_param(request, "limit", 1000, 1, ALERTS_MAX)
        before = _int_param(request, "before", 0, 1, 2**63 - 1) or None
        # Every event up to the watermark was recorded before this read, so the page
        # can open the stream at the watermark and miss nothing in between.
        watermark = self.hub.last_id
        alerts, cursor = await run_in_threadpool(
            self.record.latest_alerts_page, state, limit, before
        )
        headers = {"X-Last-Event-ID": str(watermark)}
        if cursor is not None:  # a full page: the next one is ?before=<cursor>
            headers["X-Next-Before"] = str(cursor)
        return JSONResponse(alerts, headers=headers)

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
        except UnknownAlert:
            raise HTTPException(404, f"{request.url.path}: no such alert") from None
        except (AlertResolved, AckError) as exc:
            raise HTTPException(409, f"{request.url.path}: {self._public(exc)}") from None
        return JSONResponse(result)

    def _public(self, exc: Exception) -> str:
        """An error's text without the record's URL or path (it names the database)."""
        text = str(exc)
        for label in {self.record.label, redact_urls(self.record.label)}:
            text = text.replace(f"{label}: ", "").replace(label, "the record")
        return text

    async def deliveries(self, request: Request) -> Response:
        """How the alert's SMS, calls and police webhook went (Record.deliveries)."""
        self.user(request)
        alert_id = request.path_params["id"]
        try:
            found = await run_in_threadpool(self._deliveries, alert_id)
        except UnknownAlert:
            raise HTTPException(404, f"{request.url.path}: no such alert") from None
        return JSONResponse(found)

    def _deliveries(self, alert_id: str) -> list[dict]:
        latest_record(self.record, alert_id)  # raises UnknownAlert
        return self.record.deliveries(alert_id)

    async def victim(self, request: Request) -> Response:
        """The last position of the victim's device, for an alert about the victim in person
        (zone null: proximity, following); lat/lon null when unknown or for a zone's alert.
        Only through such an alert: never a victim's position at will."""
        self.user(request)
        alert_id = request.path_params["id"]
        try:
            found = await run_in_threadpool(self._victim, alert_id)
        except UnknownAlert as exc:
            raise HTTPException(404, f"{request.url.path}: {exc}") from None
        return JSONResponse(found)

    def _victim(self, alert_id: str) -> dict:
        alert = latest_record(self.record, alert_id)  # raises UnknownAlert
        victim_id = alert.get("victim")
        out = {"victim": victim_id, "lat": None, "lon": None, "ts": None, "age_s": None}
        case = next((c for c in self.zones_provider().cases if c.id == alert.get("case")), None)
        victim = next((v for v in case.victims if v.id == victim_id), None) if case else None
        if alert.get("zone") is not None:  # a zone's alert: the zone is the place, not the victim
            return out
        if victim is None or victim.phone_device is None or self.device_position is None:
            return out
        found = self.device_position(victim.phone_device)
        if found is not None:
            ts, lon, lat = found
            out.update(lat=lat, lon=lon, ts=rfc3339(ts), age_s=round(max(0.0, time.time() - ts)))
        return out

    # --- event stream --------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        user = self.user(request, query_token=True)
        last_id = _last_event_id(request)
        refused = self.streams.take(user.name)
        if refused is not None:
            status, why = refused
            raise HTTPException(status, f"{request.url.path}: {why}", headers={"Retry-After": "10"})
        try:
            resume = self.hub.subscribe(last_id)
        except BaseException:
            self.streams.release(user.name)
            raise

        async def fallback(since_id: int) -> list[tuple[dict, str]]:
            return await run_in_threadpool(self._changed_since, since_id, resume.watermark)

        async def counted() -> AsyncIterator[str]:
            try:
                async for chunk in event_stream(resume, last_id, fallback):
                    yield chunk
            finally:
                self.streams.release(user.name)

        return StreamingResponse(
            counted(),
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
        limit = _int_param(request, "limit", TRACK_PAGE, 1, TRACK_MAX)
        after = _cursor(request.query_params.get("after"))
        fixes, cursor = await run_in_threadpool(self.record.track_page, tag, since, limit, after)
        body = track_geojson(tag, fixes)
        headers = {}
        if cursor is not None:  # more fixes: the next page is ?after=<next>, same since
            body["next"] = headers["X-Next-After"] = f"{cursor[0]!r}:{cursor[1]}"
        return JSONResponse(body, headers=headers)

    async def zones(self, request: Request) -> Response:
        self.user(request)
        case_id = request.path_params["case"]
        case = next((c for c in self.zones_provider().cases if c.id == case_id), None)
        if case is None:
            raise HTTPException(404, f"{request.url.path}: no case {case_id!r} is loaded")
        return JSONResponse(zones_geojson(case, self.default_warn_m))


    # --- investigation -------------------------------------------------------------

    async def near(self, request: Request) -> Response:
        """Crime-scene correlation (DESIGN 3.8): investigators only; recorded with the
        user's name before the answer is sent."""
        from tagwatch.record.near import NearQuery, NearRefused

        user = self.user(request)
        if user.role != INVESTIGATOR:
            raise HTTPException(
                403,
                f"{request.url.path}: user {user.name!r} has role {user.role!r}; "
                "only an investigator may search where tags were",
            )
        q = request.query_params
        try:
            query = NearQuery(
                _float_param(request, "lat"),
                _float_param(request, "lon"),
                _float_param(request, "radius_m"),
                parse_ts(q.get("since"), "since"),
                parse_ts(q.get("until"), "until"),
                q.get("reason", ""),
            ).check()
        except (ValueError, NearRefused) as exc:
            raise HTTPException(400, f"{request.url.path}: {exc}") from None
        results = await run_in_threadpool(
            self.record.near, query, user.name, "feed", time.time()
        )
        return JSONResponse(results)


class _Streams:
    """How many event streams are open, per user and in all, against the caps."""

    def __init__(self, max_clients: int, max_per_user: int) -> None:
        self.max_clients, self.max_per_user = max_clients, max_per_user
        self._open: dict[str, int] = {}
        self._lock = threading.Lock()

    def take(self, user: str) -> tuple[int, str] | None:
        """None if user may open one more; else (status, why): 429 for this user's
        cap, 503 for the total."""
        with self._lock:
            mine = self._open.get(user, 0)
            if mine >= self.max_per_user:
                return 429, f"user {user!r} has {mine} event streams open, the most allowed"
            if sum(self._open.values()) >= self.max_clients:
                return 503, f"{self.max_clients} event streams open, the most allowed"
            self._open[user] = mine + 1
            return None

    def release(self, user: str) -> None:
        with self._lock:
            left = self._open.get(user, 0) - 1
            if left > 0:
                self._open[user] = left
            else:
                self._open.pop(user, None)


def _cursor(text: str | None) -> tuple[float, int] | None:
    if not text:
        return None
    ts, _sep, entry = text.partition(":")
    try:
        return float(ts), int(entry)
    except ValueError:
        raise HTTPException(400, f"after={text!r}: not a cursor of this API") from None


async def _note(request: Request) -> str:
    raw = await request.body()
    if not raw.strip():
        return ""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise HTTPException(400, f"{request.url.path}: body is not JSON") from None
    note = body.get("note", "") if isinstance(body, dict) else None
    if not isinstance(note, str):
        raise HTTPException(400, f'{request.url.path}: body must be {{"note": string}}')
    if len(note) > MAX_NOTE_CHARS:
        raise HTTPException(
            400, f"{request.url.path}: note of {len(note)} characters; at most {MAX_NOTE_CHARS}"
        )
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


def _float_param(request: Request, name: str) -> float:
    text = request.query_params.get(name)
    if text is None:
        raise HTTPException(400, f"{request.url.path}: {name}: required")
    try:
        return float(text)
    except ValueError:
        raise HTTPException(400, f"{request.url.path}: {name}={text!r}: not a number") from None


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
