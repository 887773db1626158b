// Calibrated geometry for the slide viewer: image pixels → micrometres, nice scale-bar lengths.

/** Length of a polyline in µm, given µm per image pixel along x and y. */
export function lengthMicrometres(points, mppX, mppY) {
  let total = 0;
  for (let i = 1; i < points.length; i += 1) {
    const dx = (points[i].x - points[i - 1].x) * mppX;
    const dy = (points[i].y - points[i - 1].y) * mppY;
    total += Math.hypot(dx, dy);
  }
  return total;
}

/** Area of a simple polygon in µm² (shoelace formula). */
export function areaSquareMicrometres(points, mppX, mppY) {
  let twice = 0;
  for (let i = 0; i < points.length; i += 1) {
    const a = points[i];
    const b = points[(i + 1) % points.length];
    twice += a.x * mppX * (b.y * mppY) - b.x * mppX * (a.y * mppY);
  }
  return Math.abs(twice) / 2;
}

export function formatLength(um) {
  if (um >= 1000) return `${(um / 1000).toFixed(um >= 10000 ? 1 : 2)} mm`;
  if (um >= 10) return `${um.toFixed(0)} µm`;
  return `${um.toFixed(1)} µm`;
}

export function formatArea(um2) {
  const mm2 = um2 / 1e6;
  if (mm2 >= 0.01) return `${mm2.toFixed(3)} mm²`;
  return `${Math.round(um2).toLocaleString('en')} µm²`;
}

/** The longest 1-2-5 × 10^n µm length that fits in maxPixels at umPerScreenPixel. */
export function niceScale(umPerScreenPixel, maxPixels) {
  const maxUm = umPerScreenPixel * maxPixels;
  const power = 10 ** Math.floor(Math.log10(maxUm));
  const step = [5, 2, 1].find((s) => s * power <= maxUm) ?? 1;
  const um = step * power;
  return { um, pixels: um / umPerScreenPixel };
}
