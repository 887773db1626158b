// Orthopedic templating viewer: the radiograph as deep zoom (OpenSeadragon over the shared grayscale
// pyramid, windowed per request) with an SVG overlay in image pixels, calibration (ball auto-detection, manual circle, known line, DICOM source), measurements
// computed by the server (one place for the maths), implant templates drawn at true scale, and a
// plan saved server-side. DICOM-derived strings reach the DOM only through textContent.

import "/static/js/session.js"; // credentials, XSRF token, login on 401 (see static/js/session.js)
import { bindKeys } from "/static/js/keyboard.js";

const OSD = window.OpenSeadragon;
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const params = new URLSearchParams(window.location.search);
const API = "/orthopedics";

const TOOL_LABELS = {
  length: "Length", angle: "Angle", "line-angle": "Lines ∠", cobb: "Cobb", circle: "Circle",
  perpendicular: "⊥ dist", parallel: "∥ line", "cup-inclination": "Cup incl.", "femoral-offset": "Offset",
  "leg-length": "LLD", "leg-length-ischial": "LLD (ischial)", hka: "HKA", mldfa: "mLDFA", mpta: "MPTA",
};
/** The LLD tool's kinds, one per reference line; one LLD button, the reference chosen beside it. */
const LLD_KINDS = ["leg-length", "leg-length-ischial"];

const state = {
  study: params.get("study"),
  series: params.get("series"),
  sop: params.get("sop"),
  info: null,
  kinds: {},
  templateIndex: [],
  templateDocs: new Map(),
  calibration: null,
  measurements: [],
  templates: [],
  note: "",
  revision: 0,
  archived: [],
  reconstruction: [],
  tool: "pan",
  draft: [],
  selected: null,
  proposal: null,
  drag: null,
  view: { scale: 1, tx: 0, ty: 0 },
  window: "",
  viewer: null,
};

// ---- small helpers -------------------------------------------------------------------------------

function svgEl(tag, attrs = {}, parent = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (parent) parent.appendChild(node);
  return node;
}

function showError(error) {
  $("banner-text").textContent = error instanceof Error ? error.message : String(error);
  $("banner").hidden = false;
}

function prompt(text) {
  $("prompt").textContent = text || "";
}

async function api(path, { method = "GET", body, headers = {} } = {}) {
  const response = await fetch(`${API}/${path}`, {
    method,
    headers: { Accept: "application/json", ...(body !== undefined ? { "Content-Type": "application/json" } : {}), ...headers },
    body: body !== undefined ? JSON.stringify(body) : undefined,
  });
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try {
      const problem = await response.json();
      detail = problem.detail || problem.title || detail;
    } catch {
      // not a problem document
    }
    const error = new Error(detail);
    error.status = response.status;
    throw error;
  }
  return response.json();
}

const newId = () => Math.random().toString(36).slice(2, 12);
const fmt = (v, digits = 1) => Number(v).toFixed(digits);
const spacing = () => (state.calibration && state.calibration.calibrated ? state.calibration.mm_per_pixel : null);

// Image pixel coordinates (pixel centres at integers, as the server counts) <-> SVG user units.
const toSvg = (p) => [p[0] + 0.5, p[1] + 0.5];

function eventToImage(event) {
  const svg = $("overlay");
  const point = svg.createSVGPoint();
  point.x = event.clientX;
  point.y = event.clientY;
  const local = point.matrixTransform(svg.getScreenCTM().inverse());
  return [local.x - 0.5, local.y - 0.5];
}

// ---- view (zoom / pan) ---------------------------------------------------------------------------

/** Follow OpenSeadragon: the overlay (image pixels) gets the same translate and scale as the image. */
function applyView() {
  if (!state.viewer || !state.viewer.world.getItemCount()) return;
  const viewport = state.viewer.viewport;
  const origin = viewport.imageToViewerElementCoordinates(new OSD.Point(0, 0));
  const far = viewport.imageToViewerElementCoordinates(new OSD.Point(state.info.columns, 0));
  const scale = (far.x - origin.x) / state.info.columns;
  state.view = { scale, tx: origin.x, ty: origin.y };
  $("canvas").style.transform = `translate(${origin.x}px, ${origin.y}px) scale(${scale})`;
  $("zoom").textContent = `${Math.round(scale * 100)} %`;
  renderOverlay();
}

function fit() {
  if (!state.viewer) return;
  state.viewer.viewport.goHome(true);
  applyView();
}

function zoomAt(clientX, clientY, factor) {
  const stage = $("stage").getBoundingClientRect();
  const viewport = state.viewer.viewport;
  const at = viewport.pointFromPixel(new OSD.Point(clientX - stage.left, clientY - stage.top), true);
  viewport.zoomBy(factor, at, true);
  viewport.applyConstraints(true);
  applyView();
}

// ---- calibration ---------------------------------------------------------------------------------

function renderCalibration() {
  const c = state.calibration;
  const hud = $("calibration-hud");
  if (!c) return;
  if (c.calibrated) {
    const mm = c.mm_per_pixel;
    const same = Math.abs(mm.row - mm.column) < 1e-9;
    const value = same ? `${fmt(mm.column, 4)} mm/px` : `${fmt(mm.column, 4)} × ${fmt(mm.row, 4)} mm/px`;
    hud.textContent = `Calibration: ${c.source} · ${value} · ${c.plane} plane`;
    hud.classList.toggle("ortho-warn", c.plane === "detector");
  } else {
    hud.textContent = "No calibration · lengths in px";
    hud.classList.add("ortho-warn");
  }
  $("calibration-source").textContent = c.calibrated ? `${c.source} (${c.plane} plane)` : "none — lengths in pixels";
  const detail = [c.description];
  if (c.magnification) detail.push(`magnification ${fmt(c.magnification, 3)}`);
  $("calibration-detail").textContent = detail.join(" · ");
  const warnings = $("calibration-warnings");
  warnings.replaceChildren();
  for (const text of c.warnings || []) {
    const li = document.createElement("li");
    li.textContent = text;
    warnings.appendChild(li);
  }
  const select = $("dicom-source");
  select.replaceChildren();
  const current = document.createElement("option");
  current.value = "";
  current.textContent = c.source === "user" ? "my calibration" : "automatic (DICOM order)";
  select.appendChild(current);
  for (const candidate of c.candidates || []) {
    if (candidate.source === "user") continue;
    const option = document.createElement("option");
    option.value = candidate.source;
    option.textContent = `${candidate.source}: ${fmt(candidate.mm_per_pixel.column, 4)} mm/px`;
    select.appendChild(option);
  }
  const none = document.createElement("option");
  none.value = "none";
  none.textContent = "none (pixels)";
  select.appendChild(none);
  select.value = c.chosen_by_user ? c.source : "";
}

async function setCalibration(body) {
  try {
    state.calibration = await api(`images/${state.sop}/calibration`, { method: "PUT", body });
  } catch (error) {
    showError(error);
    return false;
  }
  renderCalibration();
  await remeasureAll();
  return true;
}

async function findBall(near = null) {
  prompt("Looking for the calibration ball…");
  const diameter = Number($("ball-diameter").value);
  try {
    const body = { diameter_mm: diameter > 0 ? diameter : 25 };
    if (near) body.near = near;
    const proposal = await api(`images/${state.sop}/marker`, { method: "POST", body });
    state.proposal = { centre: proposal.centre, radius: proposal.radius_px, detected: true };
    prompt("Proposed circle: drag its centre or edge to adjust, then Accept.");
  } catch (error) {
    if (near && error.status === 404) {
      state.proposal = { centre: near, radius: null, detected: false };
      prompt("No ball found here: click the ball's edge to set its radius.");
    } else {
      prompt("");
      showError(error);
    }
  }
  renderProposal();
}

function renderProposal() {
  const p = state.proposal;
  $("proposal").hidden = !p || !p.radius;
  if (p && p.radius) {
    $("proposal-text").textContent = `centre ${fmt(p.centre[0])}, ${fmt(p.centre[1])} · radius ${fmt(p.radius, 2)} px${p.detected ? " (detected)" : ""}`;
  }
  renderOverlay();
}

// ---- measurements --------------------------------------------------------------------------------

async function computeMeasurement(m) {
  try {
    const result = await api(`images/${state.sop}/measurements`, {
      method: "POST",
      body: { kind: m.kind, points: m.points, side: m.side || null },
    });
    m.result = result;
    m.error = null;
  } catch (error) {
    m.result = null;
    m.error = error.message;
  }
}

async function remeasureAll() {
  await Promise.all(state.measurements.map(computeMeasurement));
  renderMeasurements();
  renderOverlay();
}

function renderMeasurements() {
  const list = $("measurements");
  list.replaceChildren();
  for (const m of state.measurements) {
    const li = document.createElement("li");
    const name = document.createElement("strong");
    name.textContent = `${TOOL_LABELS[m.kind] || m.kind}: `;
    const text = document.createElement("span");
    text.className = "ortho-value";
    text.textContent = m.result ? m.result.summary : m.error || "…";
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "×";
    remove.title = "Remove";
    remove.addEventListener("click", () => {
      state.measurements = state.measurements.filter((x) => x !== m);
      markDirty();
      renderMeasurements();
      renderOverlay();
    });
    li.append(name, text, remove);
    list.appendChild(li);
  }
}

async function finishDraft() {
  const kind = state.tool;
  const points = state.draft;
  state.draft = [];
  const m = { id: newId(), kind, points, side: null, label: "" };
  state.measurements.push(m);
  markDirty();
  await computeMeasurement(m);
  renderMeasurements();
  renderOverlay();
  setPromptForTool();
}

// ---- templates -----------------------------------------------------------------------------------

async function templateDoc(id) {
  if (!state.templateDocs.has(id)) state.templateDocs.set(id, await api(`templates/${encodeURIComponent(id)}`));
  return state.templateDocs.get(id);
}

function sizeOf(doc, size) {
  return doc.sizes.find((s) => s.size === size);
}

/** Template mm -> image pixels: the same maths as modules/orthopedics/templates.py mm_to_pixels. */
function templatePoint(p, t, anchor, mm) {
  let x = p[0] - anchor[0];
  const y = p[1] - anchor[1];
  if (t.mirror) x = -x;
  const a = (t.rotation_deg * Math.PI) / 180;
  const rx = x * Math.cos(a) - y * Math.sin(a);
  const ry = x * Math.sin(a) + y * Math.cos(a);
  return [t.x + rx / mm.column, t.y + ry / mm.row];
}

async function placeTemplate(point) {
  const mm = spacing();
  if (!mm) {
    showError("Templates need a calibrated image: calibrate on the ball or a known length first.");
    return;
  }
  const id = $("template").value;
  const doc = await templateDoc(id);
  const mirror = $("template-mirror").checked;
  const rotation = doc.type === "acetabular-cup" ? (mirror ? -40 : 40) : 0;
  const t = { id: newId(), template_id: id, size: $("template-size").value, x: point[0], y: point[1], rotation_deg: rotation, mirror };
  state.templates.push(t);
  state.selected = t.id;
  markDirty();
  setTool("pan");
  renderTemplates();
  renderOverlay();
}

function selectedTemplate() {
  return state.templates.find((t) => t.id === state.selected) || null;
}

async function stepSize(steps) {
  const t = selectedTemplate();
  if (!t) return;
  const doc = await templateDoc(t.template_id);
  const names = doc.sizes.map((s) => s.size);
  const index = Math.min(Math.max(names.indexOf(t.size) + steps, 0), names.length - 1);
  t.size = names[index];
  markDirty();
  renderTemplates();
  renderOverlay();
}

function rotateSelected(degrees, absolute = false) {
  const t = selectedTemplate();
  if (!t) return;
  t.rotation_deg = absolute ? degrees : Math.round((t.rotation_deg + degrees) * 10) / 10;
  markDirty();
  renderTemplates();
  renderOverlay();
}

function renderTemplates() {
  const list = $("templates");
  list.replaceChildren();
  for (const t of state.templates) {
    const doc = state.templateDocs.get(t.template_id);
    const size = doc ? sizeOf(doc, t.size) : null;
    const li = document.createElement("li");
    li.textContent = `${doc ? doc.name : t.template_id} · ${size ? size.label : t.size} · ${t.mirror ? "L" : "R"} · ${fmt(t.rotation_deg)}°`;
    li.classList.toggle("ortho-current", t.id === state.selected);
    li.addEventListener("click", () => {
      state.selected = t.id;
      renderTemplates();
      renderOverlay();
    });
    list.appendChild(li);
  }
  const t = selectedTemplate();
  $("selected-template").hidden = !t;
  if (t) {
    const doc = state.templateDocs.get(t.template_id);
    const size = doc ? sizeOf(doc, t.size) : null;
    $("selected-name").textContent = `${doc ? doc.name : t.template_id} — ${size ? size.label : t.size}`;
    $("rotation").value = String(t.rotation_deg);
  }
  const recon = $("reconstruction");
  recon.replaceChildren();
  for (const r of state.reconstruction) {
    const p = document.createElement("p");
    p.textContent = `Planned (${r.side}): leg length ${r.leg_length_change.value >= 0 ? "+" : ""}${fmt(r.leg_length_change.value)} ${r.leg_length_change.unit}, offset ${r.offset_change.value >= 0 ? "+" : ""}${fmt(r.offset_change.value)} ${r.offset_change.unit} · reference: ${r.reference}`;
    recon.appendChild(p);
  }
}

async function fillTemplateSizes() {
  const doc = await templateDoc($("template").value);
  const select = $("template-size");
  select.replaceChildren();
  for (const s of doc.sizes) {
    const option = document.createElement("option");
    option.value = s.size;
    option.textContent = s.label;
    select.appendChild(option);
  }
  select.value = doc.sizes[Math.floor(doc.sizes.length / 2)].size;
}

// ---- overlay -------------------------------------------------------------------------------------

function renderOverlay() {
  const svg = $("overlay");
  if (!state.info) return;
  svg.replaceChildren();
  const px = 1 / state.view.scale; // one screen pixel in image units
  const labelSize = 13 * px;

  for (const m of state.measurements) {
    const g = svgEl("g", { class: "ortho-measure" }, svg);
    const pts = m.points.map(toSvg);
    const kind = state.kinds[m.kind];
    for (const [i, j] of kind ? kind.segments : []) {
      if (pts[i] && pts[j]) {
        svgEl("line", { x1: pts[i][0], y1: pts[i][1], x2: pts[j][0], y2: pts[j][1], "stroke-width": 2 * px, class: m.kind === "hka" && i === 0 && j === 2 ? "dashed" : "" }, g);
      }
    }
    if (m.kind === "circle" && m.result) {
      const q = Object.fromEntries(m.result.quantities.map((x) => [x.name, x.value]));
      const [cx, cy] = toSvg([q.centre_x, q.centre_y]);
      const r = Math.hypot(m.points[0][0] - q.centre_x, m.points[0][1] - q.centre_y);
      svgEl("circle", { cx, cy, r, "stroke-width": 2 * px, fill: "none" }, g);
      svgEl("circle", { cx, cy, r: 3 * px, class: "vertex" }, g);
    }
    if ((m.kind === "parallel" || m.kind === "perpendicular") && pts.length === 3) {
      const [a, b, q] = pts;
      if (m.kind === "parallel") {
        const hx = (b[0] - a[0]) / 2;
        const hy = (b[1] - a[1]) / 2;
        svgEl("line", { x1: q[0] - hx, y1: q[1] - hy, x2: q[0] + hx, y2: q[1] + hy, "stroke-width": 2 * px, class: "dashed" }, g);
      } else {
        const dx = b[0] - a[0];
        const dy = b[1] - a[1];
        const t = ((q[0] - a[0]) * dx + (q[1] - a[1]) * dy) / (dx * dx + dy * dy || 1);
        svgEl("line", { x1: q[0], y1: q[1], x2: a[0] + t * dx, y2: a[1] + t * dy, "stroke-width": 2 * px, class: "dashed" }, g);
      }
    }
    for (const p of pts) svgEl("circle", { cx: p[0], cy: p[1], r: 3 * px, class: "vertex" }, g);
    const last = pts[pts.length - 1];
    if (last) {
      const text = svgEl("text", { x: last[0] + 8 * px, y: last[1] + 4 * px, "font-size": labelSize }, g);
      text.textContent = m.result ? m.result.summary : m.error || "";
    }
  }

  const mm = spacing();
  for (const t of state.templates) {
    const doc = state.templateDocs.get(t.template_id);
    if (!doc || !mm) continue;
    const size = sizeOf(doc, t.size);
    const anchor = size.landmarks[doc.anchor];
    const g = svgEl("g", { class: `ortho-template${t.id === state.selected ? " selected" : ""}`, "data-template": t.id }, svg);
    for (const outline of size.outlines) {
      const points = outline.points.map((p) => toSvg(templatePoint(p, t, anchor, mm)).join(",")).join(" ");
      svgEl(outline.closed ? "polygon" : "polyline", { points, "stroke-width": 2 * px, class: outline.dashed ? "dashed" : "" }, g);
    }
    // A transparent hit area around the anchor makes the template easy to grab.
    const [ax, ay] = toSvg([t.x, t.y]);
    svgEl("circle", { cx: ax, cy: ay, r: 12 * px, class: "grab", "data-template": t.id, "data-handle": "move" }, g);
    if (t.id === state.selected) {
      const a = (t.rotation_deg * Math.PI) / 180;
      const reach = 60 * px;
      const hx = ax + reach * Math.sin(a);
      const hy = ay - reach * Math.cos(a);
      svgEl("line", { x1: ax, y1: ay, x2: hx, y2: hy, "stroke-width": px, class: "dashed" }, g);
      svgEl("circle", { cx: hx, cy: hy, r: 7 * px, class: "handle", "data-template": t.id, "data-handle": "rotate" }, g);
    }
  }

  const p = state.proposal;
  if (p) {
    const g = svgEl("g", { class: "ortho-proposal-shape" }, svg);
    const [cx, cy] = toSvg(p.centre);
    if (p.radius) {
      svgEl("circle", { cx, cy, r: p.radius, "stroke-width": 2 * px, fill: "none", class: "dashed" }, g);
      svgEl("circle", { cx: cx + p.radius, cy, r: 7 * px, class: "handle", "data-handle": "radius" }, g);
    }
    svgEl("circle", { cx, cy, r: 7 * px, class: "handle", "data-handle": "centre" }, g);
  }

  if (state.draft.length) {
    const g = svgEl("g", { class: "ortho-draft" }, svg);
    const pts = state.draft.map(toSvg);
    for (let i = 1; i < pts.length; i += 1) {
      svgEl("line", { x1: pts[i - 1][0], y1: pts[i - 1][1], x2: pts[i][0], y2: pts[i][1], "stroke-width": 2 * px }, g);
    }
    for (const q of pts) svgEl("circle", { cx: q[0], cy: q[1], r: 4 * px, class: "vertex" }, g);
  }
}

// ---- tools ---------------------------------------------------------------------------------------

function setPromptForTool() {
  const tool = state.tool;
  if (state.kinds[tool]) {
    const names = state.kinds[tool].points;
    prompt(`${TOOL_LABELS[tool] || tool}: click ${names[state.draft.length]} (${state.draft.length + 1}/${names.length})`);
  } else if (tool === "ball") {
    prompt("Click the calibration ball");
  } else if (tool === "calline") {
    prompt(state.draft.length ? "Click the other end" : "Click one end of the known length");
  } else if (tool === "place") {
    prompt("Click where the template's anchor goes");
  } else {
    prompt("");
  }
}

function setTool(tool) {
  state.tool = tool;
  state.draft = [];
  for (const button of document.querySelectorAll("[data-tool]")) {
    const lld = button.dataset.tool === "leg-length" && LLD_KINDS.includes(tool);
    button.classList.toggle("active", button.dataset.tool === tool || lld);
  }
  $("stage").dataset.tool = tool;
  setPromptForTool();
  renderOverlay();
}

async function clickTool(point) {
  const tool = state.tool;
  if (state.kinds[tool]) {
    state.draft.push(point);
    if (state.draft.length >= state.kinds[tool].count) await finishDraft();
    else setPromptForTool();
    renderOverlay();
  } else if (tool === "ball") {
    if (state.proposal && !state.proposal.radius) {
      state.proposal.radius = Math.hypot(point[0] - state.proposal.centre[0], point[1] - state.proposal.centre[1]);
      setTool("pan");
      prompt("Adjust the circle if needed, then Accept.");
      renderProposal();
    } else {
      await findBall(point);
      if (state.proposal && state.proposal.radius) setTool("pan");
    }
  } else if (tool === "calline") {
    state.draft.push(point);
    if (state.draft.length === 2) {
      state.lineDraft = state.draft;
      $("line-calibration").hidden = false;
      prompt("Enter the line's true length and Accept.");
    }
    renderOverlay();
  } else if (tool === "place") {
    await placeTemplate(point);
  }
}

function bindStage() {
  const stage = $("stage");
  // In pan mode OpenSeadragon zooms; with a drawing tool the overlay has the mouse and zooms here.
  $("overlay").addEventListener("wheel", (event) => {
    event.preventDefault();
    zoomAt(event.clientX, event.clientY, Math.exp(-event.deltaY * 0.0015));
  }, { passive: false });

  stage.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    const target = event.target;
    if (!$("overlay").contains(target)) return; // the image itself: OpenSeadragon pans it
    const handle = target.dataset ? target.dataset.handle : undefined;
    const point = eventToImage(event);
    stage.setPointerCapture(event.pointerId);
    if (handle === "move" || handle === "rotate") {
      state.selected = target.dataset.template;
      state.drag = { kind: handle, start: point };
      renderTemplates();
      renderOverlay();
      return;
    }
    if (handle === "centre" || handle === "radius") {
      state.drag = { kind: `proposal-${handle}` };
      return;
    }
    const templateGroup = target.closest ? target.closest("[data-template]") : null;
    if (templateGroup && state.tool === "pan") {
      state.selected = templateGroup.dataset.template;
      const t = selectedTemplate();
      state.drag = { kind: "move", offset: [point[0] - t.x, point[1] - t.y] };
      renderTemplates();
      renderOverlay();
      return;
    }
    if (state.tool === "pan") return;
    state.drag = null;
    clickTool(point);
  });

  stage.addEventListener("pointermove", (event) => {
    const drag = state.drag;
    if (!drag) return;
    const point = eventToImage(event);
    if (drag.kind === "move") {
      const t = selectedTemplate();
      const offset = drag.offset || [0, 0];
      t.x = point[0] - offset[0];
      t.y = point[1] - offset[1];
      markDirty();
      renderOverlay();
    } else if (drag.kind === "rotate") {
      const t = selectedTemplate();
      const mm = spacing();
      const dx = (point[0] - t.x) * mm.column;
      const dy = (point[1] - t.y) * mm.row;
      t.rotation_deg = Math.round(((Math.atan2(dx, -dy) * 180) / Math.PI) * 10) / 10;
      markDirty();
      renderTemplates();
      renderOverlay();
    } else if (drag.kind === "proposal-centre") {
      state.proposal.centre = point;
      state.proposal.detected = false;
      renderProposal();
    } else if (drag.kind === "proposal-radius") {
      state.proposal.radius = Math.max(1, Math.hypot(point[0] - state.proposal.centre[0], point[1] - state.proposal.centre[1]));
      state.proposal.detected = false;
      renderProposal();
    }
  });

  const end = () => {
    state.drag = null;
  };
  stage.addEventListener("pointerup", end);
  stage.addEventListener("pointercancel", end);
}

// ---- plan ----------------------------------------------------------------------------------------

let evaluateTimer = null;

function markDirty() {
  $("save-state").textContent = "Unsaved changes";
  clearTimeout(evaluateTimer);
  evaluateTimer = setTimeout(evaluateUnsaved, 200);
}

/** The planned offset / leg-length change of the plan as edited, recomputed by the server. */
async function evaluateUnsaved() {
  try {
    const result = await api(`images/${state.sop}/plan/evaluate`, { method: "POST", body: planBody() });
    state.reconstruction = result.plan.reconstruction || [];
    renderTemplates();
  } catch (error) {
    showError(error);
  }
}

function planBody() {
  return {
    measurements: state.measurements.map((m) => ({ id: m.id, kind: m.kind, points: m.points, side: m.side || null, label: m.label || "" })),
    templates: state.templates.map((t) => ({ id: t.id, template_id: t.template_id, size: t.size, x: t.x, y: t.y, rotation_deg: t.rotation_deg, mirror: t.mirror })),
    note: $("note").value,
  };
}

async function applyPlanDocument(doc) {
  const plan = doc.plan;
  state.revision = plan.revision;
  state.archived = doc.archived || [];
  state.reconstruction = plan.reconstruction || [];
  state.measurements = plan.measurements.map((m) => ({ id: m.id, kind: m.kind, points: m.points, side: m.side, label: m.label, result: m.result ? { ...m.result } : null, error: m.error || null }));
  state.templates = plan.templates.map((t) => ({ id: t.id, template_id: t.template_id, size: t.size, x: t.x, y: t.y, rotation_deg: t.rotation_deg, mirror: t.mirror }));
  await Promise.all(state.templates.map((t) => templateDoc(t.template_id)));
  $("note").value = plan.note || "";
  $("save-state").textContent = plan.revision ? `Saved revision ${plan.revision} (${plan.saved_at})` : "No saved plan yet";
  renderMeasurements();
  renderTemplates();
  renderOverlay();
}

async function savePlan() {
  try {
    const doc = await api(`images/${state.sop}/plan`, { method: "PUT", body: planBody(), headers: { "If-Match": String(state.revision) } });
    await applyPlanDocument(doc);
  } catch (error) {
    showError(error);
  }
}

async function archivePlan() {
  await savePlan();
  try {
    const result = await api(`images/${state.sop}/plan/archive`, { method: "POST" });
    $("save-state").textContent = `Archived revision ${result.revision}: SR ${result.sr.sop_instance_uid}`;
  } catch (error) {
    showError(error);
  }
}

// ---- start ---------------------------------------------------------------------------------------

function tileSource() {
  const i = state.info;
  const maxLevel = Math.ceil(Math.log2(Math.max(i.columns, i.rows)));
  const query = state.window ? `?window=${encodeURIComponent(state.window)}` : "";
  return {
    width: i.columns,
    height: i.rows,
    tileSize: i.deep_zoom.tile_size,
    tileOverlap: 0,
    minLevel: Math.max(0, maxLevel - 6),
    maxLevel,
    getTileUrl: (level, x, y) => `${i.deep_zoom.tiles}${level}/${x}_${y}.jpeg${query}`,
  };
}

/**
 * OpenSeadragon injects a <style> for touch focus outlines unless one marked
 * data-openseadragon-mobile-css exists; the CSP blocks inline styles and the rule is in
 * viewer.css. A marker outside the HTML namespace is never applied as CSS.
 */
function preventInlineStyle() {
  const marker = document.createElementNS("urn:tessera:marker", "style");
  marker.setAttribute("data-openseadragon-mobile-css", "true");
  document.head.append(marker);
}

function createViewer() {
  preventInlineStyle();
  const viewer = OSD({
    element: $("osd"),
    prefixUrl: "/vendor/openseadragon/images/",
    showNavigationControl: false,
    drawer: "canvas",
    keyboardNavEnabled: false,
    immediateRender: true,
    blendTime: 0,
    animationTime: 0.2,
    visibilityRatio: 0.1,
    minZoomImageRatio: 0.2,
    maxZoomPixelRatio: 16,
    preserveImageSizeOnResize: true,
    gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: false },
  });
  viewer.addHandler("viewport-change", applyView);
  viewer.addHandler("animation", applyView);
  viewer.addHandler("resize", applyView);
  viewer.addHandler("canvas-click", (event) => {
    if (event.quick && state.selected) {
      state.selected = null;
      renderTemplates();
      renderOverlay();
    }
  });
  viewer.world.addHandler("add-item", (event) => {
    event.item.addHandler("fully-loaded-change", (e) => {
      document.body.dataset.tiles = e.fullyLoaded ? "loaded" : "loading";
    });
  });
  return viewer;
}

/** Open (or re-window) the radiograph's deep-zoom tiles, keeping the current view. */
function loadImage() {
  if (!state.viewer) state.viewer = createViewer();
  const viewer = state.viewer;
  const keep = viewer.world.getItemCount() > 0 ? viewer.viewport.getBounds(true) : null;
  return new Promise((resolve, reject) => {
    viewer.addTiledImage({
      tileSource: tileSource(),
      index: 0,
      replace: viewer.world.getItemCount() > 0,
      success: () => {
        if (keep) viewer.viewport.fitBounds(keep, true);
        resolve();
      },
      error: (e) => reject(new Error(e.message || "the radiograph could not be opened")),
    });
  });
}

function bindControls() {
  $("banner-close").addEventListener("click", () => { $("banner").hidden = true; });
  for (const button of document.querySelectorAll("[data-tool]")) {
    button.addEventListener("click", () => setTool(state.tool === button.dataset.tool ? "pan" : button.dataset.tool));
  }
  $("fit").addEventListener("click", fit);
  $("window").addEventListener("change", async () => {
    state.window = $("window").value;
    try {
      await loadImage();
    } catch (error) {
      showError(error);
    }
  });
  $("find-ball").addEventListener("click", () => findBall(null));
  $("accept-ball").addEventListener("click", async () => {
    const p = state.proposal;
    const ok = await setCalibration({ method: "circle", centre: p.centre, radius_px: p.radius, diameter_mm: Number($("ball-diameter").value) });
    if (ok) {
      state.proposal = null;
      prompt("");
      renderProposal();
    }
  });
  $("discard-ball").addEventListener("click", () => { state.proposal = null; prompt(""); renderProposal(); });
  $("accept-line").addEventListener("click", async () => {
    const ok = await setCalibration({ method: "line", points: state.lineDraft, length_mm: Number($("line-length").value) });
    if (ok) {
      $("line-calibration").hidden = true;
      setTool("pan");
    }
  });
  $("discard-line").addEventListener("click", () => { $("line-calibration").hidden = true; setTool("pan"); });
  $("dicom-source").addEventListener("change", async () => {
    const value = $("dicom-source").value;
    if (value === "") {
      try {
        state.calibration = await api(`images/${state.sop}/calibration`, { method: "DELETE" });
        renderCalibration();
        await remeasureAll();
      } catch (error) {
        showError(error);
      }
    } else {
      await setCalibration({ method: "dicom", source: value });
    }
  });
  $("template").addEventListener("change", fillTemplateSizes);
  $("size-up").addEventListener("click", () => stepSize(1));
  $("size-down").addEventListener("click", () => stepSize(-1));
  $("rotate-left").addEventListener("click", () => rotateSelected(-1));
  $("rotate-right").addEventListener("click", () => rotateSelected(1));
  $("rotation").addEventListener("change", () => rotateSelected(Number($("rotation").value) || 0, true));
  $("remove-template").addEventListener("click", () => {
    state.templates = state.templates.filter((t) => t.id !== state.selected);
    state.selected = null;
    markDirty();
    renderTemplates();
    renderOverlay();
  });
  $("note").addEventListener("input", markDirty);
  $("save").addEventListener("click", savePlan);
  $("archive").addEventListener("click", archivePlan);
  bindKeys({
    Escape: () => { state.proposal = null; renderProposal(); setTool("pan"); },
    "+": () => stepSize(1),
    "=": () => stepSize(1),
    "-": () => stepSize(-1),
    "[": () => rotateSelected(-1),
    "]": () => rotateSelected(1),
    "0": fit,
    Delete: () => $("remove-template").click(),
  });
}

/** The template choice, grouped by where each design came from (template files, or DICOM Generic
 * Implant Templates imported from the archive), and the archive templates that could not be read. */
function fillTemplateChoices(listing) {
  const select = $("template");
  const groups = new Map();
  for (const t of listing.templates) {
    const source = t.source || "JSON";
    if (!groups.has(source)) {
      const group = document.createElement("optgroup");
      group.label = source === "DICOM GIT" ? "DICOM GIT (archive)" : "Template library";
      groups.set(source, group);
      select.appendChild(group);
    }
    const option = document.createElement("option");
    option.value = t.id;
    option.dataset.source = source;
    option.textContent = source === "DICOM GIT" ? `${t.name} (${t.manufacturer}) · DICOM GIT` : `${t.name} (${t.manufacturer})`;
    groups.get(source).appendChild(option);
  }
  const problems = $("template-problems");
  problems.replaceChildren();
  for (const p of listing.problems || []) {
    const item = document.createElement("li");
    item.textContent = `Template not imported (${p.sop_instance_uid || p.template_id}): ${p.message}`;
    problems.appendChild(item);
  }
}

/** The LLD measurement kind for the reference line chosen in the toolbar (only kinds the server offers). */
function lldKind() {
  const chosen = $("lld-reference").value;
  return state.kinds && state.kinds[chosen] ? chosen : "leg-length";
}

async function start() {
  bindControls();
  bindStage();
  try {
    if (!state.sop) {
      if (!state.study || !state.series) throw new Error("open this viewer with ?study=…&series=… (or &sop=…)");
      const listing = await api(`studies/${encodeURIComponent(state.study)}/series/${encodeURIComponent(state.series)}/images`);
      state.sop = listing.images[0].sop_instance_uid;
    }
    const [info, kinds, templates] = await Promise.all([
      api(`images/${encodeURIComponent(state.sop)}`),
      api("measurement-kinds"),
      api("templates"),
    ]);
    state.info = info;
    state.kinds = kinds;
    state.calibration = info.calibration;
    state.templateIndex = templates.templates;
    $("title").textContent = [info.patient_name, info.patient_id, info.study_description, info.series_description].filter(Boolean).join(" · ");
    const overlay = $("overlay");
    overlay.setAttribute("viewBox", `0 0 ${info.columns} ${info.rows}`);
    overlay.setAttribute("width", String(info.columns));
    overlay.setAttribute("height", String(info.rows));
    const tools = $("tools");
    for (const kind of Object.keys(kinds)) {
      if (LLD_KINDS.includes(kind) && kind !== "leg-length") continue; // reached through the LLD button
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.tool = kind;
      button.textContent = TOOL_LABELS[kind] || kind;
      button.title = `${kind}: ${kinds[kind].points.join(", ")}`;
      if (kind === "leg-length") {
        button.title = "Leg-length discrepancy against the reference line chosen under “LLD reference”";
        button.addEventListener("click", () => setTool(LLD_KINDS.includes(state.tool) ? "pan" : lldKind()));
      } else {
        button.addEventListener("click", () => setTool(state.tool === kind ? "pan" : kind));
      }
      tools.appendChild(button);
    }
    // Changing the reference while drawing an LLD starts it again on the new line's landmarks.
    $("lld-reference").addEventListener("change", () => {
      if (LLD_KINDS.includes(state.tool)) setTool(lldKind());
    });
    fillTemplateChoices(templates);
    await fillTemplateSizes();
    $("report").href = `${API}/images/${encodeURIComponent(state.sop)}/plan/report.pdf`;
    renderCalibration();
    if (!OSD) throw new Error("OpenSeadragon is not installed on the server (run the setup command)");
    await loadImage();
    fit();
    await applyPlanDocument(await api(`images/${encodeURIComponent(state.sop)}/plan`));
    document.body.dataset.ready = "true";
  } catch (error) {
    showError(error);
  }
}

start();
