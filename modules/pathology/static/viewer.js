// Whole-slide viewer: OpenSeadragon over Tessera's DZI routes, calibrated in µm.
// Every string that comes from DICOM is inserted with textContent.
import "/static/js/session.js"; // credentials, XSRF token, login on 401 (see static/js/session.js)
import { colorDzi, effectiveColor, replaceInPlace, showColorMode } from './color.js';
import { DicomLayer, svgElement } from './dicom-layer.js';
import { areaSquareMicrometres, formatArea, formatLength, lengthMicrometres, niceScale } from './measure.js';

const OSD = window.OpenSeadragon;
const params = new URLSearchParams(window.location.search);
const state = {
  series: params.get('series'),
  study: params.get('study'),
  info: null,
  viewer: null,
  tool: 'pan',
  draft: [],
  dragStart: null,
  pressAt: null,
  features: [],
  tilesDrawn: 0,
  view: null, // { optical_path, focal_plane, dzi }: what the viewer shows of the slide
  dicom: null, // DicomLayer: the read-only layer of the archive's DICOM annotations
  color: 'stored', // 'srgb': tiles converted from the slide's ICC profile (a separate tile variant)
};
const PRESETS = [2.5, 5, 10, 20, 40];
const $ = (id) => document.getElementById(id);

function status(text, isError = false) {
  const el = $('status');
  el.textContent = text;
  el.classList.toggle('error', isError);
}

async function fetchJson(url) {
  const response = await fetch(url, { headers: { Accept: 'application/json' } });
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

// -- calibration ----------------------------------------------------------------------------------

function mpp() {
  const info = state.info;
  return info && info.mpp_x ? { x: info.mpp_x, y: info.mpp_y || info.mpp_x } : null;
}

/** The objective the slide was scanned with; from µm/px when the header does not say (10 µm / mpp). */
function scanObjective() {
  const info = state.info;
  if (info.objective_power) return info.objective_power;
  const m = mpp();
  return m ? 10 / m.x : null;
}

function imageZoom() {
  const viewport = state.viewer.viewport;
  return viewport.viewportToImageZoom(viewport.getZoom(true));
}

function zoomToObjective(magnification) {
  const objective = scanObjective();
  if (!objective) return;
  const viewport = state.viewer.viewport;
  viewport.zoomTo(viewport.imageToViewportZoom(magnification / objective));
}

// -- HUD: scale bar, magnification, cursor ---------------------------------------------------------

function updateHud() {
  const m = mpp();
  const zoom = imageZoom();
  const objective = scanObjective();
  $('magnification').textContent = objective ? `${(objective * zoom).toFixed(objective * zoom < 10 ? 1 : 0)}×` : '';
  if (!m) {
    $('scalebar-text').textContent = 'not calibrated';
    return;
  }
  const { um, pixels } = niceScale(m.x / zoom, 160);
  $('scalebar-line').style.width = `${Math.round(pixels)}px`;
  $('scalebar-text').textContent = formatLength(um);
}

function trackCursor(viewer) {
  new OSD.MouseTracker({
    element: viewer.canvas,
    moveHandler: (event) => {
      const m = mpp();
      if (!m) return;
      const point = imagePoint(event.position);
      $('cursor').textContent = `x ${formatLength(point.x * m.x)} · y ${formatLength(point.y * m.y)}`;
    },
    leaveHandler: () => {
      $('cursor').textContent = '';
    },
  });
}

// -- annotations and measurements ------------------------------------------------------------------
// A feature is {kind, points: [{x, y}] in level-0 image pixels, label, color}; saved as GeoJSON.

const CLOSED = new Set(['polygon', 'rectangle', 'freehand', 'field']);

function setTool(tool) {
  state.tool = tool;
  state.draft = [];
  for (const button of $('tools').querySelectorAll('button')) {
    button.classList.toggle('active', button.dataset.tool === tool);
  }
  drawOverlay();
}

function measure(feature) {
  const m = mpp();
  if (!m) return '';
  if (feature.kind === 'line') return formatLength(lengthMicrometres(feature.points, m.x, m.y));
  if (feature.kind === 'field') {
    const inside = state.features.filter((f) => f.kind === 'point' && pointInPolygon(f.points[0], feature.points));
    return `${formatArea(areaSquareMicrometres(feature.points, m.x, m.y))}, ${inside.length} counted`;
  }
  if (CLOSED.has(feature.kind)) return formatArea(areaSquareMicrometres(feature.points, m.x, m.y));
  return '';
}

function pointInPolygon(p, ring) {
  let inside = false;
  for (let i = 0, j = ring.length - 1; i < ring.length; j = i, i += 1) {
    const a = ring[i];
    const b = ring[j];
    if (a.y > p.y !== b.y > p.y && p.x < ((b.x - a.x) * (p.y - a.y)) / (b.y - a.y) + a.x) inside = !inside;
  }
  return inside;
}

/** A circle of the chosen area (mm²) around a point, as a 72-gon in image pixels. */
function countingField(centre) {
  const m = mpp();
  const radiusUm = Math.sqrt((Number($('field-area').value) * 1e6) / Math.PI);
  const points = [];
  for (let i = 0; i < 72; i += 1) {
    const angle = (i / 72) * 2 * Math.PI;
    points.push({ x: centre.x + (radiusUm * Math.cos(angle)) / m.x, y: centre.y + (radiusUm * Math.sin(angle)) / m.y });
  }
  // the 72-gon is 0.13 % smaller than the circle: scale it to the exact area asked for
  const scale = Math.sqrt((Number($('field-area').value) * 1e6) / areaSquareMicrometres(points, m.x, m.y));
  return points.map((p) => ({ x: centre.x + (p.x - centre.x) * scale, y: centre.y + (p.y - centre.y) * scale }));
}

function addFeature(kind, points) {
  state.features.push({ kind, points, label: $('annotation-label').value.trim(), color: $('annotation-color').value });
  state.draft = [];
  listFeatures();
  drawOverlay();
  saveFeatures();
}

function finishDraft() {
  if (state.tool === 'line' && state.draft.length === 2) addFeature('line', state.draft);
  else if (state.tool === 'polygon' && state.draft.length >= 3) addFeature('polygon', state.draft);
}

const KIND_NAMES = { line: 'Length', polygon: 'Area', rectangle: 'Rectangle', freehand: 'Outline', point: 'Point', field: 'Field' };

function listFeatures() {
  $('measurements').replaceChildren(
    ...state.features.map((feature, index) => {
      const item = document.createElement('li');
      item.textContent = [KIND_NAMES[feature.kind], measure(feature), feature.label].filter(Boolean).join(' ');
      const remove = document.createElement('button');
      remove.type = 'button';
      remove.textContent = '×';
      remove.title = 'Remove';
      remove.addEventListener('click', () => {
        state.features.splice(index, 1);
        listFeatures();
        drawOverlay();
        saveFeatures();
      });
      item.append(remove);
      return item;
    }),
  );
}

function drawOverlay() {
  const svg = $('overlay');
  if (!state.viewer || !state.viewer.world.getItemCount()) return;
  const shapes = [];
  const draw = (feature) => {
    const screen = feature.points.map(screenPoint);
    const color = feature.color || '#ffd24d';
    const coords = screen.map((p) => `${p.x.toFixed(1)},${p.y.toFixed(1)}`).join(' ');
    const closed = CLOSED.has(feature.kind) && screen.length >= 3;
    if (feature.kind !== 'point') {
      shapes.push(
        svgElement(closed ? 'polygon' : 'polyline', {
          points: coords,
          class: closed ? 'shape' : 'shape-open',
          stroke: color,
          fill: color,
        }),
      );
    }
    if (feature.kind !== 'freehand' && feature.kind !== 'field') {
      for (const p of screen) shapes.push(svgElement('circle', { cx: p.x, cy: p.y, r: feature.kind === 'point' ? 5 : 3, fill: color }));
    }
    const text = [measure(feature), feature.label].filter(Boolean).join(' · ');
    if (text && !feature.draft) {
      const last = screen[screen.length - 1];
      const node = svgElement('text', { x: last.x + 8, y: last.y - 8, class: 'measure-label' });
      node.textContent = text;
      shapes.push(node);
    }
  };
  for (const feature of state.features) draw(feature);
  if (state.draft.length) draw({ kind: state.tool, points: state.draft, color: $('annotation-color').value, draft: true });
  svg.replaceChildren(...shapes);
}

// OpenSeadragon flips only when drawing; its coordinate conversions ignore the flip, so the
// overlay and the pointer mirror x about the viewer's width themselves.
function unflip(position) {
  const viewport = state.viewer.viewport;
  return viewport.getFlip() ? new OSD.Point(viewport.getContainerSize().x - position.x, position.y) : position;
}

/** Level-0 image pixels under a point of the viewer element. */
function imagePoint(position) {
  const point = state.viewer.viewport.viewerElementToImageCoordinates(unflip(position));
  return { x: point.x, y: point.y };
}

/** Where a level-0 image point is drawn in the viewer element. */
function screenPoint(p) {
  return unflip(state.viewer.viewport.imageToViewerElementCoordinates(new OSD.Point(p.x, p.y)));
}

function onCanvasClick(event) {
  if (!['line', 'polygon', 'point', 'field'].includes(state.tool) || !event.quick) return;
  event.preventDefaultAction = true;
  const last = state.draft[state.draft.length - 1];
  if (last && screenPoint(last).distanceTo(event.position) < 4) {
    return; // the second click of a double-click
  }
  if (state.tool === 'point') {
    addFeature('point', [imagePoint(event.position)]);
    return;
  }
  if (state.tool === 'field') {
    if (mpp()) addFeature('field', countingField(imagePoint(event.position)));
    return;
  }
  state.draft.push(imagePoint(event.position));
  if (state.tool === 'line' && state.draft.length === 2) finishDraft();
  drawOverlay();
}

/** Rectangle and freehand are dragged: the drag draws instead of panning. */
function onCanvasDrag(event) {
  if (state.tool !== 'rectangle' && state.tool !== 'freehand') return;
  event.preventDefaultAction = true;
  const point = imagePoint(event.position);
  if (!state.dragStart) {
    state.dragStart = state.pressAt || point;
    if (state.tool === 'freehand') state.draft = [state.dragStart];
  }
  if (state.tool === 'rectangle') {
    const a = state.dragStart;
    state.draft = [a, { x: point.x, y: a.y }, point, { x: a.x, y: point.y }];
  } else {
    state.draft.push(point);
  }
  drawOverlay();
}

function onCanvasRelease() {
  if (!state.dragStart) return;
  state.dragStart = null;
  if (state.draft.length >= 3) addFeature(state.tool, state.draft);
  state.draft = [];
  drawOverlay();
}

// GeoJSON: level-0 pixel coordinates, as QuPath exports them.
function toGeoJson() {
  return {
    type: 'FeatureCollection',
    features: state.features.map((feature) => {
      const coords = feature.points.map((p) => [Math.round(p.x * 100) / 100, Math.round(p.y * 100) / 100]);
      let geometry;
      if (feature.kind === 'point') geometry = { type: 'Point', coordinates: coords[0] };
      else if (feature.kind === 'line') geometry = { type: 'LineString', coordinates: coords };
      else geometry = { type: 'Polygon', coordinates: [[...coords, coords[0]]] };
      return { type: 'Feature', geometry, properties: { kind: feature.kind, label: feature.label, color: feature.color } };
    }),
  };
}

function fromGeoJson(collection) {
  return collection.features.map((feature) => {
    const g = feature.geometry;
    let coords;
    if (g.type === 'Point') coords = [g.coordinates];
    else if (g.type === 'LineString') coords = g.coordinates;
    else coords = g.coordinates[0].slice(0, -1);
    return {
      kind: feature.properties.kind,
      points: coords.map(([x, y]) => ({ x, y })),
      label: feature.properties.label || '',
      color: feature.properties.color,
    };
  });
}

function annotationsUrl() {
  return `/pathology/slides/${encodeURIComponent(state.series)}/annotations`;
}

async function saveFeatures(body = toGeoJson(), archive = false) {
  const series = state.series;
  $('save-state').textContent = 'Saving…';
  try {
    const query = archive ? `?archive=${encodeURIComponent($('archive-as').value)}` : '';
    const response = await fetch(`${annotationsUrl()}${query}`, {
      method: 'PUT',
      headers: { 'Content-Type': 'application/geo+json' },
      body: JSON.stringify(body),
    });
    if (!response.ok) throw new Error((await response.json()).detail || response.statusText);
    if (series !== state.series) return;
    const saved = await response.json();
    state.features = fromGeoJson(saved);
    $('save-state').textContent = `Saved ${state.features.length} annotation(s)`;
    if (archive) {
      const outcomes = [['annotations', saved.dicom], ['measurement report', saved.report]].filter(([, o]) => o);
      const stored = outcomes.filter(([, o]) => o.stored);
      const failed = outcomes.filter(([, o]) => !o.stored).map(([name, o]) => `${name}: ${o.reason}`);
      $('save-state').textContent = stored.length
        ? `Stored in the archive as DICOM: ${stored.map(([name]) => name).join(' and ')}`
        : `Saved, but not stored as DICOM: ${failed.join('; ') || 'nothing to store'}`;
      $('save-state').title = stored.map(([name, o]) => `${name}: series ${o.SeriesInstanceUID}`).join('\n');
      loadDicomAnnotations();
    }
    listFeatures();
    drawOverlay();
  } catch (error) {
    $('save-state').textContent = `Not saved: ${error.message}`;
  }
}

async function loadFeatures() {
  $('export').href = `${annotationsUrl()}?download=1`;
  try {
    state.features = fromGeoJson(await fetchJson(annotationsUrl()));
  } catch (error) {
    state.features = [];
    $('save-state').textContent = `Annotations: ${error.message}`;
  }
  listFeatures();
  drawOverlay();
}

async function importFile(file) {
  try {
    await saveFeatures(JSON.parse(await file.text()));
  } catch (error) {
    $('save-state').textContent = `Import failed: ${error.message}`;
  }
}

async function loadDicomAnnotations() {
  const shapes = await state.dicom.load(state.info.dicom_annotations);
  if (shapes !== null) document.body.dataset.dicomShapes = String(shapes);
}

function drawDicomOverlay() {
  state.dicom?.draw();
}

// -- slides and case panel ---------------------------------------------------------------------------

function showInfo(info) {
  const m = mpp();
  const rows = [
    ['Slide', info.container_identifier || info.series_description || '—'],
    ['Size', `${info.width.toLocaleString('en')} × ${info.height.toLocaleString('en')} px`],
    ['Resolution', m ? `${m.x.toFixed(3)} µm/px` : 'not calibrated'],
    ['Objective', info.objective_power ? `${info.objective_power}×` : '—'],
    ['Levels', String(info.levels.length)],
    ['Scanner', [info.vendor, info.model].filter(Boolean).join(' ') || '—'],
    ['Optical paths', String(info.optical_paths.length || 1)],
    ['Focal planes', String(info.focal_planes)],
  ];
  $('slide-info').replaceChildren(
    ...rows.flatMap(([term, value]) => {
      const dt = document.createElement('dt');
      dt.textContent = term;
      const dd = document.createElement('dd');
      dd.textContent = value;
      return [dt, dd];
    }),
  );
  $('slide-title').textContent = [info.container_identifier, info.series_description].filter(Boolean).join(' · ');
}

async function loadCase() {
  if (!state.study) return;
  try {
    const result = await fetchJson(`/pathology/studies/${encodeURIComponent(state.study)}/slides`);
    $('slides').replaceChildren(
      ...result.slides.map((slide) => {
        const item = document.createElement('li');
        item.dataset.series = slide.SeriesInstanceUID;
        item.classList.toggle('current', slide.SeriesInstanceUID === state.series);
        for (const [kind, css] of [['thumbnail', ''], ['label', 'label']]) {
          if (!slide[kind]) continue;
          const image = document.createElement('img');
          image.src = slide[kind];
          image.alt = kind;
          if (css) image.className = css;
          item.append(image);
        }
        const text = document.createElement('span');
        text.textContent = slide.container_identifier || slide.series_description || slide.SeriesInstanceUID;
        item.append(text);
        if (slide.SeriesInstanceUID !== state.series) {
          const compare = document.createElement('a');
          compare.className = 'button';
          compare.textContent = '⇆';
          compare.title = 'Side by side with the open slide';
          const query = new URLSearchParams({ study: state.study, series: state.series, compare: slide.SeriesInstanceUID });
          compare.href = `compare.html?${query}`;
          compare.addEventListener('click', (event) => event.stopPropagation());
          item.append(compare);
        }
        item.addEventListener('click', () => openSlide(slide.SeriesInstanceUID));
        return item;
      }),
    );
  } catch (error) {
    status(`Case: ${error.message}`, true);
  }
}

async function openSlide(series) {
  state.series = series;
  state.features = [];
  state.draft = [];
  listFeatures();
  state.dicom.clear();
  for (const item of $('slides').children) item.classList.toggle('current', item.dataset.series === series);
  status('Opening slide…');
  try {
    state.info = await fetchJson(`/pathology/slides/${encodeURIComponent(series)}/info`);
  } catch (error) {
    status(`Cannot open slide: ${error.message}`, true);
    return;
  }
  showInfo(state.info);
  document.body.dataset.color = showColorMode($('color-mode'), state.info, state.color);
  loadFeatures();
  loadDicomAnnotations();
  const url = new URL(window.location.href);
  url.searchParams.set('series', series);
  window.history.replaceState(null, '', url);
  buildViews(state.info);
  state.view = null;
  const first = (state.info.views || [])[0] || { optical_path: '', focal_plane: 0, dzi: state.info.dzi.url };
  state.viewer.close();
  showView(first);
}

// -- optical paths and focal planes: each is its own Deep Zoom image (info.views) ------------

function viewsOf(path) {
  return (state.info?.views || []).filter((view) => view.optical_path === path);
}

function chooseColor(color) {
  state.color = color;
  document.body.dataset.color = effectiveColor(state.info, color);
  if (state.view) showView(state.view);
}

/** Show another optical path / focal plane in place: the viewport (pan, zoom, rotation) stays. */
function showView(view) {
  state.view = view;
  document.body.dataset.opticalPath = view.optical_path;
  document.body.dataset.focalPlane = String(view.focal_plane);
  const planes = viewsOf(view.optical_path).length;
  $('focal-plane').textContent = `z ${view.focal_plane + 1}/${planes}`;
  $('focal-plane-group').hidden = planes < 2;
  $('optical-path').value = view.optical_path;
  if (state.viewer.world.getItemCount() > 0) {
    replaceInPlace(state.viewer, colorDzi(view.dzi, state.info, state.color));
  } else {
    state.viewer.open(colorDzi(view.dzi, state.info, state.color));
  }
}

function stepFocalPlane(delta) {
  if (!state.view) return;
  const target = state.view.focal_plane + delta;
  const view = viewsOf(state.view.optical_path).find((v) => v.focal_plane === target);
  if (view) showView(view);
}

function chooseOpticalPath(path) {
  // keep the focal plane when the other path has it, else its first
  const views = viewsOf(path);
  const view = views.find((v) => v.focal_plane === state.view?.focal_plane) || views[0];
  if (view) showView(view);
}

function buildViews(info) {
  const views = info.views || [];
  const paths = [...new Set(views.map((view) => view.optical_path))];
  const select = $('optical-path');
  select.replaceChildren(
    ...paths.map((path) => {
      const option = document.createElement('option');
      const described = (info.optical_paths || []).find((p) => p.identifier === path);
      option.value = path;
      option.textContent = described?.description ? `${path}: ${described.description}` : `Path ${path}`;
      return option;
    }),
  );
  select.hidden = paths.length < 2;
  const planes = Math.max(0, ...paths.map((path) => viewsOf(path).length));
  $('focal-plane-group').hidden = planes < 2;
  $('views').hidden = paths.length < 2 && planes < 2;
}

function buildPresets() {
  $('presets').replaceChildren(
    ...PRESETS.map((magnification, index) => {
      const button = document.createElement('button');
      button.type = 'button';
      button.textContent = `${magnification}×`;
      button.title = `Objective ${magnification}× (${index + 1})`;
      button.dataset.magnification = String(magnification);
      button.addEventListener('click', () => zoomToObjective(magnification));
      return button;
    }),
  );
}

function clearFeatures() {
  state.features = [];
  listFeatures();
  drawOverlay();
  saveFeatures();
}

function bindKeys() {
  document.addEventListener('keydown', (event) => {
    if (event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement || event.ctrlKey || event.metaKey || event.altKey) return;
    const viewport = state.viewer.viewport;
    const key = event.key.toLowerCase();
    if (key >= '1' && key <= '5') zoomToObjective(PRESETS[Number(key) - 1]);
    else if (key === 'l') setTool('line');
    else if (key === 'a') setTool('polygon');
    else if (key === 'p') setTool('point');
    else if (key === 'b') setTool('rectangle');
    else if (key === 'd') setTool('freehand');
    else if (key === 'c') setTool('field');
    else if (key === 'escape') setTool('pan');
    else if (key === 'enter') finishDraft();
    else if (key === 'r') viewport.setRotation(viewport.getRotation() + (event.shiftKey ? -90 : 90));
    else if (key === 'f') viewport.toggleFlip();
    else if (key === 'h' || key === '0') viewport.goHome();
    else if (key === 'delete') clearFeatures();
    else if (key === 'pageup') stepFocalPlane(1);
    else if (key === 'pagedown') stepFocalPlane(-1);
    else return;
    event.preventDefault();
  });
}

/**
 * OpenSeadragon injects a <style> for touch focus outlines unless one marked
 * data-openseadragon-mobile-css exists; the CSP blocks inline styles, and the rule
 * is in viewer.css already. A marker outside the HTML namespace is never applied as CSS.
 */
function preventInlineStyle() {
  const marker = document.createElementNS('urn:tessera:marker', 'style');
  marker.setAttribute('data-openseadragon-mobile-css', 'true');
  document.head.append(marker);
}

function main() {
  if (!OSD) {
    status('OpenSeadragon is not installed (npm install)', true);
    return;
  }
  preventInlineStyle();
  const viewer = OSD({
    element: $('viewer'),
    prefixUrl: '/vendor/openseadragon/images/',
    drawer: 'canvas',
    showNavigator: true,
    navigatorPosition: 'TOP_RIGHT',
    showNavigationControl: false,
    showRotationControl: false,
    animationTime: 0.4,
    blendTime: 0.1,
    maxZoomPixelRatio: 4,
    visibilityRatio: 0.3,
    minZoomImageRatio: 0.5,
    timeout: 60000,
    crossOriginPolicy: false,
    gestureSettingsMouse: { clickToZoom: false, dblClickToZoom: false },
  });
  state.viewer = viewer;
  state.dicom = new DicomLayer({
    svg: $('dicom-overlay'),
    list: $('dicom-sources'),
    note: $('dicom-state'),
    viewer,
    toScreen: screenPoint,
    fetchJson,
  });
  window.tesseraPathology = state; // for tests and the console
  viewer.addHandler('open', () => {
    status('');
    updateHud();
    drawOverlay();
    drawDicomOverlay();
  });
  viewer.addHandler('open-failed', (event) => status(`Cannot open slide: ${event.message}`, true));
  viewer.addHandler('tile-load-failed', () => status('Some tiles failed to load', true));
  viewer.addHandler('tile-drawn', () => {
    state.tilesDrawn += 1;
    document.body.dataset.tilesDrawn = String(state.tilesDrawn);
  });
  viewer.addHandler('animation', () => {
    updateHud();
    drawOverlay();
    drawDicomOverlay();
  });
  viewer.addHandler('animation-start', () => {
    document.body.dataset.animating = 'true';
  });
  viewer.addHandler('animation-finish', () => {
    document.body.dataset.animating = 'false';
    updateHud();
    drawOverlay();
    drawDicomOverlay();
  });
  for (const event of ['resize', 'flip', 'rotate']) {
    viewer.addHandler(event, () => {
      drawOverlay();
      drawDicomOverlay();
    });
  }
  viewer.addHandler('canvas-click', onCanvasClick);
  viewer.addHandler('canvas-press', (event) => {
    state.pressAt = imagePoint(event.position);
  });
  viewer.addHandler('canvas-drag', onCanvasDrag);
  // Our shortcuts (document keydown) replace OpenSeadragon's, which would also pan on A/D/W/S
  // and rotate a second time on R.
  viewer.addHandler('canvas-key', (event) => {
    event.preventDefaultAction = true;
  });
  viewer.addHandler('canvas-release', onCanvasRelease);
  viewer.addHandler('canvas-double-click', (event) => {
    if (state.tool === 'polygon') {
      event.preventDefaultAction = true;
      finishDraft();
    }
  });
  trackCursor(viewer);
  buildPresets();
  bindKeys();
  for (const button of $('tools').querySelectorAll('button')) {
    button.addEventListener('click', () => setTool(button.dataset.tool));
  }
  $('clear').addEventListener('click', clearFeatures);
  $('archive').addEventListener('click', () => saveFeatures(toGeoJson(), true));
  $('dicom-layer').addEventListener('change', (event) => state.dicom.setShown(event.target.checked));
  $('import').addEventListener('change', (event) => {
    const [file] = event.target.files;
    if (file) importFile(file);
    event.target.value = '';
  });
  $('rotate').addEventListener('click', () => viewer.viewport.setRotation(viewer.viewport.getRotation() + 90));
  $('flip').addEventListener('click', () => viewer.viewport.toggleFlip());
  $('home').addEventListener('click', () => viewer.viewport.goHome());
  $('plane-up').addEventListener('click', () => stepFocalPlane(1));
  $('plane-down').addEventListener('click', () => stepFocalPlane(-1));
  $('optical-path').addEventListener('change', (event) => chooseOpticalPath(event.target.value));
  $('color-mode').addEventListener('change', (event) => chooseColor(event.target.value));
  if (!state.series) {
    status('No slide chosen: open this page from the study browser', true);
    return;
  }
  loadCase();
  openSlide(state.series);
}

main();
