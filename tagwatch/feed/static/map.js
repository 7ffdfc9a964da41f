// The map panel: zones, warning rings, the tag's track and its latest position, drawn as
// SVG in a local metric projection (east/north metres around a centre point), so it works
// with no internet. Street tiles are laid underneath only when a tile URL is configured.

const NS = "http://www.w3.org/2000/svg";
const M_PER_DEG_LAT = 110_574;
const M_PER_DEG_LON_EQ = 111_320;
const EARTH_M = 40_075_016.686;
const MAX_TILES = 36;

function el(name, attrs, parent) {
  const node = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (parent) parent.appendChild(node);
  return node;
}

function projection(lon0, lat0) {
  const kx = M_PER_DEG_LON_EQ * Math.cos((lat0 * Math.PI) / 180);
  return {
    fwd: (lon, lat) => [(lon - lon0) * kx, -(lat - lat0) * M_PER_DEG_LAT],
    inv: (x, y) => [lon0 + x / kx, lat0 - y / M_PER_DEG_LAT],
  };
}

function positions(geometry) {
  const c = geometry.coordinates;
  if (geometry.type === "Point") return [c];
  if (geometry.type === "Polygon") return c.flat();
  if (geometry.type === "MultiPolygon") return c.flat(2);
  return [];
}

function centreOf(alert, zones, track) {
  if (alert && alert.lon != null && alert.lat != null) return [alert.lon, alert.lat];
  const last = track && track.features.at(-1);
  if (last) return last.geometry.coordinates;
  const pts = zones ? zones.features.flatMap((f) => positions(f.geometry)) : [];
  if (!pts.length) return null;
  return [pts.reduce((s, p) => s + p[0], 0) / pts.length, pts.reduce((s, p) => s + p[1], 0) / pts.length];
}

function ringPath(rings, fwd) {
  return rings.map((ring) => ring.map((p, i) => {
    const [x, y] = fwd(p[0], p[1]);
    return `${i ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`;
  }).join("") + "Z").join("");
}

class Bounds {
  constructor() { this.x0 = Infinity; this.y0 = Infinity; this.x1 = -Infinity; this.y1 = -Infinity; }
  add(x, y, r = 0) {
    this.x0 = Math.min(this.x0, x - r); this.x1 = Math.max(this.x1, x + r);
    this.y0 = Math.min(this.y0, y - r); this.y1 = Math.max(this.y1, y + r);
  }
  get empty() { return this.x0 > this.x1; }
}

function drawZone(feature, fwd, group, bounds) {
  const p = feature.properties;
  const cls = p.role === "warn" ? "z-warn" : p.kind === "inclusion" ? "z-incl" : "z-excl";
  const g = feature.geometry;
  if (g.type === "Point") {
    const [x, y] = fwd(...g.coordinates);
    el("circle", { cx: x, cy: y, r: p.radius_m, class: cls }, group);
    bounds.add(x, y, p.radius_m);
  } else {
    const polys = g.type === "Polygon" ? [g.coordinates] : g.coordinates;
    el("path", { d: polys.map((rings) => ringPath(rings, fwd)).join(""), class: cls,
                 "fill-rule": "evenodd" }, group);
    for (const q of positions(g)) bounds.add(...fwd(q[0], q[1]));
  }
}

function zoneLabel(feature, fwd, group, size) {
  const pts = positions(feature.geometry);
  const [x, y] = fwd(Math.min(...pts.map((q) => q[0])), Math.max(...pts.map((q) => q[1])));
  const r = feature.geometry.type === "Point" ? feature.properties.radius_m : 0;
  const t = el("text", { x: x - r, y: y - r - size * 0.4, class: "lbl lbl-zone", "font-size": size }, group);
  t.textContent = feature.properties.zone;
}

function drawTrack(track, fwd, group, bounds) {
  const pts = track.features.map((f) => fwd(...f.geometry.coordinates));
  if (pts.length > 1) {
    el("polyline", { points: pts.map((p) => p.join(",")).join(" "), class: "trk" }, group);
  }
  for (const [x, y] of pts) bounds.add(x, y);
  return pts;
}

function tileLayer(tileUrl, proj, box, lat0, group) {
  const extent = Math.max(box.x1 - box.x0, box.y1 - box.y0);
  const z = Math.max(1, Math.min(19, Math.round(Math.log2((EARTH_M * Math.cos(lat0 * Math.PI / 180) * 3) / extent))));
  const n = 2 ** z;
  const tx = (lon) => Math.floor(((lon + 180) / 360) * n);
  const ty = (lat) => {
    const r = (lat * Math.PI) / 180;
    return Math.floor(((1 - Math.log(Math.tan(r) + 1 / Math.cos(r)) / Math.PI) / 2) * n);
  };
  const lonOf = (x) => (x / n) * 360 - 180;
  const latOf = (y) => (Math.atan(Math.sinh(Math.PI * (1 - (2 * y) / n))) * 180) / Math.PI;
  const [w, north] = proj.inv(box.x0, box.y0);
  const [e, south] = proj.inv(box.x1, box.y1);
  const xs = [tx(w), tx(e)];
  const ys = [ty(north), ty(south)];
  if ((xs[1] - xs[0] + 1) * (ys[1] - ys[0] + 1) > MAX_TILES) return;
  for (let x = xs[0]; x <= xs[1]; x++) {
    for (let y = ys[0]; y <= ys[1]; y++) {
      const [ax, ay] = proj.fwd(lonOf(x), latOf(y));
      const [bx, by] = proj.fwd(lonOf(x + 1), latOf(y + 1));
      const href = tileUrl.replace("{z}", z).replace("{x}", x).replace("{y}", y)
        .replace("{s}", "abc"[(x + y) % 3]);
      el("image", { href, x: ax, y: ay, width: bx - ax, height: by - ay,
                    preserveAspectRatio: "none", opacity: 0.55 }, group);
    }
  }
}

function scaleBar(box, group, size) {
  const width = box.x1 - box.x0;
  const nice = [10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000];
  const len = nice.find((v) => v >= width / 6) || nice.at(-1);
  const x = box.x0 + width * 0.04;
  const y = box.y1 - (box.y1 - box.y0) * 0.05;
  el("line", { x1: x, y1: y, x2: x + len, y2: y, class: "scale" }, group);
  const t = el("text", { x, y: y - size * 0.4, class: "lbl", "font-size": size * 0.8 }, group);
  t.textContent = len >= 1000 ? `${len / 1000} km` : `${len} m`;
}

// Draw the map; returns a short note for the caption.
export function drawMap(svg, { alert, zones, track, tileUrl }) {
  svg.replaceChildren();
  const centre = centreOf(alert, zones, track);
  if (!centre) return "No position or zones to show.";
  const proj = projection(centre[0], centre[1]);
  const tiles = el("g", {}, svg);
  const shapes = el("g", {}, svg);
  const overlay = el("g", {}, svg);
  const bounds = new Bounds();
  const features = zones ? zones.features : [];
  // Frame the alert's own zone (with its ring), the track and the position; other zones
  // of the case are drawn too but may fall outside the view.
  const own = alert && alert.zone && features.some((f) => f.properties.zone === alert.zone);
  const focus = (f) => (own ? f.properties.zone === alert.zone : true);
  const ignore = new Bounds();
  for (const f of features.filter((f) => f.properties.role === "warn")) drawZone(f, proj.fwd, shapes, focus(f) ? bounds : ignore);
  for (const f of features.filter((f) => f.properties.role !== "warn")) drawZone(f, proj.fwd, shapes, focus(f) ? bounds : ignore);
  const pts = track ? drawTrack(track, proj.fwd, shapes, bounds) : [];
  const pos = alert && alert.lon != null ? proj.fwd(alert.lon, alert.lat) : pts.at(-1);
  if (pos) bounds.add(pos[0], pos[1], 60);
  const pad = Math.max(bounds.x1 - bounds.x0, bounds.y1 - bounds.y0) * 0.12 + 20;
  const box = { x0: bounds.x0 - pad, y0: bounds.y0 - pad, x1: bounds.x1 + pad, y1: bounds.y1 + pad };
  svg.setAttribute("viewBox", `${box.x0} ${box.y0} ${box.x1 - box.x0} ${box.y1 - box.y0}`);
  svg.setAttribute("preserveAspectRatio", "xMidYMid meet");
  const size = Math.max(box.x1 - box.x0, box.y1 - box.y0) / 28;
  if (tileUrl) tileLayer(tileUrl, proj, box, centre[1], tiles);
  for (const f of features.filter((f) => f.properties.role === "zone")) zoneLabel(f, proj.fwd, overlay, size);
  for (const [x, y] of pts) el("circle", { cx: x, cy: y, r: size * 0.12, class: "trk-pt" }, overlay);
  if (pos) {
    el("circle", { cx: pos[0], cy: pos[1], r: size * 0.42, class: "pos" }, overlay);
    const t = el("text", { x: pos[0] + size * 0.6, y: pos[1] + size * 0.35, class: "lbl", "font-size": size }, overlay);
    t.textContent = alert ? alert.tag : "";
  }
  scaleBar(box, overlay, size);
  return `${features.filter((f) => f.properties.role === "zone").length} zones · ${pts.length} fixes`
    + (tileUrl ? "" : " · offline map (no tiles configured)");
}
