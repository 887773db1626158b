// Calibrated measurements for the mammography viewer: the same formulas as
// modules/mammography/measurements.py, over the calibration document of /images/{sop}/info
// (server/imaging/calibration.py: mm_per_pixel {row, column}, plane, description).

/** Length between two image points [x, y] in mm (or px when uncalibrated). */
export function distanceMm(a, b, calibration) {
  const dx = b[0] - a[0];
  const dy = b[1] - a[1];
  const pixels = Math.hypot(dx, dy);
  const mm = calibration && calibration.mm_per_pixel;
  if (!mm) return { kind: "distance", value: pixels, unit: "px", pixels, plane: "none" };
  return { kind: "distance", value: Math.hypot(dx * mm.column, dy * mm.row), unit: "mm", pixels, plane: calibration.plane };
}

/** Shoelace area of a closed polygon of image points in mm² (or px²). */
export function areaMm2(points, calibration) {
  let twice = 0;
  points.forEach(([x0, y0], i) => {
    const [x1, y1] = points[(i + 1) % points.length];
    twice += x0 * y1 - x1 * y0;
  });
  const pixels = Math.abs(twice) / 2;
  const mm = calibration && calibration.mm_per_pixel;
  if (!mm) return { kind: "area", value: pixels, unit: "px²", pixels, plane: "none" };
  return { kind: "area", value: pixels * mm.column * mm.row, unit: "mm²", pixels, plane: calibration.plane };
}

export function formatMeasurement(m) {
  const digits = m.unit === "mm" ? 1 : 0;
  const where = m.plane === "detector" ? " (at detector)" : "";
  return `${m.value.toFixed(digits)} ${m.unit}${where}`;
}

/** One line saying which calibration the numbers rest on, e.g. "0.187 mm/px · ImagerPixelSpacing ÷ …". */
export function calibrationNote(calibration) {
  if (!calibration || !calibration.mm_per_pixel) return "uncalibrated: lengths in pixels";
  const mm = calibration.mm_per_pixel.column;
  return `${mm.toFixed(3)} mm/px · ${calibration.description}`;
}
