// Mammography viewer: the hanging from GET /mammography/studies/{uid}/hanging drawn as a grid
// of OpenSeadragon viewports over the grayscale pyramid tiles. Zoom and pan are linked at the
// same physical scale (mm, from each image's calibration) with chest walls kept together;
// window/level is one per hanging and re-renders tiles server-side; tomosynthesis slices and
// slabs come from the slab route and are drawn on a canvas in step with the viewport.
// Every DICOM-derived string reaches the DOM through textContent.

import "/static/js/session.js"; // credentials, XSRF token, login on 401 (see static/js/session.js)
import { bindKeys, bindWheelSteps } from "/static/js/keyboard.js";
import { distanceMm, areaMm2, formatMeasurement, calibrationNote } from "./measure.js";

const OSD = window.OpenSeadragon;
const BASE = "/mammography";
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(window.location.search);

const state = {
  study: params.get("study"),
  prior: params.get("prior"),
  hanging: null,
  stage: Math.max(0, Number(params.get("stage") || 1) - 1),
  tool: "pan",
  window: null, // null: each file's own VOI
  linked: true,
  tomo: false,
  slab: { thickness: 1, mode: "mip" },
  viewports: [],
  active: null,
  measurements: [],
  infos: new Map(),
  cad: null, // marks of the study's CAD SR, when shown
  cine: null,
  syncing: false,
};

// Readiness for tests and the benchmark: how many viewports are fully drawn.
const progress = (window.__mammo = { stage: 0, expected: 0, drawn: 0, startedAt: performance.now(), drawnAt: null, slicesShown: 0 });

function showError(message) {
  $("error-message").textContent = message;
  $("error").hidden = false;
}

async function fetchJson(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  if (!response.ok) {
    let detail = `${response.status} ${response.statusText}`;
    try {
      detail = (await response.json()).detail || detail;
    } catch {
      // not a problem document
    }
    throw new Error(detail);
  }
  return response.json();
}

function info(sop, frame = 0) {
  const key = `${sop}/${frame}`;
  if (!state.infos.has(key)) state.infos.set(key, fetchJson(`${BASE}/images/${encodeURIComponent(sop)}/info?frame=${frame}`));
  return state.infos.get(key);
}

function windowQuery() {
  const w = state.window;
  return w ? `window=${encodeURIComponent(`${w.center},${w.width},${w.function}`)}` : "";
}

// The DZI level OpenSeadragon draws for an image shown `scale` screen px per image px: the
// coarsest whose pixels still cover at least minPixelRatio (0.5) screen px.
function drawnLevel(maxLevel, scale) {
  return scale >= 0.5 ? maxLevel : maxLevel - Math.ceil(Math.log2(0.5 / scale) - 1e-9);
}

// `fitPx` (the viewport's size, when known) sets the lowest level to the one the image fitted into
// it is drawn at: OpenSeadragon would otherwise first fetch a coarser single-tile level as a
// placeholder, one more request per image before the hanging is fully drawn. Zoomed out further,
// that level is still drawn (sharper than needed, never blurrier).
function tileSource(meta, frame, fitPx = null) {
  const maxLevel = Math.ceil(Math.log2(Math.max(meta.width, meta.height)));
  const sop = encodeURIComponent(meta.SOPInstanceUID);
  let minLevel = Math.max(0, maxLevel - 5);
  if (fitPx && fitPx.x > 0 && fitPx.y > 0) {
    const scale = Math.min(fitPx.x / meta.width, fitPx.y / meta.height);
    minLevel = Math.min(maxLevel, Math.max(minLevel, drawnLevel(maxLevel, scale)));
  }
  return {
    width: meta.width,
    height: meta.height,
    tileSize: meta.tile_size,
    tileOverlap: 0,
    minLevel,
    maxLevel,
    getTileUrl: (level, x, y) => {
      const query = windowQuery();
      return `${BASE}/images/${sop}/frames/${frame}_files/${level}/${x}_${y}.jpeg${query ? `?${query}` : ""}`;
    },
  };
}

// ---- one viewport --------------------------------------------------------------------------

class Viewport {
  constructor(spec, grid) {
    this.spec = spec;
    this.image = spec.image;
    this.stack = spec.tomosynthesis || (spec.image && spec.image.kind === "tomosynthesis" ? spec.image : null);
    this.meta = null; // info of what OSD shows (the 2D image, or the stack in tomo mode)
    this.mode = "2d";
    this.slice = 0;
    this.slices = new Map(); // url -> ImageBitmap
    this.drawn = false;
    this.el = document.createElement("div");
    this.el.className = "mammo-viewport";
    this.el.dataset.viewport = spec.id;
    this.el.dataset.chestWall = spec.chest_wall;
    this.el.dataset.mirrored = String(spec.mirrored);
    this.el.style.gridRow = String(spec.row + 1);
    this.el.style.gridColumn = String(spec.column + 1);
    grid.append(this.el);
    const side = spec.chest_wall === "right" ? "left" : "right"; // labels sit on the nipple side
    this.label = this.addBox("div", `mammo-label ${side}`);
    const name = document.createElement("span");
    name.textContent = spec.image ? spec.image.label : `${spec.laterality}${spec.view}`;
    this.label.append(name);
    if (spec.is_prior) {
      const prior = document.createElement("span");
      prior.className = "prior";
      const exam = state.hanging.priors[spec.prior_index || 0];
      prior.textContent = `PRIOR ${exam ? formatDate(exam.StudyDate) : ""}`;
      this.label.append(prior);
    }
    if (!spec.image) {
      const empty = this.addBox("div", "mammo-empty");
      empty.textContent = spec.empty || "no image";
      return;
    }
    const notices = spec.image.notices || [];
    if (notices.length) this.addBox("div", `mammo-notice ${side}`).textContent = notices.join("; ");
    this.calibration = this.addBox("div", `mammo-calibration ${side}`);
    this.sliceLabel = this.addBox("div", `mammo-slice-label ${side}`);
    this.sliceLabel.hidden = true;
    this.osdEl = document.createElement("div");
    this.osdEl.className = "mammo-osd";
    this.el.prepend(this.osdEl);
    this.canvas = document.createElement("canvas");
    this.canvas.className = "mammo-slice";
    this.canvas.hidden = true;
    this.osdEl.after(this.canvas);
    this.svg = document.createElementNS(SVG, "svg");
    this.svg.setAttribute("class", "mammo-overlay");
    this.canvas.after(this.svg);
    this.el.addEventListener("pointerdown", () => setActive(this));
  }

  addBox(tag, className) {
    const box = document.createElement(tag);
    box.className = className;
    this.el.append(box);
    return box;
  }

  fitPx() {
    return { x: this.osdEl.clientWidth, y: this.osdEl.clientHeight };
  }

  get flipped() {
    return Boolean(this.meta) && this.meta.chest_wall !== "" && this.meta.chest_wall !== this.spec.chest_wall;
  }

  async open(target = this.image, frame = null) {
    this.meta = await info(target.SOPInstanceUID, 0);
    this.frame = frame ?? (this.meta.frames > 1 ? Math.floor(this.meta.frames / 2) : 0);
    this.calibration.textContent = calibrationNote(this.meta.calibration);
    this.drawn = false;
    if (!this.viewer) {
      this.viewer = OSD({
        element: this.osdEl,
        prefixUrl: "/vendor/openseadragon/images/",
        showNavigationControl: false,
        drawer: "canvas",
        keyboardNavEnabled: false,
        immediateRender: true,
        blendTime: 0,
        animationTime: 0.25,
        visibilityRatio: 0.1,
        minZoomImageRatio: 0.2,
        maxZoomPixelRatio: 8,
        preserveImageSizeOnResize: true,
        gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: false },
      });
      this.viewer.world.addHandler("add-item", (event) => {
        event.item.addHandler("fully-loaded-change", (e) => {
          if (e.fullyLoaded && !this.drawn) {
            this.drawn = true;
            noteDrawn();
          }
        });
      });
      this.viewer.addHandler("viewport-change", () => {
        this.redraw();
        if (state.linked && !state.syncing) syncFrom(this);
      });
      this.installTools();
    }
    await new Promise((resolve, reject) => {
      this.viewer.addTiledImage({
        tileSource: tileSource(this.meta, this.frame, this.fitPx()),
        index: 0,
        replace: this.viewer.world.getItemCount() > 0,
        success: resolve,
        error: (e) => reject(new Error(e.message || "the image could not be opened")),
      });
    });
    this.viewer.viewport.setFlip(this.flipped);
    this.el.dataset.flipped = String(this.flipped);
    this.el.dataset.sop = this.meta.SOPInstanceUID;
  }

  reloadTiles() {
    if (!this.viewer || !this.meta) return;
    this.drawn = false;
    const keep = this.physical(); // replacing the item re-homes OpenSeadragon's viewport: put it back
    this.viewer.addTiledImage({
      tileSource: tileSource(this.meta, this.frame, this.fitPx()),
      index: 0,
      replace: true,
      success: () => {
        const syncing = state.syncing;
        state.syncing = true;
        this.applyPhysical(keep);
        state.syncing = syncing;
      },
    });
    if (this.mode === "tomo") this.showSlice();
  }

  // Image pixel <-> element pixel, mirrored when the viewport shows the image flipped.
  toElement(x, y) {
    const p = this.viewer.viewport.imageToViewerElementCoordinates(new OSD.Point(x, y));
    if (this.flipped && !this.osdFlipsPixels) p.x = this.viewer.viewport.getContainerSize().x - p.x;
    return p;
  }

  toImage(ex, ey) {
    const size = this.viewer.viewport.getContainerSize();
    const x = this.flipped && !this.osdFlipsPixels ? size.x - ex : ex;
    return this.viewer.viewport.viewerElementToImageCoordinates(new OSD.Point(x, ey));
  }

  mmPerPixel() {
    const c = this.meta && this.meta.calibration;
    return c && c.mm_per_pixel ? c.mm_per_pixel.column : null;
  }

  // Physical state: screen px per mm and the view centre as (depth from chest wall, height) in mm.
  physical() {
    const vp = this.viewer.viewport;
    const mm = this.mmPerPixel() || 1;
    const zoom = vp.viewportToImageZoom(vp.getZoom(true));
    const centre = vp.viewportToImageCoordinates(vp.getCenter(true));
    const displayedX = this.flipped ? this.meta.width - centre.x : centre.x;
    const depth = this.spec.chest_wall === "right" ? this.meta.width - displayedX : displayedX;
    return { pxPerMm: zoom / mm, depthMm: depth * mm, heightMm: centre.y * mm };
  }

  applyPhysical({ pxPerMm, depthMm, heightMm }) {
    const vp = this.viewer.viewport;
    const mm = this.mmPerPixel() || 1;
    const depth = depthMm / mm;
    const displayedX = this.spec.chest_wall === "right" ? this.meta.width - depth : depth;
    const x = this.flipped ? this.meta.width - displayedX : displayedX;
    vp.zoomTo(vp.imageToViewportZoom(pxPerMm * mm), null, true);
    vp.panTo(vp.imageToViewportCoordinates(new OSD.Point(x, heightMm / mm)), true);
  }

  fitScale() {
    const size = this.viewer.viewport.getContainerSize();
    const mm = this.mmPerPixel() || 1;
    return Math.min(size.x / this.meta.width, size.y / this.meta.height) / mm;
  }

  // Fit at a given scale, chest wall against the viewport edge it faces, vertically centred.
  home(pxPerMm) {
    const size = this.viewer.viewport.getContainerSize();
    const mm = this.mmPerPixel() || 1;
    const halfWidthMm = size.x / 2 / pxPerMm;
    this.applyPhysical({ pxPerMm, depthMm: halfWidthMm, heightMm: (this.meta.height * mm) / 2 });
  }

  // ---- tomosynthesis ----
  async enterTomo() {
    if (!this.stack || !this.viewer) return;
    const keep = this.physical();
    await this.open(this.stack);
    this.mode = "tomo";
    this.slice = this.frame;
    this.canvas.hidden = false;
    this.sliceLabel.hidden = false;
    this.applyPhysical(keep);
    if (!this.wheelBound) {
      this.wheelBound = true;
      bindWheelSteps(this.el, (step) => {
        if (this.mode === "tomo") scrollSlices(this, step);
      });
    }
    this.viewer.gestureSettingsMouse.scrollToZoom = false;
    await this.showSlice();
  }

  async leaveTomo() {
    if (this.mode !== "tomo") return;
    const keep = this.physical();
    this.mode = "2d";
    this.canvas.hidden = true;
    this.sliceLabel.hidden = true;
    this.viewer.gestureSettingsMouse.scrollToZoom = true;
    await this.open(this.image);
    this.applyPhysical(keep);
  }

  sliceUrl(index) {
    const q = new URLSearchParams({ center: String(index), thickness: String(state.slab.thickness), mode: state.slab.mode, size: "1024" });
    if (state.window) q.set("window", `${state.window.center},${state.window.width},${state.window.function}`);
    return `${BASE}/images/${encodeURIComponent(this.meta.SOPInstanceUID)}/slab?${q}`;
  }

  async bitmap(index) {
    const url = this.sliceUrl(index);
    if (!this.slices.has(url)) {
      this.slices.set(
        url,
        fetch(url)
          .then((r) => {
            if (!r.ok) throw new Error(`slice ${index + 1}: ${r.status}`);
            return r.blob();
          })
          .then((blob) => createImageBitmap(blob)),
      );
    }
    return this.slices.get(url);
  }

  prefetch() {
    for (let i = 0; i < this.meta.frames; i += 1) this.bitmap(i).catch(() => {});
  }

  async showSlice() {
    const index = this.slice;
    const label = state.slab.thickness > 1 ? ` · slab ${state.slab.thickness} ${state.slab.mode.toUpperCase()}` : "";
    this.sliceLabel.textContent = `Slice ${index + 1} / ${this.meta.frames}${label}`;
    const bitmap = await this.bitmap(index);
    if (index !== this.slice || this.mode !== "tomo") return;
    this.currentBitmap = bitmap;
    this.paintSlice();
    progress.slicesShown += 1;
  }

  paintSlice() {
    if (!this.currentBitmap || this.mode !== "tomo") return;
    const size = this.viewer.viewport.getContainerSize();
    if (this.canvas.width !== size.x || this.canvas.height !== size.y) {
      this.canvas.width = size.x;
      this.canvas.height = size.y;
    }
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, size.x, size.y);
    const a = this.toElement(0, 0);
    const b = this.toElement(this.meta.width, this.meta.height);
    ctx.drawImage(this.currentBitmap, Math.min(a.x, b.x), a.y, Math.abs(b.x - a.x), b.y - a.y);
    if (a.x > b.x) {
      // flipped: draw mirrored
      ctx.fillRect(0, 0, size.x, size.y);
      ctx.save();
      ctx.translate(a.x, 0);
      ctx.scale(-1, 1);
      ctx.drawImage(this.currentBitmap, 0, a.y, a.x - b.x, b.y - a.y);
      ctx.restore();
    }
  }

  // ---- measurements and the magnifier ----
  installTools() {
    let draft = null;
    const point = (event) => {
      const rect = this.el.getBoundingClientRect();
      return this.toImage(event.clientX - rect.left, event.clientY - rect.top);
    };
    this.el.addEventListener("pointerdown", (event) => {
      if (state.tool === "length") {
        const p = point(event);
        draft = { sop: this.meta.SOPInstanceUID, kind: "distance", points: [[p.x, p.y], [p.x, p.y]], viewport: this };
        state.draft = draft;
      } else if (state.tool === "area") {
        const p = point(event);
        if (!draft || draft.kind !== "area") {
          draft = { sop: this.meta.SOPInstanceUID, kind: "area", points: [], viewport: this };
          state.draft = draft;
        }
        draft.points.push([p.x, p.y]);
      } else if (state.tool === "wl") {
        startWindowDrag(event);
      }
      this.redraw();
    });
    this.el.addEventListener("pointermove", (event) => {
      if (state.tool === "loupe") showLoupe(this, event);
      if (draft && draft.kind === "distance" && event.buttons) {
        const p = point(event);
        draft.points[1] = [p.x, p.y];
        this.redraw();
      }
    });
    this.el.addEventListener("pointerup", () => {
      if (draft && draft.kind === "distance") {
        finishMeasurement(draft);
        draft = null;
      }
    });
    this.el.addEventListener("dblclick", () => {
      if (draft && draft.kind === "area" && draft.points.length >= 3) {
        finishMeasurement(draft);
        draft = null;
      }
    });
    this.el.addEventListener("pointerleave", () => hideLoupe());
  }

  redraw() {
    if (!this.svg || !this.viewer) return;
    if (this.mode === "tomo") this.paintSlice();
    this.svg.replaceChildren();
    for (const mark of state.cad || []) {
      if (mark.SOPInstanceUID !== this.meta?.SOPInstanceUID) continue;
      if (this.mode === "tomo" && mark.frame !== this.slice) continue;
      const pts = mark.points.map(([x, y]) => this.toElement(x, y));
      if (mark.graphic_type === "POINT") {
        const circle = document.createElementNS(SVG, "circle");
        circle.setAttribute("cx", pts[0].x);
        circle.setAttribute("cy", pts[0].y);
        circle.setAttribute("r", "4");
        circle.setAttribute("class", "cad");
        this.svg.append(circle);
      } else {
        const line = document.createElementNS(SVG, "polyline");
        line.setAttribute("points", pts.map((p) => `${p.x},${p.y}`).join(" "));
        line.setAttribute("class", "cad");
        this.svg.append(line);
        const text = document.createElementNS(SVG, "text");
        text.setAttribute("x", Math.max(...pts.map((p) => p.x)) + 4);
        text.setAttribute("y", Math.min(...pts.map((p) => p.y)));
        text.setAttribute("class", "cad");
        text.textContent = `CAD ${mark.finding}${mark.certainty !== null ? ` ${mark.certainty}%` : ""}`;
        this.svg.append(text);
      }
    }
    const mine = state.measurements.filter((m) => m.sop === this.meta?.SOPInstanceUID);
    if (state.draft && state.draft.viewport === this) mine.push(state.draft);
    for (const m of mine) {
      const pts = m.points.map(([x, y]) => this.toElement(x, y));
      const shape = document.createElementNS(SVG, m.kind === "distance" ? "line" : "polygon");
      if (m.kind === "distance") {
        shape.setAttribute("x1", pts[0].x);
        shape.setAttribute("y1", pts[0].y);
        shape.setAttribute("x2", pts[1].x);
        shape.setAttribute("y2", pts[1].y);
      } else {
        shape.setAttribute("points", pts.map((p) => `${p.x},${p.y}`).join(" "));
      }
      this.svg.append(shape);
      if (m.text) {
        const text = document.createElementNS(SVG, "text");
        const last = pts[pts.length - 1];
        text.setAttribute("x", last.x + 6);
        text.setAttribute("y", last.y - 6);
        text.textContent = m.text;
        this.svg.append(text);
      }
    }
  }

  destroy() {
    if (this.viewer) this.viewer.destroy();
    this.el.remove();
  }
}

// ---- hanging --------------------------------------------------------------------------------

function formatDate(da) {
  return da && da.length === 8 ? `${da.slice(0, 4)}-${da.slice(4, 6)}-${da.slice(6, 8)}` : da || "";
}

function noteDrawn() {
  progress.drawn = state.viewports.filter((v) => v.drawn).length;
  if (progress.drawn >= progress.expected && progress.drawnAt === null) {
    progress.drawnAt = performance.now();
    document.body.dataset.drawn = "true";
  }
}

function setActive(viewport) {
  if (state.active) state.active.el.classList.remove("active");
  state.active = viewport;
  viewport.el.classList.add("active");
}

async function showStage(index) {
  const stages = state.hanging.stages;
  index = Math.min(Math.max(index, 0), stages.length - 1);
  state.stage = index;
  stopCine();
  for (const v of state.viewports) v.destroy();
  const stage = stages[index];
  const grid = $("grid");
  grid.style.gridTemplateColumns = `repeat(${stage.columns}, minmax(0, 1fr))`;
  grid.style.gridTemplateRows = `repeat(${stage.rows}, minmax(0, 1fr))`;
  state.viewports = stage.viewports.map((spec) => new Viewport(spec, grid));
  const withImages = state.viewports.filter((v) => v.image);
  Object.assign(progress, { stage: index, expected: withImages.length, drawn: 0, startedAt: performance.now(), drawnAt: null });
  delete document.body.dataset.drawn;
  document.body.dataset.stage = String(index + 1);
  for (const [i, button] of [...$("stages").children].entries()) button.setAttribute("aria-pressed", String(i === index));
  const url = new URL(window.location.href);
  url.searchParams.set("stage", String(index + 1));
  window.history.replaceState(null, "", url);
  try {
    await Promise.all(withImages.map((v) => v.open()));
  } catch (error) {
    showError(error.message);
  }
  fitAll();
  if (state.tomo) await Promise.all(withImages.map((v) => v.enterTomo()));
  if (withImages.length) setActive(withImages[0]);
  if (!withImages.length) document.body.dataset.drawn = "true";
  renderPresets();
}

// An image the protocol did not place (extra, unknown or odd views) shown in the selected viewport.
async function showInActive(image) {
  const target = state.active || state.viewports.find((v) => v.viewer);
  if (!target || !target.viewer) return showError("select a viewport that shows an image first");
  if (target.mode === "tomo") await target.leaveTomo();
  target.image = image;
  target.stack = image.kind === "tomosynthesis" ? image : null;
  target.label.firstChild.textContent = `${image.label} ${image.kind}`;
  await target.open(image);
  fitAll();
  return undefined;
}

function fitAll() {
  const open = state.viewports.filter((v) => v.viewer && v.meta);
  if (!open.length) return;
  const scale = Math.min(...open.map((v) => v.fitScale()));
  state.syncing = true;
  for (const v of open) v.home(scale);
  state.syncing = false;
}

function syncFrom(source) {
  const physical = source.physical();
  state.syncing = true;
  for (const v of state.viewports) {
    if (v !== source && v.viewer && v.meta) v.applyPhysical(physical);
  }
  state.syncing = false;
}

// ---- window / level -------------------------------------------------------------------------

function renderPresets() {
  const box = $("presets");
  box.replaceChildren();
  const first = state.viewports.find((v) => v.meta);
  const presets = first ? first.meta.presets : [];
  const add = (name, win, key) => {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = name;
    button.title = key ? `${name} (${key})` : name;
    const same = (a, b) => (a === null ? b === null : b !== null && a.center === b.center && a.width === b.width);
    button.setAttribute("aria-pressed", String(same(state.window, win)));
    button.addEventListener("click", () => setWindow(win));
    box.append(button);
  };
  add("Default", null, "0");
  presets.forEach((p, i) => add(p.name, { center: p.center, width: p.width, function: p.function }, String(i + 5)));
}

let windowTimer = null;
function setWindow(win, { immediate = true } = {}) {
  state.window = win;
  clearTimeout(windowTimer);
  const apply = () => {
    for (const v of state.viewports) {
      v.slices.clear();
      v.reloadTiles();
    }
    renderPresets();
  };
  if (immediate) apply();
  else windowTimer = setTimeout(apply, 150);
}

function startWindowDrag(event) {
  const first = state.viewports.find((v) => v.meta);
  if (!first) return;
  const base = state.window || first.meta.default_window || { center: 2048, width: 4096, function: "linear" };
  const start = { x: event.clientX, y: event.clientY };
  const unitsPerPixel = Math.max(1, (2 ** (first.meta.bits_stored || 12)) / 1000);
  const move = (e) => {
    const width = Math.max(1, base.width + (e.clientX - start.x) * unitsPerPixel);
    const center = base.center + (e.clientY - start.y) * unitsPerPixel;
    setWindow({ center: Math.round(center), width: Math.round(width), function: base.function }, { immediate: false });
  };
  const up = () => {
    window.removeEventListener("pointermove", move);
    window.removeEventListener("pointerup", up);
  };
  window.addEventListener("pointermove", move);
  window.addEventListener("pointerup", up);
}

// ---- measurements ---------------------------------------------------------------------------

function finishMeasurement(draft) {
  const v = draft.viewport;
  const calibration = v.meta.calibration;
  const result = draft.kind === "distance" ? distanceMm(draft.points[0], draft.points[1], calibration) : areaMm2(draft.points, calibration);
  state.draft = null;
  if (draft.kind === "distance" && result.pixels < 2) {
    v.redraw();
    return;
  }
  const m = { sop: draft.sop, kind: draft.kind, points: draft.points, label: v.spec.image.label, result, text: formatMeasurement(result) };
  state.measurements.push(m);
  // Offered to the report form, where a mark can be attached to a finding.
  const key = `tessera.mammo.marks.${state.study}`;
  const marks = JSON.parse(sessionStorage.getItem(key) || "[]");
  marks.push({ sop: m.sop, frame: v.mode === "tomo" ? v.slice : 0, points: m.points.map(([x, y]) => [Math.round(x * 10) / 10, Math.round(y * 10) / 10]), label: m.label, text: m.text });
  sessionStorage.setItem(key, JSON.stringify(marks));
  const item = document.createElement("li");
  item.textContent = `${m.label}: ${m.text} — ${calibrationNote(calibration)}`;
  $("measurements").append(item);
  for (const other of state.viewports) other.redraw();
}

// ---- magnifier: full-resolution tiles around the cursor --------------------------------------

const loupe = document.createElement("canvas");
loupe.className = "mammo-loupe";
loupe.width = 240;
loupe.height = 240;
loupe.hidden = true;
document.body.append(loupe);
const loupeTiles = new Map();

function loupeTile(url) {
  if (!loupeTiles.has(url)) {
    const img = new Image();
    img.src = url;
    loupeTiles.set(url, img);
    img.addEventListener("load", () => loupe.dispatchEvent(new Event("tile")));
  }
  return loupeTiles.get(url);
}

function showLoupe(viewport, event) {
  if (!viewport.meta || viewport.mode === "tomo") return;
  const rect = viewport.el.getBoundingClientRect();
  const centre = viewport.toImage(event.clientX - rect.left, event.clientY - rect.top);
  const source = tileSource(viewport.meta, viewport.frame);
  const half = 60; // 120 image px into 240 canvas px: 2x the full resolution
  const ctx = loupe.getContext("2d");
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, 240, 240);
  if (viewport.flipped) {
    ctx.translate(240, 0);
    ctx.scale(-1, 1);
  }
  const x0 = centre.x - half;
  const y0 = centre.y - half;
  const size = source.tileSize;
  for (let ty = Math.floor(y0 / size); ty <= Math.floor((y0 + 2 * half) / size); ty += 1) {
    for (let tx = Math.floor(x0 / size); tx <= Math.floor((x0 + 2 * half) / size); tx += 1) {
      if (tx < 0 || ty < 0 || tx * size >= source.width || ty * size >= source.height) continue;
      const img = loupeTile(source.getTileUrl(source.maxLevel, tx, ty));
      if (img.complete && img.naturalWidth) ctx.drawImage(img, (tx * size - x0) * 2, (ty * size - y0) * 2, img.naturalWidth * 2, img.naturalHeight * 2);
    }
  }
  loupe.style.left = `${event.clientX + 20}px`;
  loupe.style.top = `${event.clientY - 120}px`;
  loupe.hidden = false;
  loupe.onTile = () => showLoupe(viewport, event);
}
loupe.addEventListener("tile", () => loupe.onTile && loupe.onTile());

function hideLoupe() {
  loupe.hidden = true;
}

// ---- tomosynthesis ----------------------------------------------------------------------------

function scrollSlices(viewport, step) {
  if (viewport.mode !== "tomo") return;
  const frames = viewport.meta.frames;
  const next = Math.min(Math.max(viewport.slice + step, 0), frames - 1);
  setSlice(viewport, next);
}

function setSlice(viewport, index) {
  viewport.slice = index;
  viewport.showSlice();
  // Scroll the prior's (and any other) stack of the same breast and view by relative depth.
  for (const other of state.viewports) {
    if (other === viewport || other.mode !== "tomo") continue;
    if (other.spec.laterality !== viewport.spec.laterality || other.spec.view !== viewport.spec.view) continue;
    const frames = viewport.meta.frames;
    other.slice = frames > 1 && other.meta.frames > 1 ? Math.round((index / (frames - 1)) * (other.meta.frames - 1)) : 0;
    other.showSlice();
  }
}

async function setTomo(on) {
  state.tomo = on;
  $("tomo").setAttribute("aria-pressed", String(on));
  const stacks = state.viewports.filter((v) => v.stack);
  if (on && !stacks.length) {
    showError("no tomosynthesis stack in this stage");
    state.tomo = false;
    $("tomo").setAttribute("aria-pressed", "false");
    return;
  }
  await Promise.all(stacks.map((v) => (on ? v.enterTomo() : v.leaveTomo())));
  if (on) stacks.forEach((v) => v.prefetch());
}

async function toggleCad() {
  if (state.cad) {
    state.cad = null;
  } else {
    try {
      const document_ = await fetchJson(`${BASE}/studies/${encodeURIComponent(state.study)}/cad`);
      state.cad = document_.marks;
      if (!document_.reports.length) showError("no CAD report for this study");
      for (const notice of document_.notices) $("notices").append(Object.assign(document.createElement("li"), { textContent: notice }));
    } catch (error) {
      showError(`CAD marks could not be loaded: ${error.message}`);
    }
  }
  $("cad").setAttribute("aria-pressed", String(Boolean(state.cad)));
  document.body.dataset.cad = String(Boolean(state.cad));
  for (const v of state.viewports) v.redraw();
}

function stopCine() {
  if (state.cine) clearInterval(state.cine);
  state.cine = null;
  $("cine").setAttribute("aria-pressed", "false");
}

function toggleCine() {
  if (state.cine) return stopCine();
  const target = state.active && state.active.mode === "tomo" ? state.active : state.viewports.find((v) => v.mode === "tomo");
  if (!target) return showError("turn on Tomo to play a stack");
  let direction = 1;
  state.cine = setInterval(() => {
    if (target.slice + direction < 0 || target.slice + direction >= target.meta.frames) direction = -direction;
    setSlice(target, target.slice + direction);
  }, 1000 / 15);
  $("cine").setAttribute("aria-pressed", "true");
  return undefined;
}

// ---- tools and keys ---------------------------------------------------------------------------

function setTool(tool) {
  state.tool = tool;
  for (const name of ["pan", "wl", "length", "area", "loupe"]) $(`tool-${name}`).setAttribute("aria-pressed", String(name === tool));
  const grid = $("grid");
  grid.classList.toggle("wl", tool === "wl");
  grid.classList.toggle("measure", tool === "length" || tool === "area");
  for (const v of state.viewports) if (v.viewer) v.viewer.setMouseNavEnabled(tool === "pan" || tool === "loupe");
  if (tool !== "loupe") hideLoupe();
}

function renderSide() {
  const h = state.hanging;
  const current = h.current;
  $("patient").textContent = `${(current.PatientName || "").replaceAll("^", " ").trim()} · ${current.PatientID || ""}`;
  $("study").textContent = `${formatDate(current.StudyDate)} ${current.StudyDescription || ""}`;
  const select = $("prior");
  select.replaceChildren();
  const none = document.createElement("option");
  none.value = "";
  none.textContent = h.prior_candidates.length ? "(automatic)" : "(no prior)";
  select.append(none);
  for (const c of h.prior_candidates) {
    const option = document.createElement("option");
    option.value = c.StudyInstanceUID;
    option.textContent = `${formatDate(c.StudyDate)} ${c.AccessionNumber || ""}`;
    option.selected = h.priors.length > 0 && h.priors[0].StudyInstanceUID === c.StudyInstanceUID;
    select.append(option);
  }
  const stages = $("stages");
  stages.replaceChildren();
  h.stages.forEach((stage, i) => {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = `${i + 1}`;
    button.title = `${stage.name} (${i + 1})`;
    button.addEventListener("click", () => showStage(i));
    stages.append(button);
  });
  const others = $("others");
  others.replaceChildren();
  for (const o of h.other_images) {
    const li = document.createElement("li");
    const show = document.createElement("button");
    show.type = "button";
    show.textContent = `${o.label} ${o.kind}${o.is_prior ? " (prior)" : ""}`;
    show.title = "Show in the selected viewport";
    show.addEventListener("click", () => showInActive(o));
    li.append(show);
    if (o.notices.length) li.append(document.createTextNode(` — ${o.notices.join("; ")}`));
    others.append(li);
  }
  if (!h.other_images.length) others.append(Object.assign(document.createElement("li"), { textContent: "none" }));
  const notices = $("notices");
  notices.replaceChildren();
  for (const n of h.notices) notices.append(Object.assign(document.createElement("li"), { textContent: n }));
  if (!h.notices.length) notices.append(Object.assign(document.createElement("li"), { textContent: "none" }));
  $("report-link").href = `report.html?study=${encodeURIComponent(state.study)}`;
}

async function load() {
  if (!state.study) {
    showError("no study given: open this page from the study browser");
    return;
  }
  const query = new URLSearchParams();
  if (state.prior) query.set("prior", state.prior);
  if (params.get("protocol")) query.set("protocol", params.get("protocol"));
  try {
    state.hanging = await fetchJson(`${BASE}/studies/${encodeURIComponent(state.study)}/hanging?${query}`);
  } catch (error) {
    showError(`the hanging could not be loaded: ${error.message}`);
    return;
  }
  // The hanging carries the info of every image it places: no request per viewport before its tiles.
  for (const [sop, meta] of Object.entries(state.hanging.images || {})) state.infos.set(`${sop}/0`, Promise.resolve(meta));
  document.title = `Tessera · Mammography · ${state.hanging.protocol.name}`;
  renderSide();
  await showStage(state.stage);
}

function bindUi() {
  for (const name of ["pan", "wl", "length", "area", "loupe"]) $(`tool-${name}`).addEventListener("click", () => setTool(name));
  $("link").addEventListener("click", () => {
    state.linked = !state.linked;
    $("link").setAttribute("aria-pressed", String(state.linked));
  });
  $("home").addEventListener("click", fitAll);
  $("tomo").addEventListener("click", () => setTomo(!state.tomo));
  $("cad").addEventListener("click", toggleCad);
  $("cine").addEventListener("click", toggleCine);
  $("clear").addEventListener("click", clearMeasurements);
  $("prior").addEventListener("change", () => {
    state.prior = $("prior").value || null;
    const url = new URL(window.location.href);
    if (state.prior) url.searchParams.set("prior", state.prior);
    else url.searchParams.delete("prior");
    window.history.replaceState(null, "", url);
    load();
  });
  const slabChanged = () => {
    state.slab = { thickness: Number($("slab-thickness").value), mode: $("slab-mode").value };
    for (const v of state.viewports) if (v.mode === "tomo") v.showSlice();
  };
  $("slab-thickness").addEventListener("change", slabChanged);
  $("slab-mode").addEventListener("change", slabChanged);
  window.addEventListener("resize", () => setTimeout(fitAll, 50));
  const stageKey = (i) => () => showStage(i);
  bindKeys({
    ArrowRight: () => showStage(state.stage + 1),
    ArrowLeft: () => showStage(state.stage - 1),
    1: stageKey(0),
    2: stageKey(1),
    3: stageKey(2),
    4: stageKey(3),
    p: () => setTool("pan"),
    w: () => setTool("wl"),
    l: () => setTool("length"),
    a: () => setTool("area"),
    m: () => setTool(state.tool === "loupe" ? "pan" : "loupe"),
    k: () => $("link").click(),
    t: () => setTomo(!state.tomo),
    x: toggleCad,
    c: toggleCine,
    h: fitAll,
    0: () => setWindow(null),
    ArrowUp: () => state.active && scrollSlices(state.active, -1),
    ArrowDown: () => state.active && scrollSlices(state.active, 1),
    Delete: clearMeasurements,
    Escape: () => setTool("pan"),
  });
}

function clearMeasurements() {
  state.measurements = [];
  sessionStorage.removeItem(`tessera.mammo.marks.${state.study}`);
  $("measurements").replaceChildren();
  for (const v of state.viewports) v.redraw();
}

bindUi();
load();
