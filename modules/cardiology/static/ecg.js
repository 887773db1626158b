// 12-lead ECG on ECG paper: 25 mm/s, 10 mm/mV, 1 mm and 5 mm grid, the standard 3×4
// layout (I aVR V1 V4 / II aVL V2 V5 / III aVF V3 V6, 2.5 s each) and a 10 s lead II
// rhythm strip, each row starting with a 1 mV calibration pulse.

import { describeError, problemFrom } from "/static/js/dicomweb.js";
import { bindKeys } from "/static/js/keyboard.js";

const MM_PER_S = 25;
const MM_PER_MV = 10;
const ROW_MM = 30;
const PULSE_MM = 5;
const LAYOUT = [
  ["I", "aVR", "V1", "V4"],
  ["II", "aVL", "V2", "V5"],
  ["III", "aVF", "V3", "V6"],
];
const params = new URLSearchParams(location.search);
const sop = params.get("sop") || "";
const canvas = document.getElementById("ecg");
let zoom = 4; // CSS pixels per mm
let record = null;

function channel(label) {
  const wanted = label.toUpperCase();
  return record.channels.find((c) => c.label.toUpperCase() === wanted || c.label.toUpperCase() === `LEAD ${wanted}`) || null;
}

function draw() {
  const seconds = record.duration_ms / 1000;
  const columnS = seconds / 4;
  const widthMm = PULSE_MM + seconds * MM_PER_S + 2;
  const heightMm = ROW_MM * 4 + 4;
  const ratio = devicePixelRatio || 1;
  canvas.style.width = `${widthMm * zoom}px`;
  canvas.style.height = `${heightMm * zoom}px`;
  canvas.width = Math.round(widthMm * zoom * ratio);
  canvas.height = Math.round(heightMm * zoom * ratio);
  const ctx = canvas.getContext("2d");
  const px = zoom * ratio; // device pixels per mm
  ctx.fillStyle = "#fff8f6";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  for (let mm = 0; mm <= widthMm; mm++) {
    ctx.strokeStyle = mm % 5 ? "#f6c9c4" : "#e58a80";
    ctx.lineWidth = mm % 5 ? 0.5 * ratio : 1 * ratio;
    ctx.beginPath();
    ctx.moveTo(mm * px, 0);
    ctx.lineTo(mm * px, heightMm * px);
    ctx.stroke();
  }
  for (let mm = 0; mm <= heightMm; mm++) {
    ctx.strokeStyle = mm % 5 ? "#f6c9c4" : "#e58a80";
    ctx.lineWidth = mm % 5 ? 0.5 * ratio : 1 * ratio;
    ctx.beginPath();
    ctx.moveTo(0, mm * px);
    ctx.lineTo(widthMm * px, mm * px);
    ctx.stroke();
  }
  const hz = record.sampling_hz;
  ctx.strokeStyle = "#111";
  ctx.fillStyle = "#111";
  ctx.lineWidth = 1.2 * ratio;
  ctx.font = `${3.2 * px}px system-ui, sans-serif`;
  const trace = (samples, fromS, toS, x0Mm, baselineMm) => {
    const first = Math.max(0, Math.floor(fromS * hz));
    const last = Math.min(samples.length - 1, Math.ceil(toS * hz));
    ctx.beginPath();
    for (let i = first; i <= last; i++) {
      const x = (x0Mm + (i / hz - fromS) * MM_PER_S) * px;
      const y = (baselineMm - samples[i] * MM_PER_MV) * px;
      if (i === first) ctx.moveTo(x, y);
      else ctx.lineTo(x, y);
    }
    ctx.stroke();
  };
  const pulse = (baselineMm) => {
    ctx.beginPath();
    ctx.moveTo(0.5 * px, baselineMm * px);
    ctx.lineTo(1 * px, baselineMm * px);
    ctx.lineTo(1 * px, (baselineMm - MM_PER_MV) * px);
    ctx.lineTo(4 * px, (baselineMm - MM_PER_MV) * px);
    ctx.lineTo(4 * px, baselineMm * px);
    ctx.lineTo(PULSE_MM * px, baselineMm * px);
    ctx.stroke();
  };
  LAYOUT.forEach((row, r) => {
    const baseline = ROW_MM * r + ROW_MM * 0.6;
    pulse(baseline);
    row.forEach((label, c) => {
      const lead = channel(label);
      const x0 = PULSE_MM + c * columnS * MM_PER_S;
      if (lead) trace(lead.samples_mv, c * columnS, (c + 1) * columnS, x0, baseline);
      ctx.fillText(label, (x0 + 1) * px, (ROW_MM * r + 5) * px);
      if (c) {
        ctx.beginPath();
        ctx.moveTo(x0 * px, (baseline - 3) * px);
        ctx.lineTo(x0 * px, (baseline + 3) * px);
        ctx.stroke();
      }
    });
  });
  const rhythm = channel("II") || record.channels[0];
  const baseline = ROW_MM * 3 + ROW_MM * 0.6;
  pulse(baseline);
  trace(rhythm.samples_mv, 0, seconds, PULSE_MM, baseline);
  ctx.fillText(`${rhythm.label} (rhythm)`, (PULSE_MM + 1) * px, (ROW_MM * 3 + 5) * px);
  document.getElementById("zoom-label").textContent = `${zoom} px/mm`;
  canvas.dataset.drawn = "true";
}

function setZoom(value) {
  zoom = Math.min(12, Math.max(2, value));
  if (record) draw();
}

async function start() {
  const response = await fetch(`/cardiology/waveforms/${encodeURIComponent(sop)}`);
  if (!response.ok) throw await problemFrom(response);
  record = await response.json();
  document.getElementById("ecg-info").textContent =
    `${record.channels.length} leads · ${record.sampling_hz} Hz · ${(record.duration_ms / 1000).toFixed(1)} s`;
  draw();
}

document.getElementById("zoom-in").addEventListener("click", () => setZoom(zoom + 1));
document.getElementById("zoom-out").addEventListener("click", () => setZoom(zoom - 1));
bindKeys({ "+": () => setZoom(zoom + 1), "=": () => setZoom(zoom + 1), "-": () => setZoom(zoom - 1) });
start().catch((error) => {
  document.getElementById("status").textContent = describeError(error);
});
