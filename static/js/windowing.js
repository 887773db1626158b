// Window/level (VOI) for grayscale images, shared by Tessera's viewers: presets from
// DICOM metadata, the data range, mouse-drag adjustment, and the readout text.

import { TAG, number, values } from "./dicomweb.js";

/** The window presets an instance carries: [{center, width, label}] (may be empty). */
export function presetsFromMetadata(meta) {
  const centers = values(meta, TAG.WindowCenter);
  const widths = values(meta, TAG.WindowWidth);
  const labels = values(meta, TAG.WindowCenterWidthExplanation);
  const presets = [];
  for (let i = 0; i < Math.min(centers.length, widths.length); i++) {
    const center = parseFloat(centers[i]);
    const width = parseFloat(widths[i]);
    if (!Number.isFinite(center) || !Number.isFinite(width) || width < 1) continue;
    const label = typeof labels[i] === "string" && labels[i].trim() ? labels[i].trim() : `Preset ${i + 1}`;
    presets.push({ center, width, label });
  }
  return presets;
}

/** True when window/level applies (grayscale); false for RGB, YBR and palette colour. */
export function isGrayscale(meta) {
  const photometric = String(values(meta, TAG.PhotometricInterpretation)[0] || "MONOCHROME2");
  return photometric.startsWith("MONOCHROME");
}

/** The range of modality values (after rescale) the stored bits can hold: {min, max}. */
export function modalityRange(meta) {
  const bits = number(meta, TAG.BitsStored, 0, 12);
  const signed = number(meta, TAG.PixelRepresentation, 0, 0) === 1;
  const slope = number(meta, TAG.RescaleSlope, 0, 1) || 1;
  const intercept = number(meta, TAG.RescaleIntercept, 0, 0);
  const lo = signed ? -(2 ** (bits - 1)) : 0;
  const hi = signed ? 2 ** (bits - 1) - 1 : 2 ** bits - 1;
  const a = lo * slope + intercept;
  const b = hi * slope + intercept;
  return { min: Math.min(a, b), max: Math.max(a, b) };
}

/** A starting window for an instance: its first preset, else its whole data range. */
export function initialWindow(meta) {
  const [first] = presetsFromMetadata(meta);
  if (first) return { center: first.center, width: first.width };
  const { min, max } = modalityRange(meta);
  return { center: (min + max) / 2, width: Math.max(1, max - min) };
}

/** Whole units for ordinary windows; decimals only for very narrow ones (e.g. SUV, T2 maps). */
function round(v, width) {
  const digits = width >= 20 ? 0 : width >= 2 ? 1 : 3;
  const f = 10 ** digits;
  return Math.round(v * f) / f;
}

/** The readout: "W 400 L 40". */
export function formatWindow(win) {
  if (!win) return "W/L auto";
  return `W ${round(win.width, win.width)} L ${round(win.center, win.width)}`;
}

/** The value of the `window` query parameter of WADO-RS rendered requests. */
export function windowParam(win, fn = "linear") {
  if (!win) return "";
  return `${round(win.center, win.width)},${round(win.width, win.width)},${fn}`;
}

/**
 * Window/level by mouse drag on `element`. Right-drag always adjusts; left-drag adjusts
 * when `isLeftDragWindowing()` says so. Horizontal movement changes the width (right:
 * wider), vertical the level/center (down: higher). The step per pixel comes from
 * `unitsPerPixel(startWindow)` (modality units per screen pixel; default: width / 256,
 * so the feel is the same for a narrow brain window and a wide lung window).
 *
 * Callbacks: getWindow() → {center, width} (the window to start from),
 * onWindow({center, width}) during the drag, onEnd() when it stops.
 * Returns a function that removes the listeners.
 */
export function bindWindowDrag(element, { getWindow, onWindow, onEnd, unitsPerPixel, isLeftDragWindowing, enabled }) {
  let drag = null;
  const down = (event) => {
    const wanted = event.button === 2 || (event.button === 0 && isLeftDragWindowing());
    if (!wanted || (enabled && !enabled())) return;
    const start = getWindow();
    if (!start) return;
    event.preventDefault();
    element.setPointerCapture(event.pointerId);
    const step = unitsPerPixel ? unitsPerPixel(start) : Math.max(0.05, start.width / 256);
    drag = { id: event.pointerId, x: event.clientX, y: event.clientY, start, step };
    element.classList.add("dragging");
  };
  const move = (event) => {
    if (!drag || event.pointerId !== drag.id) return;
    const dx = event.clientX - drag.x;
    const dy = event.clientY - drag.y;
    const width = Math.max(1, drag.start.width + dx * drag.step);
    const center = drag.start.center + dy * drag.step;
    onWindow({ center, width });
  };
  const up = (event) => {
    if (!drag || event.pointerId !== drag.id) return;
    drag = null;
    element.classList.remove("dragging");
    if (element.hasPointerCapture(event.pointerId)) element.releasePointerCapture(event.pointerId);
    onEnd?.();
  };
  const menu = (event) => event.preventDefault();
  element.addEventListener("pointerdown", down);
  element.addEventListener("pointermove", move);
  element.addEventListener("pointerup", up);
  element.addEventListener("pointercancel", up);
  element.addEventListener("contextmenu", menu);
  return () => {
    element.removeEventListener("pointerdown", down);
    element.removeEventListener("pointermove", move);
    element.removeEventListener("pointerup", up);
    element.removeEventListener("pointercancel", up);
    element.removeEventListener("contextmenu", menu);
  };
}
