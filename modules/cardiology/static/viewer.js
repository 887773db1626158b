// Cardiology viewer: loops at their true frame rate in a grid or the stress-echo layout,
// lock-step by cardiac cycle, ECG under each loop, calipers, areas and LV volumes / EF.
// Every DICOM string goes into the page with textContent.

import { describeError, el } from "/static/js/dicomweb.js";
import { bindKeys } from "/static/js/keyboard.js";
import { Clock, Loop, loopPath } from "./player.js";
import { area, distance, formatValue, lvVolumes, regionsAt, toMillimetres, velocity } from "./measure.js";

performance.mark("cardiology:modules"); // the module graph has loaded (bench_cardiology's breakdown)
const params = new URLSearchParams(location.search);
const study = params.get("study") || "";
const focusSeries = params.get("series") || "";
const $ = (id) => document.getElementById(id);

const clock = new Clock();
const cells = [];
const loops = new Map(); // sop -> Promise<Loop>
let index = { loops: [], waveforms: [] };
let layout = "1x1";
let chosenLayout = null; // the user's pick, if made before start() had the index
let tool = "none";
let draft = null;
let activeCell = null;
let measurements = [];
let nextId = 1;
let autoplay = false;
const testState = { firstFrameMs: null };
// what boot.js asked for before this module graph had loaded (absent if it has not run)
const boot = window.__cardiologyBoot && window.__cardiologyBoot.study === study ? window.__cardiologyBoot : null;
if (!window.__cardiologyBoot) window.__cardiologyBoot = { late: true }; // boot.js, arriving after us, does nothing

function status(text, isError = false) {
  const node = $("status");
  node.textContent = text;
  node.classList.toggle("error", isError);
}

/** Frame 1 of the series' first loop through the image loader, as boot.js asks for it: the
 * page's Link header preloaded it, so when boot.js came late it is still not a request away. */
function firstFrameImage() {
  const image = new Image();
  image.decoding = "async";
  image.src = `/cardiology/studies/${encodeURIComponent(study)}/series/${encodeURIComponent(focusSeries)}/first-frame.jpg`;
  return image
    .decode()
    .then(() => image)
    .catch(() => null);
}

/** What boot.js and the study index already hold for a loop (used once), or null. */
function earlyOf(sop) {
  const early = { ...(boot ? boot.take(sop) : null) };
  if (index.first && index.first.sop_instance_uid === sop) {
    early.info = index.first;
    delete index.first;
    if (!early.frame1 && focusSeries) early.frame1 = firstFrameImage();
  }
  return Object.keys(early).length ? early : null;
}

function getLoop(sop) {
  if (!loops.has(sop)) {
    loops.set(
      sop,
      Loop.open(sop, earlyOf(sop)).then((loop) => {
        loop.load().catch((error) => {
          loop.error = describeError(error);
          status(`Loop ${sop}: ${loop.error}`, true);
        });
        loop.loadEcg().catch(() => {});
        return loop;
      }),
    );
  }
  return loops.get(sop);
}

// ---------------------------------------------------------------------------------------------
// Cells

function makeCell(entry, title) {
  const root = el("div", "cell");
  const head = el("div", "cell-title", title);
  const image = document.createElement("canvas");
  image.className = "image";
  const ecg = document.createElement("canvas");
  ecg.className = "ecg";
  const info = el("div", "cell-info");
  const counter = el("span", "counter", "…");
  const rate = el("span", "rate", "");
  const notice = el("span", "notice", "");
  info.append(counter, rate, notice);
  root.append(head, image, ecg, info);
  const cell = { root, image, ecg, counter, rate, notice, entry, loop: null, shown: -1, drawn: 0, dropped: 0, lastPosition: null };
  root.dataset.sop = entry.sop_instance_uid;
  image.addEventListener("pointerdown", (event) => pointerDown(cell, event));
  image.addEventListener("pointermove", (event) => pointerMove(cell, event));
  image.addEventListener("pointerup", (event) => pointerUp(cell, event));
  image.addEventListener("dblclick", () => finishDraft());
  root.addEventListener("click", () => setActive(cell));
  getLoop(entry.sop_instance_uid).then(
    (loop) => {
      cell.loop = loop;
      image.width = loop.info.columns;
      image.height = loop.info.rows;
      const warn = loop.info.timing_source === "default" ? " · default timing" : "";
      // a still (a Doppler spectrum, a single image) has no frame rate to show
      rate.textContent = loop.info.number_of_frames === 1 ? "still image" : `${loop.info.fps.toFixed(1)} fps (${loop.info.timing_source})${warn}`;
      rate.title = loop.info.timing_warnings.join("; ");
      if (!loop.info.regions.length) notice.textContent = "no calibration: pixels";
      loop.onFrame = () => {};
    },
    (error) => {
      counter.textContent = "";
      notice.textContent = describeError(error);
      root.classList.add("failed");
    },
  );
  return cell;
}

function setActive(cell) {
  activeCell = cell;
  for (const c of cells) c.root.classList.toggle("active", c === cell);
}

function titleOf(entry) {
  const parts = [];
  if (entry.stage_name) parts.push(entry.stage_name);
  parts.push(entry.view || `#${entry.instance_number}`);
  return parts.join(" · ");
}

function orderedLoops() {
  const list = [...index.loops];
  list.sort((a, b) => (b.series_instance_uid === focusSeries) - (a.series_instance_uid === focusSeries));
  return list;
}

/** The study's loops in the panel; a click shows that loop in the active cell. */
function listLoops() {
  const list = $("loops");
  list.replaceChildren();
  for (const entry of orderedLoops()) {
    const item = el("li");
    const frames = entry.number_of_frames === 1 ? "still" : `${entry.number_of_frames} frames`;
    const button = el("button", "link", `${titleOf(entry)} · ${frames}`);
    button.type = "button";
    button.dataset.sop = entry.sop_instance_uid;
    button.addEventListener("click", () => showInActiveCell(entry));
    item.append(button);
    list.append(item);
  }
}

function showInActiveCell(entry) {
  const old = activeCell || cells[0];
  if (!old) return;
  const cell = makeCell(entry, titleOf(entry));
  old.root.replaceWith(cell.root);
  cells[cells.indexOf(old)] = cell;
  setActive(cell);
  clock.position = 0;
}

function buildLayout(name) {
  layout = name;
  const grid = $("grid");
  grid.replaceChildren();
  cells.length = 0;
  let columns = 1;
  let entries = [];
  const list = orderedLoops();
  if (name === "stress") {
    const stages = [...new Set(list.filter((e) => e.stage_number).map((e) => e.stage_number))].sort((a, b) => a - b);
    const views = [...new Set(list.filter((e) => e.stage_number).map((e) => e.view))];
    const known = ["PLAX", "PSAX", "A4C", "A2C", "A3C"];
    views.sort((a, b) => (known.indexOf(a) + 99) % 99 - (known.indexOf(b) + 99) % 99);
    columns = views.length;
    for (const stage of stages) {
      for (const view of views) {
        const entry = list.find((e) => e.stage_number === stage && e.view === view);
        entries.push(entry || null);
      }
    }
  } else {
    const n = Number(name[0]);
    columns = n;
    entries = list.slice(0, n * n);
  }
  grid.style.setProperty("--columns", String(columns));
  grid.style.setProperty("--rows", String(Math.max(1, Math.ceil(entries.length / columns))));
  grid.dataset.layout = name;
  for (const entry of entries) {
    if (!entry) {
      grid.append(el("div", "cell empty", "—"));
      continue;
    }
    const cell = makeCell(entry, titleOf(entry));
    cells.push(cell);
    grid.append(cell.root);
  }
  for (const button of document.querySelectorAll("[data-layout]")) button.classList.toggle("active", button.dataset.layout === name);
  if (cells.length) setActive(cells[0]);
  clock.position = 0;
}

// ---------------------------------------------------------------------------------------------
// Playback

function lockStep() {
  return cells.length > 1;
}

/** The loop whose cycle sets the clock: the first that moves (a still's 33 ms would spin the others). */
function reference() {
  return cells.find((c) => c.loop && c.loop.frames.length > 1) || cells.find((c) => c.loop) || null;
}

function period() {
  const ref = reference();
  if (!ref) return 1000;
  if (!lockStep()) return ref.loop.duration;
  const cycle = ref.loop.cycle();
  return cycle.end - cycle.start;
}

function loopTime(cell) {
  if (!lockStep()) return clock.position;
  const cycle = cell.loop.cycle();
  return cycle.start + (clock.position / period()) * (cycle.end - cycle.start);
}

function render(now) {
  // playback starts when every loop on screen can show its first frame, not before
  if (autoplay && cells.length && cells.every((c) => c.loop && c.loop.frames[0])) {
    autoplay = false;
    clock.position = 0;
    clock.play();
  }
  clock.tick(now, period());
  for (const cell of cells) {
    const loop = cell.loop;
    if (!loop) continue;
    const t = loopTime(cell);
    let frame = loop.frameAt(t);
    while (frame > 0 && !loop.frames[frame] && loop.loaded < loop.frames.length) frame -= 1; // still arriving
    if (loop.frames[frame] && (frame !== cell.shown || cell.dirty)) {
      // frames the display skipped although they were ready (not frames still loading)
      if (clock.playing && cell.shown >= 0 && frame > cell.shown + 1 && loop.loaded === loop.frames.length) {
        cell.dropped += frame - cell.shown - 1;
      }
      cell.shown = frame;
      cell.drawn += 1;
      cell.dirty = false;
      drawImage(cell);
      cell.root.dataset.frame = String(frame + 1);
      if (testState.firstFrameMs === null) {
        testState.firstFrameMs = performance.now(); // since navigation start
        performance.mark("cardiology:frame1-drawn");
      }
    }
    const loaded = loop.loaded < loop.frames.length ? ` · loading ${loop.loaded}/${loop.frames.length}` : "";
    cell.counter.textContent = `${cell.shown + 1}/${loop.frames.length}${loaded}`;
    if (cell.dropped > 0) cell.notice.textContent = `${cell.dropped} frames dropped`;
    drawEcg(cell, t);
  }
  $("play").textContent = clock.playing ? "Pause" : "Play";
  requestAnimationFrame(render);
}

function step(delta) {
  clock.pause();
  const ref = activeCell && activeCell.loop ? activeCell : reference();
  if (!ref) return;
  const loop = ref.loop;
  const n = loop.frames.length;
  const current = loop.frameAt(loopTime(ref));
  let target = current + delta;
  if (lockStep()) {
    const cycle = loop.cycle();
    const first = loop.frameAt(cycle.start);
    const last = Math.max(first, loop.frameAt(cycle.end - 0.001));
    if (target > last) target = first;
    if (target < first) target = last;
    clock.position = ((loop.times[target] - cycle.start) / (cycle.end - cycle.start)) * period() + 0.001;
  } else {
    target = (target + n) % n;
    clock.position = loop.times[target] + 0.001;
  }
  for (const cell of cells) cell.dropped = 0;
}

function togglePlay() {
  if (clock.playing) clock.pause();
  else {
    for (const cell of cells) cell.dropped = 0;
    clock.play();
  }
}

// ---------------------------------------------------------------------------------------------
// Drawing

function drawImage(cell) {
  const ctx = cell.image.getContext("2d");
  ctx.drawImage(cell.loop.frames[cell.shown], 0, 0);
  const shown = Math.min(cell.image.clientWidth / cell.image.width, cell.image.clientHeight / cell.image.height) || 1;
  const scale = 1 / shown;
  ctx.lineWidth = 1.5 * scale;
  ctx.font = `${12 * scale}px system-ui, sans-serif`;
  for (const m of measurements) {
    if (m.sop_instance_uid !== cell.entry.sop_instance_uid) continue;
    drawShape(ctx, m, m.frame === cell.shown + 1 ? 1 : 0.35, scale);
  }
  if (draft && draft.cell === cell) drawShape(ctx, draft, 1, scale);
}

function drawShape(ctx, m, alpha, scale) {
  const colour = m.kind === "distance" ? "#ffd24d" : m.kind === "area" ? "#5fd3ff" : m.kind === "velocity" ? "#9dff57" : "#ff7ab6";
  ctx.globalAlpha = alpha;
  ctx.strokeStyle = colour;
  ctx.fillStyle = colour;
  ctx.beginPath();
  if (m.kind === "velocity") {
    const [[x, y]] = m.points;
    ctx.moveTo(x - 8 * scale, y);
    ctx.lineTo(x + 8 * scale, y);
    ctx.moveTo(x, y - 8 * scale);
    ctx.lineTo(x, y + 8 * scale);
  }
  m.points.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
  if (m.kind === "area" && !m.open) ctx.closePath();
  ctx.stroke();
  for (const [x, y] of m.points) ctx.fillRect(x - 2 * scale, y - 2 * scale, 4 * scale, 4 * scale);
  const text = m.text || "";
  if (text) {
    const [x, y] = m.points[m.points.length - 1];
    ctx.fillText(text, x + 6 * scale, y - 6 * scale);
  }
  ctx.globalAlpha = 1;
}

function drawEcg(cell, t) {
  const canvas = cell.ecg;
  const ecg = cell.loop.ecg;
  const width = Math.round(canvas.clientWidth * devicePixelRatio);
  const height = Math.round(canvas.clientHeight * devicePixelRatio);
  if (!width || !height) return;
  if (canvas.width !== width || canvas.height !== height) {
    canvas.width = width;
    canvas.height = height;
  }
  const ctx = canvas.getContext("2d");
  if (!ecg) {
    if (cell.loop.ecgSettled) canvas.classList.add("absent");
    return;
  }
  if (!cell.trace || cell.trace.width !== width || cell.trace.height !== height) cell.trace = ecgTrace(cell, width, height);
  ctx.clearRect(0, 0, width, height);
  ctx.drawImage(cell.trace, 0, 0);
  const x = (t / cell.loop.duration) * width;
  ctx.strokeStyle = "#ffffff";
  ctx.lineWidth = devicePixelRatio;
  ctx.beginPath();
  ctx.moveTo(x, 0);
  ctx.lineTo(x, height);
  ctx.stroke();
}

/** The ECG trace drawn once per size, so each tick only draws the cursor. */
function ecgTrace(cell, width, height) {
  const ecg = cell.loop.ecg;
  const trace = new OffscreenCanvas(width, height);
  const ctx = trace.getContext("2d");
  const duration = cell.loop.duration;
  const samples = ecg.samples_mv;
  let min = Infinity;
  let max = -Infinity;
  for (const v of samples) {
    if (v < min) min = v;
    if (v > max) max = v;
  }
  const span = max - min || 1;
  ctx.strokeStyle = "#57d68d";
  ctx.lineWidth = devicePixelRatio;
  ctx.beginPath();
  samples.forEach((v, i) => {
    const time = ecg.offset_ms + (1000 * i) / ecg.sampling_hz;
    const x = (time / duration) * width;
    const y = height - 3 - ((v - min) / span) * (height - 6);
    if (i) ctx.lineTo(x, y);
    else ctx.moveTo(x, y);
  });
  ctx.stroke();
  return trace;
}

// ---------------------------------------------------------------------------------------------
// Measuring

/** Event position in image pixels; the canvas is letterboxed by object-fit: contain. */
function imagePoint(cell, event) {
  const rect = cell.image.getBoundingClientRect();
  const scale = Math.min(rect.width / cell.image.width, rect.height / cell.image.height);
  const left = rect.left + (rect.width - cell.image.width * scale) / 2;
  const top = rect.top + (rect.height - cell.image.height * scale) / 2;
  return [(event.clientX - left) / scale, (event.clientY - top) / scale];
}

/** The caliper's reading with the regions of the frame it is on: { value, unit, calibrated } or null. */
function reading(m, loop) {
  const regions = regionsAt(loop.info, m.frame - 1);
  if (m.kind === "distance") return distance(regions, m.points[0], m.points[1]);
  if (m.kind === "area") return area(regions, m.points);
  if (m.kind === "velocity") return velocity(regions, m.points[0]);
  return null;
}

function label(m, loop) {
  const r = reading(m, loop);
  if (!r) return m.label;
  const text = formatValue(r);
  // a time caliper in a Doppler region also reads the velocity difference between its ends
  return r.unit === "ms" && r.y_unit ? `${text} · Δ ${r.y.toFixed(1)} ${r.y_unit}` : text;
}

function pointerDown(cell, event) {
  if (tool === "none" || !cell.loop) return;
  setActive(cell);
  clock.pause();
  const p = imagePoint(cell, event);
  const frame = cell.shown + 1;
  if (tool === "distance") {
    draft = { cell, kind: "distance", sop_instance_uid: cell.entry.sop_instance_uid, frame, points: [p, p] };
    cell.image.setPointerCapture(event.pointerId);
  } else if (tool === "velocity") {
    // a velocity exists only on a Doppler scale: elsewhere say so, and keep nothing unsavable
    if (velocity(regionsAt(cell.loop.info, frame - 1), p).calibrated) {
      addMeasurement({ cell, kind: "velocity", sop_instance_uid: cell.entry.sop_instance_uid, frame, points: [p] });
    } else status("Velocity: click inside a spectral Doppler region (no velocity scale here)", true);
  } else if (draft && draft.cell === cell) {
    draft.points.push(p);
  } else {
    const kind = tool === "lv" ? "lv" : "area";
    draft = { cell, kind, open: true, sop_instance_uid: cell.entry.sop_instance_uid, frame, points: [p], label: kind === "lv" ? $("lv-label").value : "" };
  }
  cell.dirty = true;
}

function pointerMove(cell, event) {
  if (!draft || draft.cell !== cell || draft.kind !== "distance") return;
  draft.points[1] = imagePoint(cell, event);
  draft.text = label(draft, cell.loop);
  cell.dirty = true;
}

function pointerUp(cell, event) {
  if (!draft || draft.cell !== cell || draft.kind !== "distance") return;
  draft.points[1] = imagePoint(cell, event);
  const [p, q] = draft.points;
  if (Math.hypot(q[0] - p[0], q[1] - p[1]) > 2) addMeasurement(draft);
  draft = null;
  cell.dirty = true;
}

function finishDraft() {
  if (!draft || draft.kind === "distance") return;
  const minimum = draft.kind === "lv" ? 5 : 3;
  // a double-click adds the same point twice: drop exact repeats
  draft.points = draft.points.filter((p, i, all) => i === 0 || p[0] !== all[i - 1][0] || p[1] !== all[i - 1][1]);
  if (draft.points.length >= minimum) addMeasurement(draft);
  else status(`${draft.kind === "lv" ? "An LV contour" : "An area"} needs at least ${minimum} points`, true);
  draft.cell.dirty = true;
  draft = null;
}

function addMeasurement(d) {
  const m = { id: String(nextId++), kind: d.kind, sop_instance_uid: d.sop_instance_uid, frame: d.frame, points: d.points.map(([x, y]) => [x, y]), label: d.label || "" };
  if (m.kind === "lv") measurements = measurements.filter((o) => !(o.kind === "lv" && o.label === m.label));
  m.text = label(m, d.cell.loop);
  m.reading = reading(m, d.cell.loop);
  measurements.push(m);
  refreshPanel();
  markDirty();
}

function markDirty() {
  for (const cell of cells) cell.dirty = true;
  $("save-state").textContent = "not saved";
}

async function regionsOf(sop, frame) {
  return regionsAt((await getLoop(sop)).info, frame - 1);
}

async function refreshPanel() {
  const list = $("measurements");
  list.replaceChildren();
  for (const m of measurements) {
    const loop = await getLoop(m.sop_instance_uid);
    const what = m.kind === "lv" ? `LV contour ${m.label}` : `${m.kind}: ${m.text || label(m, loop)}`;
    const item = el("li", "", `${loop.info.view || "loop"} · frame ${m.frame} · ${what}`);
    const remove = el("button", "link", "×");
    remove.type = "button";
    remove.title = "Remove";
    remove.addEventListener("click", () => {
      measurements = measurements.filter((o) => o !== m);
      refreshPanel();
      markDirty();
    });
    item.append(remove);
    list.append(item);
  }
  const contours = {};
  for (const m of measurements.filter((o) => o.kind === "lv")) {
    const mm = toMillimetres(await regionsOf(m.sop_instance_uid, m.frame), m.points);
    if (mm) contours[m.label] = mm;
  }
  const result = lvVolumes(contours);
  $("ef").textContent = result
    ? `EDV ${result.edv_ml.toFixed(1)} ml · ESV ${result.esv_ml.toFixed(1)} ml · EF ${result.ef_percent.toFixed(1)} % (${result.method})`
    : "Trace A4C and/or A2C at ED and ES for volumes and EF.";
}

function payload() {
  return { measurements: measurements.map(({ id, kind, sop_instance_uid, frame, points, label: l }) => ({ id, kind, sop_instance_uid, frame, points, label: l })) };
}

async function send(url, method, body) {
  const response = await fetch(url, { method, headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  if (!response.ok) {
    const problem = await response.json().catch(() => ({}));
    throw new Error(problem.detail || `HTTP ${response.status}`);
  }
  return response;
}

async function save() {
  try {
    const document_ = await (await send(`/cardiology/studies/${encodeURIComponent(study)}/measurements`, "PUT", payload())).json();
    const lv = document_.lv;
    $("save-state").textContent = `saved ${document_.saved_at}` + (lv ? ` · server EF ${lv.ef_percent.toFixed(1)} % (${lv.method})` : "");
  } catch (error) {
    status(`Saving failed: ${describeError(error)}`, true);
  }
}

async function exportSr() {
  try {
    await save();
    const result = await (await send(`/cardiology/studies/${encodeURIComponent(study)}/measurements/sr`, "POST", {})).json();
    status(`DICOM SR stored: ${result.sop_instance_uid}`);
  } catch (error) {
    status(`SR export failed: ${describeError(error)}`, true);
  }
}

async function exportVideo() {
  const cell = activeCell;
  if (!cell) return;
  status("Making the video…");
  try {
    const sop = cell.entry.sop_instance_uid;
    const body = { measurements: payload().measurements.filter((m) => m.sop_instance_uid === sop) };
    const blob = await (await send(`${loopPath(sop)}/export.mp4`, "POST", body)).blob();
    const link = $("video-link");
    link.href = URL.createObjectURL(blob);
    link.download = `loop-${sop.replaceAll("/", "-")}.mp4`;
    link.hidden = false;
    link.click();
    status("Video ready.");
  } catch (error) {
    status(`Export failed: ${describeError(error)}`, true);
  }
}

async function loadSaved() {
  const response = await fetch(`/cardiology/studies/${encodeURIComponent(study)}/measurements`);
  if (!response.ok) return;
  const saved = await response.json();
  for (const m of saved.measurements) {
    const text = m.kind === "lv" ? m.label : formatValue({ value: m.value, unit: m.unit === "cm2" ? "cm²" : m.unit });
    measurements.push({ ...m, text, reading: m.kind === "lv" ? null : { value: m.value, unit: m.unit, calibrated: m.calibrated } });
    nextId = Math.max(nextId, Number(m.id) + 1 || nextId);
  }
  if (saved.saved_at) $("save-state").textContent = `saved ${saved.saved_at}`;
  refreshPanel();
}

// ---------------------------------------------------------------------------------------------
// Start

async function start() {
  $("export-json").href = `/cardiology/studies/${encodeURIComponent(study)}/measurements?download=1`;
  const indexUrl = `/cardiology/studies/${encodeURIComponent(study)}/loops?series=${encodeURIComponent(focusSeries)}`;
  let response = boot ? await boot.index.catch(() => null) : null;
  if (response) await boot.ready; // the first loop's stream is asked for once, by boot.js
  if (!response || response.status === 401) response = await fetch(indexUrl);
  if (!response.ok) {
    status(`This study cannot be opened (HTTP ${response.status})`, true);
    return;
  }
  index = await response.json();
  performance.mark("cardiology:index");
  const seriesLoops = index.loops.filter((e) => e.series_instance_uid === focusSeries);
  const seriesWaves = index.waveforms.filter((e) => e.series_instance_uid === focusSeries);
  if (!index.loops.length || (focusSeries && !seriesLoops.length && seriesWaves.length)) {
    const wave = seriesWaves[0] || index.waveforms[0];
    if (wave) {
      location.replace(`ecg.html?study=${encodeURIComponent(study)}&sop=${encodeURIComponent(wave.sop_instance_uid)}`);
      return;
    }
    status("No loops in this study.", true);
    return;
  }
  const stages = new Set(index.loops.filter((e) => e.stage_number).map((e) => e.stage_number));
  $("layout-stress").hidden = stages.size < 2;
  listLoops();
  // a layout picked while the index was still on its way is kept, not replaced by the default
  buildLayout(chosenLayout || (stages.size >= 2 ? "stress" : index.loops.length > 1 ? "2x2" : "1x1"));
  autoplay = true;
  requestAnimationFrame(render);
  await loadSaved();
}

for (const button of document.querySelectorAll("[data-layout]")) {
  button.addEventListener("click", () => {
    chosenLayout = button.dataset.layout;
    buildLayout(chosenLayout);
  });
}
for (const button of document.querySelectorAll("[data-tool]")) {
  button.addEventListener("click", () => {
    tool = button.dataset.tool;
    draft = null;
    for (const b of document.querySelectorAll("[data-tool]")) b.classList.toggle("active", b === button);
  });
}
$("play").addEventListener("click", togglePlay);
$("back").addEventListener("click", () => step(-1));
$("forward").addEventListener("click", () => step(1));
$("loop").addEventListener("change", (event) => (clock.loop = event.target.checked));
$("speed").addEventListener("change", (event) => {
  clock.speed = Number(event.target.value);
  for (const cell of cells) cell.dropped = 0;
});
$("save").addEventListener("click", save);
$("export-sr").addEventListener("click", exportSr);
$("export-video").addEventListener("click", exportVideo);
bindKeys({
  Space: togglePlay,
  ArrowRight: () => step(1),
  ArrowLeft: () => step(-1),
  Enter: finishDraft,
  Escape: () => {
    draft = null;
    markDirty();
  },
});

window.cardiology = {
  state: () => ({
    playing: clock.playing,
    speed: clock.speed,
    layout,
    firstFrameMs: testState.firstFrameMs,
    cells: cells.map((c) => ({
      sop: c.entry.sop_instance_uid,
      frame: c.shown,
      drawn: c.drawn,
      dropped: c.dropped,
      loaded: c.loop ? c.loop.loaded : 0,
      frames: c.loop ? c.loop.frames.length : 0,
      fps: c.loop ? c.loop.info.fps : null,
      ecg: c.loop && c.loop.ecg ? c.loop.ecg.source || "WaveformSequence" : null,
      phase: c.loop && c.shown >= 0 ? (() => {
        const cy = c.loop.cycle();
        return (c.loop.times[c.shown] - cy.start) / (cy.end - cy.start);
      })() : null,
    })),
  }),
  measurements: () => payload(),
  readings: () => measurements.map((m) => ({ id: m.id, kind: m.kind, frame: m.frame, text: m.text, ...(m.reading || {}) })),
  save,
  /** Client coordinates of image pixel (x, y) in cell `index`, for tests that click on anatomy. */
  clientPoint: (index, x, y) => {
    const canvas = cells[index].image;
    const rect = canvas.getBoundingClientRect();
    const scale = Math.min(rect.width / canvas.width, rect.height / canvas.height);
    return [rect.left + (rect.width - canvas.width * scale) / 2 + x * scale, rect.top + (rect.height - canvas.height * scale) / 2 + y * scale];
  },
};

start().catch((error) => status(describeError(error), true));
