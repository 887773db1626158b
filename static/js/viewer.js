// The generic image viewer at /viewer/?study=...&series=...: rendered frames sized to the
// window, window/level (drag, presets), frame scrolling (wheel, keys, slider, strip),
// a patient/study overlay, debounced requests, stale answers dropped, neighbours prefetched.
// DICOM-derived strings only ever reach the DOM through textContent.

import {
  TAG, qido, getJSON, value, number, formatPersonName, formatDate, formatTime,
  describeError, seriesUrl, el, thumbnail,
} from "./dicomweb.js";
import { bindKeys, bindWheelSteps } from "./keyboard.js";
import {
  presetsFromMetadata, isGrayscale, initialWindow, modalityRange, formatWindow, windowParam,
  bindWindowDrag,
} from "./windowing.js";
import { FrameCache, renderedUrl } from "./frames.js";

const $ = (id) => document.getElementById(id);
const stage = $("stage");
const frameImg = $("frame");
const slider = $("slider");

const params = new URLSearchParams(location.search);
const studyUid = params.get("study") || "";
const seriesUid = params.get("series") || "";

const cache = new FrameCache({ capacity: 200 });
const state = {
  stack: [], // [{sop, frame (1-based), frames, instanceNumber, instanceIndex}]
  index: 0,
  window: null, // {center, width} or null = the image's default
  presetLabel: "Default",
  leftDrag: "wl", // "wl" | "scroll"
  metadata: new Map(), // sop -> Promise<dataset>
  meta: null, // dataset of the current instance (once loaded)
  shownKey: "", // renderedUrl of the image on screen
  shownSeq: 0,
  seq: 0,
  inFlight: null, // {key, seq}
  failedKey: "", // the last request that failed (not retried automatically)
  timer: 0,
  direction: 1,
};

// ---- errors --------------------------------------------------------------

function showError(error) {
  $("error-message").textContent = describeError(error);
  $("error").hidden = false;
}
$("error-close").addEventListener("click", () => { $("error").hidden = true; });

function setStageState(text, { spinner = false } = {}) {
  const node = $("stage-state");
  if (!text) { node.hidden = true; return; }
  node.hidden = false;
  node.replaceChildren();
  if (spinner) node.append(el("span", "spinner"));
  node.append(document.createTextNode(text));
}

// ---- loading the series --------------------------------------------------

function metadataFor(sop) {
  let promise = state.metadata.get(sop);
  if (!promise) {
    promise = getJSON(`${seriesUrl(studyUid, seriesUid)}/instances/${encodeURIComponent(sop)}/metadata`, {
      accept: "application/dicom+json",
    }).then((list) => (Array.isArray(list) ? list[0] || {} : list || {}));
    promise.catch(() => state.metadata.delete(sop));
    state.metadata.set(sop, promise);
  }
  return promise;
}

async function loadInstances() {
  const all = [];
  const pageSize = 1000;
  for (let offset = 0; ; offset += pageSize) {
    const { items, more } = await qido(
      `studies/${encodeURIComponent(studyUid)}/series/${encodeURIComponent(seriesUid)}/instances`,
      { limit: pageSize, offset },
    );
    all.push(...items);
    if (!more || items.length === 0) break;
  }
  all.sort((a, b) => number(a, TAG.InstanceNumber, 0, 0) - number(b, TAG.InstanceNumber, 0, 0));
  const stack = [];
  all.forEach((instance, instanceIndex) => {
    const sop = value(instance, TAG.SOPInstanceUID);
    const frames = Math.max(1, number(instance, TAG.NumberOfFrames, 0, 1));
    const instanceNumber = number(instance, TAG.InstanceNumber, 0, null);
    const rows = number(instance, TAG.Rows, 0, null);
    const columns = number(instance, TAG.Columns, 0, null);
    for (let frame = 1; frame <= frames; frame++) {
      stack.push({ sop, frame, frames, instanceNumber, instanceIndex, rows, columns });
    }
  });
  return { instances: all, stack };
}

async function start() {
  if (!studyUid || !seriesUid) {
    setStageState("No series chosen.");
    showError(new Error("This page needs ?study=…&series=… — open a series from the study list."));
    return;
  }
  const back = sessionStorage.getItem("tessera.browserUrl");
  $("back").href = back && back.startsWith("/") && !back.startsWith("//") ? back : `/?study=${encodeURIComponent(studyUid)}`;
  setStageState("Loading…", { spinner: true });

  const studyPromise = getJSON(`/api/studies/${encodeURIComponent(studyUid)}`);
  studyPromise.then(renderStudy, showError);
  try {
    const { instances, stack } = await loadInstances();
    if (stack.length === 0) {
      setStageState("No images found for this series.");
      return;
    }
    state.stack = stack;
    slider.max = String(stack.length);
    slider.disabled = stack.length < 2;
    renderStrip(instances);
    await goTo(0);
  } catch (error) {
    setStageState("The series could not be loaded.");
    showError(error);
  }
}

// ---- overlay, rail and strip ---------------------------------------------

function lines(node, texts) {
  node.replaceChildren(...texts.filter(Boolean).map((t, i) => el("div", i === 0 ? "strong" : "", t)));
}

function renderStudy(study) {
  const patient = study.patient || {};
  const series = (study.series || []).find((s) => s.SeriesInstanceUID === seriesUid) || {};
  document.title = `${formatPersonName(patient.PatientName) || "Viewer"} · Tessera`;
  lines($("overlay-patient"), [
    formatPersonName(patient.PatientName) || "(no name)",
    patient.PatientID ? `ID ${patient.PatientID}` : "",
    [formatDate(patient.PatientBirthDate), patient.PatientSex].filter(Boolean).join(" "),
  ]);
  lines($("overlay-study"), [
    study.StudyDescription || "",
    [formatDate(study.StudyDate), formatTime(study.StudyTime)].filter(Boolean).join(" "),
    study.AccessionNumber ? `Acc ${study.AccessionNumber}` : "",
    [series.Modality, series.SeriesNumber != null ? `Se ${series.SeriesNumber}` : "", series.SeriesDescription]
      .filter(Boolean).join(" · "),
  ]);
  const rail = $("rail");
  for (const s of study.series || []) {
    const a = el("a", "rail-item");
    const url = typeof s.viewer_url === "string" && s.viewer_url.startsWith("/") && !s.viewer_url.startsWith("//")
      ? s.viewer_url : "/viewer/";
    a.href = url;
    if (s.SeriesInstanceUID === seriesUid) a.setAttribute("aria-current", "true");
    const img = thumbnail(`${seriesUrl(studyUid, s.SeriesInstanceUID)}/thumbnail?viewport=128,128`, {
      label: s.Modality || "",
    });
    const caption = el("span", "caption");
    caption.append(el("strong", "", [s.Modality, s.SeriesNumber != null ? `#${s.SeriesNumber}` : ""].filter(Boolean).join(" ")));
    caption.append(document.createTextNode(` ${s.SeriesDescription || ""}`));
    if (s.module) caption.append(el("span", "", ` · ${s.module.title}`));
    a.append(img, caption);
    rail.append(a);
  }
}

function renderStrip(instances) {
  const strip = $("strip");
  strip.replaceChildren();
  if (instances.length < 2 || instances.length > 400) { strip.hidden = true; return; }
  strip.hidden = false;
  instances.forEach((instance, i) => {
    const sop = value(instance, TAG.SOPInstanceUID);
    const button = el("button");
    button.type = "button";
    button.dataset.instance = String(i);
    button.title = `Instance ${value(instance, TAG.InstanceNumber, i + 1)}`;
    button.setAttribute("aria-label", button.title);
    const img = el("img");
    img.alt = "";
    img.loading = "lazy";
    img.src = `${seriesUrl(studyUid, seriesUid)}/instances/${encodeURIComponent(sop)}/thumbnail?viewport=40,40`;
    button.append(img);
    button.addEventListener("click", () => {
      const index = state.stack.findIndex((entry) => entry.instanceIndex === i);
      if (index >= 0) goTo(index);
    });
    strip.append(button);
  });
}

function updatePosition() {
  const entry = state.stack[state.index];
  if (!entry) return;
  const total = state.stack.length;
  $("overlay-frame").textContent = `Frame ${state.index + 1}/${total}`;
  const instanceText = entry.instanceNumber != null ? `Instance #${entry.instanceNumber}` : "Instance";
  $("overlay-instance").textContent = entry.frames > 1 ? `${instanceText} · frame ${entry.frame}/${entry.frames}` : instanceText;
  const size = entry.columns && entry.rows ? `${entry.columns} × ${entry.rows}` : "";
  const spacing = state.meta ? number(state.meta, TAG.PixelSpacing, 0, null) : null;
  $("overlay-size").textContent = [size, spacing ? `${+spacing.toFixed(3)} mm/px` : ""].filter(Boolean).join(" · ");
  $("count").textContent = `${state.index + 1} / ${total}`;
  slider.value = String(state.index + 1);
  for (const button of $("strip").children) {
    const current = button.dataset.instance === String(entry.instanceIndex);
    if (current) button.setAttribute("aria-current", "true");
    else button.removeAttribute("aria-current");
  }
  const currentButton = $("strip").querySelector("[aria-current='true']");
  currentButton?.scrollIntoView({ block: "nearest", inline: "nearest" });
}

function updateWindowReadout() {
  const meta = state.meta;
  if (meta && !isGrayscale(meta)) {
    $("overlay-wl").textContent = "Colour image";
    $("overlay-preset").textContent = "";
    return;
  }
  const shown = state.window || (meta ? defaultWindow(meta) : null);
  $("overlay-wl").textContent = formatWindow(shown);
  $("overlay-preset").textContent = state.presetLabel;
  for (const button of $("presets").querySelectorAll("button")) {
    button.setAttribute("aria-pressed", String(button.dataset.label === state.presetLabel));
  }
}

function defaultWindow(meta) {
  const [first] = presetsFromMetadata(meta);
  return first ? { center: first.center, width: first.width } : null;
}

function renderPresets(meta) {
  const group = $("presets");
  for (const old of group.querySelectorAll("button[data-preset]")) old.remove();
  $("preset-default").dataset.label = "Default";
  const grayscale = isGrayscale(meta);
  $("preset-default").disabled = !grayscale;
  if (!grayscale) return;
  presetsFromMetadata(meta).forEach((preset, i) => {
    const button = el("button", "", preset.label);
    button.type = "button";
    button.dataset.preset = String(i);
    button.dataset.label = preset.label;
    button.title = `${formatWindow(preset)}${i < 9 ? ` (${i + 1})` : ""}`;
    button.addEventListener("click", () => applyPreset(i));
    group.append(button);
  });
}

// ---- navigation and rendering --------------------------------------------

let presetsFor = "";

async function goTo(index) {
  if (!state.stack.length) return;
  const clamped = Math.max(0, Math.min(state.stack.length - 1, index));
  if (clamped !== state.index) state.direction = clamped > state.index ? 1 : -1;
  state.index = clamped;
  state.failedKey = ""; // moving on is also a way to retry
  updatePosition();
  scheduleRender(0);
  const entry = state.stack[clamped];
  try {
    const meta = await metadataFor(entry.sop);
    if (state.stack[state.index].sop !== entry.sop) return;
    state.meta = meta;
    if (presetsFor !== entry.sop) {
      presetsFor = entry.sop;
      renderPresets(meta);
    }
    updatePosition();
    updateWindowReadout();
  } catch (error) {
    showError(error);
  }
}

function step(delta) {
  goTo(state.index + delta);
}

function viewportSize(entry) {
  const ratio = window.devicePixelRatio || 1;
  const bucket = (v) => Math.max(64, Math.ceil(v / 64) * 64);
  let w = bucket(stage.clientWidth * ratio);
  let h = bucket(stage.clientHeight * ratio);
  // The server does not enlarge; asking for more than the image only fragments the cache.
  if (entry.columns && entry.rows) {
    w = Math.min(w, entry.columns);
    h = Math.min(h, entry.rows);
  }
  return [w, h];
}

function requestFor(entry) {
  return {
    study: studyUid,
    series: seriesUid,
    sop: entry.sop,
    frame: entry.frame,
    window: windowParam(state.window),
    viewport: viewportSize(entry),
  };
}

/**
 * Show the current frame: at once from the cache, else fetched after `delay` ms.
 * A pending delayed request is not pushed back by further calls (a throttle, so a W/L
 * drag keeps updating), and only one request for the screen is in flight at a time;
 * when it lands, the newest wish is fetched next (latest wins).
 */
function scheduleRender(delay) {
  const entry = state.stack[state.index];
  if (!entry) return;
  const req = requestFor(entry);
  const hit = cache.peek(req);
  if (hit) {
    clearTimeout(state.timer);
    state.timer = 0;
    show(hit, renderedUrl(req), ++state.seq, state.index);
    prefetchNeighbours();
    return;
  }
  if (delay > 0 && state.timer) return;
  clearTimeout(state.timer);
  state.timer = setTimeout(() => { state.timer = 0; fetchCurrent(); }, delay);
}

async function fetchCurrent() {
  const entry = state.stack[state.index];
  if (!entry || state.inFlight) return;
  const index = state.index;
  const req = requestFor(entry);
  const key = renderedUrl(req);
  if (key === state.failedKey) return; // do not hammer the server with a request that failed
  const seq = ++state.seq;
  state.inFlight = { key, seq };
  // Requests for other frames are no longer wanted (W/L variants of this frame are kept).
  const framePath = `/instances/${encodeURIComponent(entry.sop)}/frames/${entry.frame}/`;
  cache.abortExcept((url) => url === key || url.includes(framePath));
  const busyTimer = setTimeout(() => { $("busy").hidden = false; }, 150);
  try {
    const objectUrl = await cache.load(req);
    const current = state.stack[state.index];
    // Stale answers are dropped: a different frame, or older than what is on screen.
    if (current && current.sop === entry.sop && current.frame === entry.frame && seq > state.shownSeq) {
      await show(objectUrl, key, seq, index);
    }
  } catch (error) {
    if (error.name !== "AbortError") {
      state.failedKey = key;
      if (!state.shownKey) setStageState("This image could not be displayed.");
      showError(error);
    }
  } finally {
    clearTimeout(busyTimer);
    $("busy").hidden = true;
    state.inFlight = null;
  }
  const now = state.stack[state.index];
  if (!now) return;
  const wanted = renderedUrl(requestFor(now));
  if (wanted !== state.shownKey && wanted !== state.failedKey) scheduleRender(0);
  else prefetchNeighbours();
}

async function show(objectUrl, key, seq, index) {
  if (seq < state.shownSeq) return;
  state.shownSeq = seq;
  const loader = new Image();
  loader.src = objectUrl;
  try {
    await loader.decode();
  } catch {
    /* decode() can reject for images that still display; set src anyway */
  }
  if (seq < state.shownSeq) return;
  cache.pin(objectUrl);
  frameImg.src = objectUrl;
  frameImg.hidden = false;
  state.shownKey = key;
  setStageState("");
  frameImg.dataset.frame = String(index + 1);
}

function prefetchNeighbours() {
  if (dragging) return;
  const reqs = [];
  const d = state.direction;
  for (const offset of [d, 2 * d, -d, 3 * d, 4 * d, -2 * d]) {
    const entry = state.stack[state.index + offset];
    if (entry) reqs.push(requestFor(entry));
  }
  cache.prefetch(reqs);
}

// ---- window / level ------------------------------------------------------

let dragging = false;

function setWindow(win, label) {
  state.window = win;
  state.presetLabel = label;
  updateWindowReadout();
}

function applyPreset(i) {
  if (!state.meta || !isGrayscale(state.meta)) return;
  const preset = presetsFromMetadata(state.meta)[i];
  if (!preset) return;
  setWindow({ center: preset.center, width: preset.width }, preset.label);
  scheduleRender(0);
}

function applyDefault() {
  setWindow(null, "Default");
  scheduleRender(0);
}

$("preset-default").dataset.label = "Default";
$("preset-default").addEventListener("click", applyDefault);

bindWindowDrag(stage, {
  enabled: () => Boolean(state.meta && isGrayscale(state.meta)),
  isLeftDragWindowing: () => state.leftDrag === "wl",
  getWindow: () => state.window || (state.meta ? initialWindow(state.meta) : null),
  unitsPerPixel: (start) => {
    // Relative to the window being adjusted, with a floor from the data range so a
    // very narrow window can still be opened up quickly.
    const { min, max } = state.meta ? modalityRange(state.meta) : { min: 0, max: 4095 };
    return Math.max(start.width / 256, (max - min) / 65536, 0.05);
  },
  onWindow: (win) => {
    dragging = true;
    setWindow(win, "Custom");
    scheduleRender(40);
  },
  onEnd: () => {
    dragging = false;
    scheduleRender(0);
  },
});

// Left-drag in scroll mode: 8 px per frame.
let scrollDrag = null;
stage.addEventListener("pointerdown", (event) => {
  if (event.button !== 0 || state.leftDrag !== "scroll") return;
  event.preventDefault();
  stage.setPointerCapture(event.pointerId);
  scrollDrag = { id: event.pointerId, y: event.clientY, index: state.index };
});
stage.addEventListener("pointermove", (event) => {
  if (!scrollDrag || event.pointerId !== scrollDrag.id) return;
  const target = scrollDrag.index + Math.round((event.clientY - scrollDrag.y) / 8);
  if (target !== state.index) goTo(target);
});
const endScroll = (event) => {
  if (scrollDrag && event.pointerId === scrollDrag.id) scrollDrag = null;
};
stage.addEventListener("pointerup", endScroll);
stage.addEventListener("pointercancel", endScroll);
stage.addEventListener("pointerdown", () => stage.focus({ preventScroll: true }));

function setLeftDrag(mode) {
  state.leftDrag = mode;
  $("mode-wl").setAttribute("aria-pressed", String(mode === "wl"));
  $("mode-scroll").setAttribute("aria-pressed", String(mode === "scroll"));
  stage.classList.toggle("mode-scroll", mode === "scroll");
}
$("mode-wl").addEventListener("click", () => setLeftDrag("wl"));
$("mode-scroll").addEventListener("click", () => setLeftDrag("scroll"));

// ---- input ---------------------------------------------------------------

bindWheelSteps(stage, (sign) => step(sign));
slider.addEventListener("input", () => goTo(parseInt(slider.value, 10) - 1));

function toggleHelp(force) {
  const help = $("help");
  help.hidden = typeof force === "boolean" ? !force : !help.hidden;
  $("help-toggle").setAttribute("aria-expanded", String(!help.hidden));
}
$("help-toggle").addEventListener("click", () => toggleHelp());

const keys = {
  ArrowDown: () => step(1),
  ArrowRight: () => step(1),
  ArrowUp: () => step(-1),
  ArrowLeft: () => step(-1),
  j: () => step(1),
  k: () => step(-1),
  PageDown: () => step(10),
  PageUp: () => step(-10),
  Home: () => goTo(0),
  End: () => goTo(state.stack.length - 1),
  "0": applyDefault,
  w: () => setLeftDrag("wl"),
  s: () => setLeftDrag("scroll"),
  b: () => { location.href = $("back").href; },
  "?": () => toggleHelp(),
  Escape: () => toggleHelp(false),
};
for (let i = 1; i <= 9; i++) keys[String(i)] = () => applyPreset(i - 1);
bindKeys(keys);

let resizeTimer = 0;
new ResizeObserver(() => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => scheduleRender(0), 150);
}).observe(stage);

start();
