// The map panel on Leaflet (vendored under /static/vendor/leaflet, loaded before this
// module as the global L): zones, warning rings, the tag's track and position, the
// victim's device, a legend and a scale.
//
// With a tile URL ([feed] tile_url, e.g. a police force's own tile server) the map is
// Web Mercator with those tiles underneath. Without one it needs no network at all: a
// local metric frame (east/north metres around the alert, L.CRS.Simple with our own
// projection) and no basemap, so distances and the scale are still true.

/* global L */

const R_EARTH = 6_371_000; // L.CRS.Earth.R: circles and the scale use the same sphere
const M_PER_DEG = (R_EARTH * Math.PI) / 180;
const LAST_FIXES = 5; // the breach view frames the zone and the tag's last fixes

// East/north metres around (lat0, lon0): exact enough for a few kilometres.
function localCrs(lat0, lon0) {
  const kx = M_PER_DEG * Math.cos((lat0 * Math.PI) / 180);
  const projection = {
    project: (ll) => L.point((ll.lng - lon0) * kx, (ll.lat - lat0) * M_PER_DEG),
    unproject: (p) => L.latLng(lat0 + p.y / M_PER_DEG, lon0 + p.x / kx),
    bounds: L.bounds([-2e7, -2e7], [2e7, 2e7]),
  };
  return L.extend({}, L.CRS.Simple, {
    projection,
    transformation: new L.Transformation(1, 0, -1, 0),
    distance: L.CRS.Earth.distance, // metres, for the scale bar and circles (uses R)
    R: L.CRS.Earth.R,
    infinite: true,
  });
}

const LEGEND = [
  ["lg-excl", "exclusion zone"],
  ["lg-incl", "inclusion zone"],
  ["lg-warn", "warning ring"],
  ["lg-trk", "tag track"],
  ["lg-pos", "tag position"],
  ["lg-vic", "victim's device"],
];

function legendControl() {
  const control = L.control({ position: "topright" });
  control.onAdd = () => {
    const box = L.DomUtil.create("div", "map-legend");
    for (const [cls, text] of LEGEND) {
      const item = L.DomUtil.create("div", "lg-item", box);
      L.DomUtil.create("span", `lg-key ${cls}`, item);
      L.DomUtil.create("span", "", item).textContent = text;
    }
    return box;
  };
  return control;
}

const M = { map: null, mode: null, layers: null, tiles: null };

function ensureMap(container, tileUrl, centre) {
  const mode = tileUrl ? `tiles:${tileUrl}` : `local:${centre[1].toFixed(3)},${centre[0].toFixed(3)}`;
  if (M.map && M.mode === mode) return M.map;
  if (M.map) M.map.remove();
  const options = { zoomSnap: 0.25, attributionControl: Boolean(tileUrl) };
  if (tileUrl) Object.assign(options, { minZoom: 3, maxZoom: 19 });
  else Object.assign(options, { crs: localCrs(centre[1], centre[0]), minZoom: -8, maxZoom: 4 });
  const map = L.map(container, options);
  if (tileUrl) {
    M.tiles = L.tileLayer(tileUrl, { maxZoom: 19, className: "basemap" }).addTo(map);
    map.attributionControl.setPrefix("Leaflet");
  }
  L.control.scale({ metric: true, imperial: false, maxWidth: 160 }).addTo(map);
  legendControl().addTo(map);
  M.layers = L.layerGroup().addTo(map);
  M.map = map;
  M.mode = mode;
  window.__tagwatchMap = map; // for the browser test
  return map;
}

function centreOf(alert, zones, track, victim) {
  if (alert && alert.lon != null && alert.lat != null) return [alert.lon, alert.lat];
  const last = track && track.features.at(-1);
  if (last) return last.geometry.coordinates;
  if (victim && victim.lon != null) return [victim.lon, victim.lat];
  const pts = zones ? zones.features.flatMap((f) => positions(f.geometry)) : [];
  if (!pts.length) return null;
  return [pts.reduce((s, p) => s + p[0], 0) / pts.length, pts.reduce((s, p) => s + p[1], 0) / pts.length];
}

function positions(geometry) {
  const c = geometry.coordinates;
  if (geometry.type === "Point") return [c];
  if (geometry.type === "Polygon") return c.flat();
  if (geometry.type === "MultiPolygon") return c.flat(2);
  return [];
}

function zoneLayer(feature) {
  const p = feature.properties;
  const cls = p.role === "warn" ? "z-warn" : p.kind === "inclusion" ? "z-incl" : "z-excl";
  const g = feature.geometry;
  if (g.type === "Point") {
    const [lon, lat] = g.coordinates;
    return L.circle([lat, lon], { radius: p.radius_m, className: cls, interactive: false });
  }
  return L.geoJSON(feature, { style: { className: cls }, interactive: false });
}

function ago(seconds) {
  if (seconds < 90) return `${Math.round(seconds)} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  return `${(seconds / 3600).toFixed(1)} h ago`;
}

// Draw the map for one alert; returns a short note for the caption.
export function drawMap(container, { alert, zones, track, tileUrl, victim }) {
  const centre = centreOf(alert, zones, track, victim);
  if (!centre) {
    if (M.layers) M.layers.clearLayers();
    return "No position or zones to show.";
  }
  const map = ensureMap(container, tileUrl, centre);
  const layers = M.layers;
  layers.clearLayers();
  const features = zones ? zones.features : [];
  const focus = L.latLngBounds([]);
  // The alert's own zone (with its ring) is framed; the case's other zones are drawn
  // but may fall outside the view.
  const own = alert && alert.zone && features.some((f) => f.properties.zone === alert.zone);
  const ordered = [...features.filter((f) => f.properties.role === "warn"),
                   ...features.filter((f) => f.properties.role !== "warn")];
  for (const f of ordered) {
    const layer = zoneLayer(f).addTo(layers);
    if (f.properties.role === "zone") {
      layer.bindTooltip(f.properties.zone, { permanent: true, direction: "top",
                                             className: "lbl-zone", interactive: false });
    }
    if (f.properties.role === "zone" && (!own || f.properties.zone === alert.zone)) {
      // A circle's own getBounds needs the map's view, which is set only after this.
      const g = f.geometry;
      focus.extend(g.type === "Point"
        ? L.latLng(g.coordinates[1], g.coordinates[0]).toBounds(2 * f.properties.radius_m)
        : layer.getBounds());
    }
  }
  const pts = track ? track.features.map((f) => [f.geometry.coordinates[1], f.geometry.coordinates[0]]) : [];
  if (pts.length > 1) L.polyline(pts, { className: "trk", interactive: false }).addTo(layers);
  for (const p of pts) L.circleMarker(p, { radius: 3, className: "trk-pt", interactive: false }).addTo(layers);
  for (const p of pts.slice(-LAST_FIXES)) focus.extend(p);
  const pos = alert && alert.lon != null ? [alert.lat, alert.lon] : pts.at(-1);
  if (pos) {
    L.circleMarker(pos, { radius: 9, className: "pos" }).addTo(layers)
      .bindTooltip(alert ? alert.tag || "" : "", { permanent: true, direction: "right",
                                                  className: "lbl-tag", offset: [10, 0] });
    focus.extend(pos);
  }
  if (victim && victim.lat != null) {
    const vpos = [victim.lat, victim.lon];
    const age = victim.age_s != null ? `, ${ago(victim.age_s)}` : "";
    L.circleMarker(vpos, { radius: 9, className: "vic" }).addTo(layers)
      .bindTooltip(`victim ${victim.victim}${age}`, { permanent: true, direction: "left",
                                                      className: "lbl-vic", offset: [-10, 0] });
    focus.extend(vpos);
  }
  map.invalidateSize(false);
  if (focus.isValid()) map.fitBounds(focus, { padding: [36, 36], maxZoom: tileUrl ? 18 : 2, animate: false });
  else map.setView([centre[1], centre[0]], tileUrl ? 16 : -1, { animate: false });
  const zoneCount = features.filter((f) => f.properties.role === "zone").length;
  return `${zoneCount} zones · ${pts.length} fixes`
    + (tileUrl ? "" : " · offline map (no tiles configured)");
}
