// The operator dashboard: alert queue, details with acknowledge/resolve, map panel.
// Events only mark alerts dirty; one requestAnimationFrame pass updates the keyed rows
// that changed and moves only the rows that are out of place, so a burst of events costs
// one layout per frame, not one per event.

import { drawMap } from "./map.js";

const SEVERITY = { critical: 2, warning: 1, info: 0 };
const UNACKNOWLEDGED = new Set(["open", "updated", "escalated"]);
// An info record (zone.exit, protection.restored) tells, it asks nothing of anyone.
const needsAction = (rec) => UNACKNOWLEDGED.has(rec.state) && rec.severity !== "info";
const ALARM_EVERY_MS = 4000;
const TRACK_WINDOW_MS = 30 * 60 * 1000;
const DELIVERY_POLL_MS = 10_000; // status callbacks are recorded but not streamed

const $ = (id) => document.getElementById(id);
const tileUrl = document.body.dataset.tileUrl || null;

const S = {
  token: sessionStorage.getItem("tagwatch.token"),
  muted: sessionStorage.getItem("tagwatch.muted") === "1",
  alerts: new Map(), // id -> latest record
  firstSeen: new Map(), // id -> ms, for the age when the fix time is unreadable
  fixTs: new Map(), // id -> the `ts` of its latest open/updated record (the fix time)
  levels: new Map(), // id -> the highest escalation level seen
  victims: new Map(), // id -> /victim answer (the victim's device), for victim alerts
  rows: new Map(), // id -> row element
  dirty: new Set(),
  orderDirty: false,
  frame: 0,
  selected: null,
  source: null,
  lastEventId: null,
  audio: null,
  lastAlarm: 0,
  zonesCache: new Map(),
  mapFor: null,
  deliveries: new Map(), // id -> list from /deliveries, or { error }
  deliveryFetch: new Map(), // id -> "busy" | "again"
};

// Figures the browser test reads.
window.__tagwatch = { events: 0, flushes: 0, lastFlushMs: 0, maxFlushMs: 0, mark: undefined,
                      shown: () => S.rows.size, alert: (id) => S.alerts.get(id) };

// --- API -------------------------------------------------------------------------------

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${S.token}`, ...(options.headers || {}) };
  const resp = await fetch(path, { ...options, headers });
  if (resp.status === 401) { signOut("Your token was not accepted."); throw new Error("401"); }
  return resp;
}

// --- formatting ------------------------------------------------------------------------

const fmt = {
  metres: (v) => (v == null ? "—" : v < 0 ? `${Math.round(-v)} m inside` : `${Math.round(v)} m`),
  speed: (v) => (v == null ? "—" : `${v.toFixed(1)} m/s`),
  duration(s) {
    if (s == null) return "—";
    if (s < 90) return `${Math.round(s)} s`;
    if (s < 5400) return `${Math.round(s / 60)} min`;
    return `${(s / 3600).toFixed(1)} h`;
  },
  text: (v) => (v == null || v === "" ? "—" : String(v)),
};

// The level reached: the record's `escalation` field (DESIGN 3.3), never less than seen.
function escalationLevel(rec) {
  return Math.max(Number.isInteger(rec.escalation) ? rec.escalation : 0, S.levels.get(rec.id) || 0);
}

// The fix an alert is about: an escalated record's `ts` is its deadline, not a fix.
const fixTime = (rec) => S.fixTs.get(rec.id) || rec.ts;

// Who or where, for the queue row: zone and victim ids, never a phone number.
function whereText(rec) {
  const parts = [];
  if (rec.zone) parts.push(rec.zone);
  if (rec.victim) parts.push(rec.zone ? rec.victim : `victim ${rec.victim}`);
  if (rec.case) parts.push(rec.case);
  return parts.join(" · ") || "—";
}

// --- deliveries (SMS, calls, police webhook) -------------------------------------------

const CHANNEL = { sms: "SMS", call: "Call", police: "Police" };
const DELIVERED = new Set(["delivered", "read"]);
const NOT_DELIVERED = new Set(["failed", "undelivered", "canceled"]);

// One outbox row -> [css class, status text, detail text]: what an operator must know.
function deliveryStatus(d) {
  const tries = `${d.attempts} failed attempt${d.attempts === 1 ? "" : "s"}`;
  if (d.status === "failed") return ["bad", "✗ FAILED", `gave up after ${tries}`];
  if (d.status === "pending") {
    const due = d.not_before * 1000 - Date.now();
    const when = due > 1000 ? `next try in ${fmt.duration(due / 1000)}` : "sending now";
    if (!d.attempts) return ["wait", "pending", due > 1000 ? `due in ${fmt.duration(due / 1000)}` : when];
    return ["wait", "pending · retrying", `${tries}, ${when}`];
  }
  const code = d.error_code ? `, code ${d.error_code}` : "";
  if (NOT_DELIVERED.has(d.delivery)) return ["bad", "✗ NOT DELIVERED", `${d.delivery}${code}`];
  if (DELIVERED.has(d.delivery)) return ["ok", "✓ delivered", ""];
  if (d.delivery === "sent") return ["sent", "sent", "no delivery report yet"];
  if (d.delivery) return ["sent", "sent", `provider: ${d.delivery}`];
  return ["ok", "✓ accepted", ""];
}

function deliveryRow(d, now) {
  const [cls, status, detail] = deliveryStatus(d);
  const row = document.createElement("div");
  row.className = `deliv-row deliv-${cls}`;
  row.dataset.channel = d.channel;
  const parts = [
    ["deliv-chan", CHANNEL[d.channel] || d.channel],
    ["deliv-who", d.victim || ""],
    ["deliv-status", status],
    ["deliv-age", d.updated_at ? `${fmt.duration(Math.max(0, now / 1000 - d.updated_at))} ago` : ""],
  ];
  for (const [c, text] of parts) {
    const span = document.createElement("span");
    span.className = c;
    span.textContent = text;
    row.appendChild(span);
  }
  const more = [detail, d.status !== "done" && d.last_error ? `last error: ${d.last_error}` : ""]
    .filter(Boolean).join(" · ");
  if (more) {
    const p = document.createElement("span");
    p.className = "deliv-more";
    p.textContent = more;
    row.appendChild(p);
  }
  return row;
}

function deliveriesBlock(id) {
  const box = document.createElement("section");
  box.className = "deliveries";
  box.id = "deliveries";
  const h = document.createElement("h3");
  h.textContent = "Deliveries";
  box.appendChild(h);
  const found = S.deliveries.get(id);
  const say = (text) => {
    const p = document.createElement("p");
    p.className = "hint";
    p.textContent = text;
    box.appendChild(p);
  };
  if (found === undefined) say("Loading…");
  else if (found.error) say(`Could not load deliveries: ${found.error}`);
  else if (found.length === 0) say("No SMS, call or police message was queued for this alert.");
  else { const now = Date.now(); for (const d of found) box.appendChild(deliveryRow(d, now)); }
  return box;
}

function showDeliveries(id) {
  const old = $("deliveries");
  if (!old || S.selected !== id || $("details").dataset.id !== id) return;
  old.replaceWith(deliveriesBlock(id));
  const rec = S.alerts.get(id);
  const summary = rec && escalationSummary(rec);
  $("escalation").hidden = !summary;
  $("escalation").textContent = summary || "";
}

// Fetch the alert's deliveries; a call while one is in flight fetches once more after it.
async function refreshDeliveries(id) {
  if (S.deliveryFetch.has(id)) { S.deliveryFetch.set(id, "again"); return; }
  S.deliveryFetch.set(id, "busy");
  try {
    const r = await api(`/api/alerts/${encodeURIComponent(id)}/deliveries`);
    S.deliveries.set(id, r.ok ? await r.json() : { error: `HTTP ${r.status}` });
  } catch (e) {
    if (e.message !== "401") S.deliveries.set(id, { error: "network error" });
  } finally {
    const again = S.deliveryFetch.get(id) === "again";
    S.deliveryFetch.delete(id);
    showDeliveries(id);
    if (again) refreshDeliveries(id);
  }
}

function deliveriesUnsettled(id) {
  const found = S.deliveries.get(id);
  return Array.isArray(found) && found.some((d) => ["wait", "sent"].includes(deliveryStatus(d)[0]));
}

// --- queue -----------------------------------------------------------------------------

function upsert(rec) {
  if (!rec || !rec.id) return;
  const known = S.alerts.get(rec.id);
  if (!S.firstSeen.has(rec.id)) S.firstSeen.set(rec.id, Date.parse(rec.raised || rec.ts) || Date.now());
  const before = known ? fixTime(known) : null;
  if (rec.state === "open" || rec.state === "updated" || !S.fixTs.has(rec.id)) S.fixTs.set(rec.id, rec.ts);
  S.levels.set(rec.id, escalationLevel(rec));
  if (!known || known.severity !== rec.severity || known.state !== rec.state
      || before !== fixTime(rec)) S.orderDirty = true;
  if (rec.severity === "critical" && needsAction(rec)
      && (!known || known.state !== rec.state)) S.lastAlarm = 0; // sound at once
  S.alerts.set(rec.id, rec);
  S.dirty.add(rec.id);
  if (!S.frame) S.frame = requestAnimationFrame(flush);
}

// Age since the fix the alert is about, so an ack or a reload does not reset it.
const ageMs = (rec, now) => Math.max(0, now - (Date.parse(fixTime(rec)) || S.firstSeen.get(rec.id)));

// Severity first, then what needs action, then newest first: a fresh breach comes above
// an older tamper of the same severity.
const when = (rec) => Date.parse(fixTime(rec)) || 0;

function compare(a, b) {
  const ra = S.alerts.get(a), rb = S.alerts.get(b);
  return (SEVERITY[rb.severity] ?? 0) - (SEVERITY[ra.severity] ?? 0)
    || needsAction(rb) - needsAction(ra)
    || when(rb) - when(ra)
    || (a < b ? -1 : 1);
}

// A row is two lines, so nothing is cut at any width: severity | type, state / tag,
// who or where, distance, ETA, age.
function makeRow(id) {
  const row = document.createElement("div");
  row.className = "row";
  row.dataset.id = id;
  row.tabIndex = 0;
  row.setAttribute("role", "listitem");
  const part = (parent, cls, tag = "span") => {
    const node = document.createElement(tag);
    node.className = cls;
    parent.appendChild(node);
    return node;
  };
  const cells = { sev: part(row, "sev") };
  const main = part(row, "r-main", "div");
  const sub = part(row, "r-sub", "div");
  for (const cls of ["type", "state", "num age"]) cells[cls.split(" ").at(-1)] = part(main, cls);
  for (const cls of ["tag", "where", "num dist", "num eta"]) cells[cls.split(" ").at(-1)] = part(sub, cls);
  row.cells = cells;
  return row;
}

function fillRow(row, rec, now) {
  const c = row.cells;
  row.className = `row sev-${rec.severity} st-${rec.state}` + (S.selected === rec.id ? " selected" : "");
  c.sev.textContent = rec.severity;
  c.type.textContent = rec.type;
  const level = escalationLevel(rec);
  c.state.textContent = rec.state + (level ? ` · L${level}` : "");
  c.tag.textContent = rec.tag ?? "—";
  c.where.textContent = whereText(rec);
  c.dist.textContent = rec.distance_m == null ? "" : fmt.metres(rec.distance_m);
  c.eta.textContent = rec.eta_s == null ? "" : `ETA ${fmt.duration(rec.eta_s)}`;
  c.age.textContent = fmt.duration(ageMs(rec, now) / 1000);
}

function flush() {
  const t0 = performance.now();
  S.frame = 0;
  const container = $("rows");
  const now = Date.now();
  for (const id of S.dirty) {
    const rec = S.alerts.get(id);
    let row = S.rows.get(id);
    if (rec.state === "resolved") {
      if (row) { row.remove(); S.rows.delete(id); }
      S.alerts.delete(id);
      S.deliveries.delete(id);
      S.fixTs.delete(id);
      S.levels.delete(id);
      S.victims.delete(id);
      continue;
    }
    if (!row) { row = makeRow(id); S.rows.set(id, row); S.orderDirty = true; }
    fillRow(row, rec, now);
  }
  if (S.orderDirty) reorder(container);
  if (S.selected && S.dirty.has(S.selected)) {
    showDetails(S.selected);
    refreshDeliveries(S.selected); // a new record (escalation, ack) may follow a send
  }
  S.dirty.clear();
  S.orderDirty = false;
  updateCounts();
  const ms = performance.now() - t0;
  const stats = window.__tagwatch;
  stats.flushes += 1; stats.lastFlushMs = ms; stats.maxFlushMs = Math.max(stats.maxFlushMs, ms);
}

function reorder(container) {
  const ids = [...S.rows.keys()].sort(compare);
  let cursor = container.firstChild;
  for (const id of ids) {
    const row = S.rows.get(id);
    if (row === cursor) cursor = cursor.nextSibling;
    else container.insertBefore(row, cursor); // moves only rows out of place
  }
}

function updateCounts() {
  let critical = 0, pending = 0;
  for (const rec of S.alerts.values()) {
    if (rec.severity === "critical" && needsAction(rec)) critical++;
    if (needsAction(rec)) pending++;
  }
  $("counts").innerHTML = `<b>${S.rows.size}</b> open · <b>${pending}</b> need action`;
  $("empty").hidden = S.rows.size > 0;
  const banner = $("banner");
  banner.hidden = critical === 0;
  banner.textContent = critical === 1 ? "1 CRITICAL ALERT NEEDS ACTION"
    : `${critical} CRITICAL ALERTS NEED ACTION`;
  S.critical = critical;
}

function tickAges() {
  const now = Date.now();
  for (const [id, row] of S.rows) {
    row.cells.age.textContent = fmt.duration(ageMs(S.alerts.get(id), now) / 1000);
  }
  alarm();
}

// --- sound -----------------------------------------------------------------------------

function alarm() {
  if (S.muted || !S.audio || !S.critical) return;
  const now = Date.now();
  if (now - S.lastAlarm < ALARM_EVERY_MS) return;
  S.lastAlarm = now;
  const ctx = S.audio;
  const t = ctx.currentTime;
  for (const [i, freq] of [[0, 880], [1, 660], [2, 880]]) {
    const osc = ctx.createOscillator();
    const gain = ctx.createGain();
    osc.type = "square";
    osc.frequency.value = freq;
    gain.gain.setValueAtTime(0.0001, t + i * 0.22);
    gain.gain.exponentialRampToValueAtTime(0.25, t + i * 0.22 + 0.02);
    gain.gain.exponentialRampToValueAtTime(0.0001, t + i * 0.22 + 0.2);
    osc.connect(gain).connect(ctx.destination);
    osc.start(t + i * 0.22);
    osc.stop(t + i * 0.22 + 0.21);
  }
}

function setMuted(muted) {
  S.muted = muted;
  sessionStorage.setItem("tagwatch.muted", muted ? "1" : "0");
  const b = $("mute");
  b.textContent = muted ? "Sound muted" : "Sound on";
  b.setAttribute("aria-pressed", String(muted));
}

// --- details and actions ---------------------------------------------------------------

function field(dl, name, value) {
  const dt = document.createElement("dt");
  dt.textContent = name;
  const dd = document.createElement("dd");
  dd.textContent = value;
  dl.append(dt, dd);
}

// What the escalation really did, from the deliveries (the outbox), not from the
// record's wording: without Twilio no call is queued, without a webhook nothing goes to
// police, and the operator must then do it.
function escalationSummary(rec) {
  const level = escalationLevel(rec);
  if (!level) return null;
  const found = S.deliveries.get(rec.id);
  if (found === undefined) return `Escalation level ${level}: checking what was sent…`;
  if (found.error) return `Escalation level ${level}: could not load the deliveries (${found.error}).`;
  const said = (channel, what, none) => {
    const rows = found.filter((d) => d.channel === channel);
    return rows.length ? `${what}: ${rows.map((d) => deliveryStatus(d)[1]).join(", ")}` : none;
  };
  const parts = [said("police", "police webhook",
                      "nothing was sent to police (no police webhook configured): call police control")];
  if (level >= 2) {
    parts.push(said("call", "call to the victim",
                    "no call to the victim was queued (no Twilio configured, or no phone on file): call the victim yourself"));
  }
  return `Escalation level ${level}: ${parts.join("; ")}.`;
}

function victimDevice(rec) {
  const v = S.victims.get(rec.id);
  if (v === undefined) return "…";
  if (v.error) return `unknown (${v.error})`;
  if (v.lat == null) return "no recent position";
  return `last fix ${fmt.duration(v.age_s)} ago (on the map)`;
}

function showDetails(id) {
  const rec = S.alerts.get(id);
  const box = $("details");
  if (!rec) { box.innerHTML = '<p class="hint">This alert is resolved.</p>'; return; }
  box.className = `details sev-${rec.severity}`;
  const h = document.createElement("h2");
  h.textContent = `${rec.severity.toUpperCase()} · ${rec.type}`;
  const sub = document.createElement("p");
  sub.className = "sub";
  // "calling the victim" / "police control again" say what was due, not what happened:
  // the escalation line below says that, from the deliveries.
  sub.textContent = (rec.detail || "").replace(/; (calling the victim|police control again)$/, "");
  const note = document.createElement("textarea");
  note.id = "note";
  note.placeholder = "Note for the case record (what you did, who you called)";
  const keep = box.querySelector("#note");
  if (keep && box.dataset.id === id) note.value = keep.value;
  const actions = document.createElement("div");
  actions.className = "actions";
  actions.innerHTML = '<button id="ack" class="btn btn-primary" type="button">Acknowledge</button>'
    + '<button id="resolve" class="btn btn-danger" type="button">Resolve</button><span id="msg" class="msg"></span>';
  const esc = document.createElement("p");
  esc.id = "escalation";
  esc.className = "escalation";
  const summary = escalationSummary(rec);
  esc.hidden = !summary;
  esc.textContent = summary || "";
  const dl = document.createElement("dl");
  field(dl, "State", rec.state);
  field(dl, "Fix time", fmt.text(fixTime(rec)));
  field(dl, "Tag", fmt.text(rec.tag));
  field(dl, "Case", fmt.text(rec.case));
  if (rec.zone) field(dl, "Zone", rec.zone);
  if (rec.victim) field(dl, "Victim", rec.victim);
  if (!rec.zone && rec.victim) field(dl, "Victim's device", victimDevice(rec));
  field(dl, "Distance", fmt.metres(rec.distance_m));
  field(dl, "Closing speed", fmt.speed(rec.closing_mps));
  field(dl, "Time to arrival", rec.eta_s == null ? "—" : fmt.duration(rec.eta_s));
  field(dl, "Confidence", fmt.text(rec.confidence));
  field(dl, "Escalation level", String(escalationLevel(rec)));
  field(dl, "Alert id", rec.id);
  box.dataset.id = id;
  box.replaceChildren(h, sub, note, actions, esc, dl, deliveriesBlock(id));
  $("ack").disabled = rec.state === "acknowledged";
  $("ack").onclick = () => act(id, "ack");
  $("resolve").onclick = () => act(id, "resolve");
}

async function act(id, what) {
  const note = $("note").value;
  $("msg").textContent = "";
  const resp = await api(`/api/alerts/${encodeURIComponent(id)}/${what}`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ note }),
  });
  if (resp.ok) { upsert(await resp.json()); return; }
  const reason = { 403: "Your role may only view alerts.", 404: "No such alert.",
                   409: "This alert is already resolved." }[resp.status];
  $("msg").textContent = reason || `Failed: HTTP ${resp.status}`;
}

function select(id) {
  const old = S.rows.get(S.selected);
  if (old) old.classList.remove("selected");
  S.selected = id;
  const row = S.rows.get(id);
  if (row) row.classList.add("selected");
  showDetails(id);
  refreshDeliveries(id);
  loadMap(id);
}

async function loadMap(id) {
  const rec = S.alerts.get(id);
  if (!rec) return;
  S.mapFor = id;
  let zones = S.zonesCache.get(rec.case);
  if (zones === undefined && rec.case) {
    const r = await api(`/api/cases/${encodeURIComponent(rec.case)}/zones`);
    zones = r.ok ? await r.json() : null;
    S.zonesCache.set(rec.case, zones);
  }
  let track = null;
  if (rec.tag) {
    const since = new Date((Date.parse(rec.ts) || Date.now()) - TRACK_WINDOW_MS).toISOString();
    const r = await api(`/api/tags/${encodeURIComponent(rec.tag)}/track?since=${encodeURIComponent(since)}`);
    track = r.ok ? await r.json() : null;
  }
  let victim = null;
  if (!rec.zone && rec.victim) { // an alert about the victim in person: where is her device?
    const r = await api(`/api/alerts/${encodeURIComponent(id)}/victim`);
    victim = r.ok ? await r.json() : { error: `HTTP ${r.status}` };
    S.victims.set(id, victim);
    if (S.selected === id) showDetails(id);
  }
  if (S.mapFor !== id) return; // another alert was selected meanwhile
  $("map-note").textContent = drawMap($("map"), { alert: S.alerts.get(id) || rec, zones, track, tileUrl,
                                                  victim: victim && !victim.error ? victim : null });
}

// --- cases view (protection status, GET /api/cases) ------------------------------------

const CASES_POLL_MS = 10_000;
// The reasons in words (the engine's REASONS); never a position or a phone number.
const REASON_WORDS = {
  no_comms: "tag silent",
  no_fix: "tag has no position",
  low_battery: "tag battery low",
  tampered: "strap tamper",
  device_stale: "victim's device has no recent position",
  device_coarse: "victim's device position is coarse",
};
const STATUS_TEXT = { protected: "✓ protected", degraded: "⚠ degraded", unknown: "? unknown" };

function line(parent, parts) {
  const div = document.createElement("div");
  div.className = "case-line";
  for (const [cls, text] of parts) {
    if (!text) continue;
    const span = document.createElement("span");
    span.className = cls;
    span.textContent = text;
    div.appendChild(span);
  }
  parent.appendChild(div);
  return div;
}

function statusBadge(status) {
  const b = document.createElement("span");
  b.className = `pstat pstat-${status}`;
  b.textContent = STATUS_TEXT[status] || status;
  return b;
}

function tagLine(box, t) {
  const quality = t.fix_quality == null ? "never heard"
    : t.fix_quality === "none" ? "no position"
      : `fix ${t.fix_quality}${t.acc_m == null ? "" : ` (±${Math.round(t.acc_m)} m)`}`;
  const fix = t.last_fix_age_s == null ? "no fix yet" : `last fix ${fmt.duration(t.last_fix_age_s)} ago`;
  const battery = t.battery_pct == null ? "battery —" : `battery ${t.battery_pct} %`;
  const flags = [t.no_comms && "SILENT", t.tampered && "TAMPER", t.battery_low && "BATTERY LOW"]
    .filter(Boolean).join(" · ");
  line(box, [["who", `Tag ${t.tag}`], ["", fix], [t.fix_quality === "good" ? "" : "bad", quality],
             [t.battery_low ? "bad" : "", battery], ["bad", flags]]);
}

function victimLine(box, v) {
  const row = line(box, [["who", `Victim ${v.victim}`]]);
  row.appendChild(statusBadge(v.status));
  const reasons = v.reasons.map((r) => REASON_WORDS[r] || r).join("; ");
  const kind = v.device === "owntracks" ? "phone (OwnTracks)" : v.device ? "device" : null;
  const device = !kind ? "no device on file"
    : v.device_age_s == null ? `${kind}: no position yet`
      : `${kind}: last fix ${fmt.duration(v.device_age_s)} ago${v.device_coarse ? " (coarse)" : ""}`;
  for (const [cls, text] of [["reasons", reasons], ["dim", device]]) {
    if (!text) continue;
    const span = document.createElement("span");
    span.className = cls;
    span.textContent = text;
    row.appendChild(span);
  }
}

function renderCases(list) {
  const box = $("cases");
  const cards = list.map((c) => {
    const card = document.createElement("article");
    card.className = `case case-${c.status}`;
    card.dataset.case = c.case;
    card.setAttribute("role", "listitem");
    const head = document.createElement("div");
    head.className = "case-head";
    const name = document.createElement("span");
    name.textContent = c.case;
    head.append(name, statusBadge(c.status));
    card.appendChild(head);
    for (const v of c.victims) victimLine(card, v);
    for (const t of c.tags) tagLine(card, t);
    return card;
  });
  if (!cards.length) {
    const p = document.createElement("p");
    p.className = "empty";
    p.textContent = "No case in force.";
    cards.push(p);
  }
  box.replaceChildren(...cards);
  const bad = list.filter((c) => c.status === "degraded").length;
  const tab = $("tab-cases");
  tab.textContent = "Cases";
  if (bad) {
    const n = document.createElement("span");
    n.className = "tab-bad";
    n.textContent = `${bad} degraded`;
    tab.appendChild(n);
  }
  $("cases-age").textContent = new Date().toLocaleTimeString();
}

async function refreshCases() {
  try {
    const r = await api("/api/cases");
    if (r.ok) renderCases(await r.json());
    else $("cases").textContent = `Could not load the cases: HTTP ${r.status}`;
  } catch (e) {
    if (e.message !== "401") $("cases").textContent = "Could not load the cases: network error";
  }
}

function showView(name) {
  for (const [tab, view] of [["tab-queue", "queue-view"], ["tab-cases", "cases-view"]]) {
    const on = view.startsWith(name);
    $(tab).setAttribute("aria-selected", String(on));
    $(view).hidden = !on;
  }
  if (name === "cases") refreshCases();
}

// --- live stream -----------------------------------------------------------------------

function setConn(live, text) {
  const c = $("conn");
  c.className = `conn ${live ? "conn-live" : "conn-off"}`;
  c.textContent = text;
}

function openStream(lastId) {
  if (S.source) S.source.close();
  let url = `/api/events?access_token=${encodeURIComponent(S.token)}`;
  if (lastId) url += `&last_event_id=${encodeURIComponent(lastId)}`;
  const source = new EventSource(url);
  S.source = source;
  source.onopen = () => setConn(true, "live");
  source.onmessage = (e) => {
    if (e.lastEventId) S.lastEventId = e.lastEventId;
    const stats = window.__tagwatch;
    stats.events += 1;
    if (stats.mark === null) stats.mark = performance.now(); // a test's start mark
    upsert(JSON.parse(e.data));
  };
  source.onerror = () => {
    // EventSource retries by itself (sending Last-Event-ID); when it gives up (an HTTP
    // error such as a restarted daemon answering 503), start again from the last id.
    setConn(false, "reconnecting…");
    if (source.readyState === EventSource.CLOSED) {
      setTimeout(() => { if (S.source === source) openStream(S.lastEventId || lastId); }, 3000);
    }
  };
}

async function start() {
  const resp = await api("/api/alerts?state=open");
  if (!resp.ok) { setConn(false, `error ${resp.status}`); return; }
  const watermark = resp.headers.get("X-Last-Event-ID");
  for (const rec of (await resp.json()).reverse()) upsert(rec);
  S.lastEventId = watermark;
  openStream(watermark);
  refreshCases(); // the tab shows how many cases are degraded even while the queue is shown
}

// --- sign in ---------------------------------------------------------------------------

function signOut(message) {
  sessionStorage.removeItem("tagwatch.token");
  S.token = null;
  if (S.source) { S.source.close(); S.source = null; }
  setConn(false, "signed out");
  $("login-error").textContent = message || "";
  if (!$("login").open) $("login").showModal();
}

async function signIn(event) {
  event.preventDefault();
  S.token = $("token").value.trim();
  if (!S.audio) S.audio = new AudioContext(); // needs this user gesture to be allowed
  const probe = await fetch("/api/alerts?state=open&limit=1", { headers: { Authorization: `Bearer ${S.token}` } });
  if (probe.status === 401) { $("login-error").textContent = "That token was not accepted."; return; }
  sessionStorage.setItem("tagwatch.token", S.token);
  $("login").close();
  $("token").value = "";
  start();
}

function init() {
  setMuted(S.muted);
  $("mute").onclick = () => setMuted(!S.muted);
  $("signout").onclick = () => signOut("");
  $("login-form").addEventListener("submit", signIn);
  $("rows").addEventListener("click", (e) => {
    const row = e.target.closest(".row");
    if (row) select(row.dataset.id);
  });
  $("rows").addEventListener("keydown", (e) => {
    const row = e.target.closest(".row");
    if (row && e.key === "Enter") select(row.dataset.id);
  });
  $("tab-queue").onclick = () => showView("queue");
  $("tab-cases").onclick = () => showView("cases");
  setInterval(() => { if (S.token) refreshCases(); }, CASES_POLL_MS);
  setInterval(tickAges, 1000);
  setInterval(() => { if (S.selected && deliveriesUnsettled(S.selected)) refreshDeliveries(S.selected); },
              DELIVERY_POLL_MS);
  if (S.token) {
    // A reload keeps the token (sessionStorage); sound needs a click on the page first.
    document.addEventListener("pointerdown", () => { if (!S.audio) S.audio = new AudioContext(); }, { once: true });
    start();
  } else {
    $("login").showModal();
  }
}

init();
