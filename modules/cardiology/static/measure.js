// Calibrated measurement maths for live feedback in the viewer. The same rules as the
// server's modules/cardiology/cine.py and lv_volume.py, which compute the saved values:
// a caliper is in mm only when both ends lie in one region calibrated in cm; pixels otherwise.

const DISCS = 20;

function contains(region, [x, y]) {
  const [x0, y0, x1, y1] = region.bounds;
  return x >= x0 && x <= x1 + 1 && y >= y0 && y <= y1 + 1;
}

/** { value, unit, calibrated } for two image-pixel points. */
export function distance(regions, p, q) {
  const dx = q[0] - p[0];
  const dy = q[1] - p[1];
  for (const region of regions) {
    if (!contains(region, p) || !contains(region, q)) continue;
    const [ux, uy] = region.units;
    const [deltaX, deltaY] = region.delta;
    if (ux === "cm" && uy === "cm") {
      return { value: 10 * Math.hypot(dx * deltaX, dy * deltaY), unit: "mm", calibrated: true };
    }
    if (ux === "s" && uy) {
      return { value: Math.abs(dx) * deltaX * 1000, unit: "ms", calibrated: true, y: Math.abs(dy) * deltaY, y_unit: uy };
    }
  }
  return { value: Math.hypot(dx, dy), unit: "px", calibrated: false };
}

/** The regions calibrating frame `frame` (0-based) of a loop: its own set when frames differ. */
export function regionsAt(info, frame) {
  const sets = info.region_sets;
  const index = info.frame_region_set;
  if (!sets || !index) return info.regions;
  return sets[index[Math.max(0, Math.min(index.length - 1, frame))]] || info.regions;
}

/** The velocity (or frequency) one point reads in a spectral region with time across: the
 *  reference pixel (relative to the region's corner) gives the baseline, the signed delta the sign. */
export function velocity(regions, p) {
  for (const region of regions) {
    const [ux, uy] = region.units;
    if (!contains(region, p) || ux !== "s" || (uy !== "cm/s" && uy !== "Hz")) continue;
    const delta = region.physical_delta_y || region.delta[1];
    const value = region.reference_value[1] + (p[1] - region.bounds[1] - region.reference_pixel[1]) * delta;
    return { value, unit: uy, calibrated: true };
  }
  return { value: 0, unit: "", calibrated: false };
}

/** Shoelace area: cm² inside one cm-calibrated region, px² otherwise. */
export function area(regions, points) {
  let twice = 0;
  points.forEach(([x0, y0], i) => {
    const [x1, y1] = points[(i + 1) % points.length];
    twice += x0 * y1 - x1 * y0;
  });
  const pixels = Math.abs(twice) / 2;
  for (const region of regions) {
    if (region.units[0] === "cm" && region.units[1] === "cm" && points.every((p) => contains(region, p))) {
      return { value: pixels * region.delta[0] * region.delta[1], unit: "cm²", calibrated: true };
    }
  }
  return { value: pixels, unit: "px²", calibrated: false };
}

/** Points in mm (for the disc method), or null when no cm region holds them all. */
export function toMillimetres(regions, points) {
  for (const region of regions) {
    if (region.units[0] === "cm" && region.units[1] === "cm" && points.every((p) => contains(region, p))) {
      return points.map(([x, y]) => [x * region.delta[0] * 10, y * region.delta[1] * 10]);
    }
  }
  return null;
}

/** Long-axis length and 20 disc diameters (mm) of a contour traced annulus → apex → annulus. */
export function discProfile(contour) {
  if (contour.length < 5) return null;
  const [x0, y0] = contour[0];
  const [x1, y1] = contour[contour.length - 1];
  const base = [(x0 + x1) / 2, (y0 + y1) / 2];
  let apex = contour[0];
  for (const p of contour) {
    if (Math.hypot(p[0] - base[0], p[1] - base[1]) > Math.hypot(apex[0] - base[0], apex[1] - base[1])) apex = p;
  }
  const length = Math.hypot(apex[0] - base[0], apex[1] - base[1]);
  if (!(length > 0)) return null;
  const ux = (apex[0] - base[0]) / length;
  const uy = (apex[1] - base[1]) / length;
  const axis = contour.map(([x, y]) => [(x - base[0]) * ux + (y - base[1]) * uy, -(x - base[0]) * uy + (y - base[1]) * ux]);
  const closed = [...axis, axis[0]];
  const diameters = [];
  for (let k = 0; k < DISCS; k++) {
    const level = ((k + 0.5) * length) / DISCS;
    const crossings = [];
    for (let i = 0; i + 1 < closed.length; i++) {
      const [sa, wa] = closed[i];
      const [sb, wb] = closed[i + 1];
      if ((sa - level) * (sb - level) < 0 || (sa === level && sb !== level)) crossings.push(wa + ((level - sa) * (wb - wa)) / (sb - sa));
    }
    diameters.push(crossings.length >= 2 ? Math.max(...crossings) - Math.min(...crossings) : 0);
  }
  return { length, diameters };
}

function monoplane(mm) {
  const p = discProfile(mm);
  if (!p) return null;
  return (Math.PI / 4) * p.diameters.reduce((s, d) => s + d * d, 0) * (p.length / DISCS) / 1000;
}

function biplane(a4c, a2c) {
  const four = discProfile(a4c);
  const two = discProfile(a2c);
  if (!four || !two) return null;
  const h = Math.max(four.length, two.length) / DISCS;
  return (Math.PI / 4) * four.diameters.reduce((s, a, i) => s + a * two.diameters[i], 0) * h / 1000;
}

/** EDV/ESV/EF from contours in mm keyed "A4C-ED", "A4C-ES", "A2C-ED", "A2C-ES"; null if incomplete. */
export function lvVolumes(contours) {
  let method = null;
  let edv = null;
  let esv = null;
  if (contours["A4C-ED"] && contours["A4C-ES"] && contours["A2C-ED"] && contours["A2C-ES"]) {
    method = "biplane";
    edv = biplane(contours["A4C-ED"], contours["A2C-ED"]);
    esv = biplane(contours["A4C-ES"], contours["A2C-ES"]);
  } else {
    for (const view of ["A4C", "A2C"]) {
      if (contours[`${view}-ED`] && contours[`${view}-ES`]) {
        method = `monoplane-${view}`;
        edv = monoplane(contours[`${view}-ED`]);
        esv = monoplane(contours[`${view}-ES`]);
        break;
      }
    }
  }
  if (!method || !(edv > 0) || esv === null || esv > edv) return null;
  return { method, edv_ml: edv, esv_ml: esv, ef_percent: (100 * (edv - esv)) / edv };
}

/** "23.4 mm", "5.12 cm" (≥ 10 cm), "1.23 cm²", "87 px". */
export function formatValue({ value, unit }) {
  if (unit === "mm" && value >= 100) return `${(value / 10).toFixed(2)} cm`;
  if (unit === "mm") return `${value.toFixed(1)} mm`;
  if (unit === "cm²" || unit === "cm2") return `${value.toFixed(2)} cm²`;
  if (unit === "ml") return `${value.toFixed(1)} ml`;
  if (unit === "ms") return `${value.toFixed(0)} ms`;
  if (unit === "cm/s") return `${value.toFixed(1)} cm/s`;
  return `${value.toFixed(0)} ${unit}`;
}
