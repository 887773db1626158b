// Two slides side by side (e.g. H&E beside IHC), panned and zoomed together in physical units.
// The right slide may carry an offset (µm) and a rotation (degrees) relative to the left one;
// unlock, move one slide into register, lock again, and save the alignment for the pair.
// Each side has the single viewer's colour toggle and read-only DICOM annotations layer.
import "/static/js/session.js"; // credentials, XSRF token, login on 401 (see static/js/session.js)
import { colorDzi, effectiveColor, replaceInPlace, showColorMode } from './color.js';
import { DicomLayer } from './dicom-layer.js';
import { formatLength, niceScale } from './measure.js';

const OSD = window.OpenSeadragon;
const params = new URLSearchParams(window.location.search);
const $ = (id) => document.getElementById(id);
// Only the pane the user last touched leads: viewport-change events arrive a frame late, and two
// panes echoing each other's late events would pull each other back.
const state = { panes: [], leader: null, locked: true, offset: { x: 0, y: 0 }, rotation: 0, syncing: false };

function status(text, isError = false) {
  $('status').textContent = text;
  $('status').classList.toggle('error', isError);
}

async function fetchJson(url, options = {}) {
  const response = await fetch(url, options);
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

function rotate(point, degrees) {
  const r = (degrees * Math.PI) / 180;
  return { x: point.x * Math.cos(r) - point.y * Math.sin(r), y: point.x * Math.sin(r) + point.y * Math.cos(r) };
}

/** The view of a pane in physical terms: centre in µm, µm per screen pixel, rotation. */
function physicalView(pane) {
  const viewport = pane.viewer.viewport;
  const centre = viewport.viewportToImageCoordinates(viewport.getCenter(true));
  const imageZoom = viewport.viewportToImageZoom(viewport.getZoom(true));
  return {
    centre: { x: centre.x * pane.mpp, y: centre.y * pane.mpp },
    umPerPixel: pane.mpp / imageZoom,
    rotation: viewport.getRotation(),
  };
}

function applyView(pane, view) {
  const viewport = pane.viewer.viewport;
  const centre = new OSD.Point(view.centre.x / pane.mpp, view.centre.y / pane.mpp);
  viewport.zoomTo(viewport.imageToViewportZoom(pane.mpp / view.umPerPixel), null, true);
  viewport.panTo(viewport.imageToViewportCoordinates(centre), true);
  if (viewport.getRotation() !== view.rotation) viewport.setRotation(view.rotation, true);
}

/** Left → right: rotate about the slide origin, then shift; right → left is the inverse. */
function follow(source) {
  if (!state.locked || state.syncing || state.panes.length < 2 || !state.panes.every((p) => p.ready)) return;
  if (source !== (state.leader || state.panes[0])) return;
  const [left, right] = state.panes;
  const view = physicalView(source);
  let target;
  let targetView;
  if (source === left) {
    target = right;
    const turned = rotate(view.centre, state.rotation);
    targetView = { centre: { x: turned.x + state.offset.x, y: turned.y + state.offset.y }, umPerPixel: view.umPerPixel, rotation: view.rotation + state.rotation };
  } else {
    target = left;
    const shifted = { x: view.centre.x - state.offset.x, y: view.centre.y - state.offset.y };
    targetView = { centre: rotate(shifted, -state.rotation), umPerPixel: view.umPerPixel, rotation: view.rotation - state.rotation };
  }
  state.syncing = true;
  try {
    applyView(target, targetView);
  } finally {
    state.syncing = false;
  }
  publish();
}

/** Where both panes look, for tests and the console (µm, rounded). */
function publish() {
  state.panes.forEach((pane, index) => {
    const view = physicalView(pane);
    document.body.dataset[`centre${index}`] = `${view.centre.x.toFixed(1)},${view.centre.y.toFixed(1)},${view.umPerPixel.toFixed(4)}`;
  });
}

function updateScale(pane, suffix) {
  const { um, pixels } = niceScale(physicalView(pane).umPerPixel, 140);
  $(`scalebar-line-${suffix}`).style.width = `${Math.round(pixels)}px`;
  $(`scalebar-text-${suffix}`).textContent = formatLength(um);
}

function setLocked(locked) {
  if (locked && !state.locked) {
    // the new offset is whatever the user set up while unlocked
    const [left, right] = state.panes;
    const turned = rotate(physicalView(left).centre, state.rotation);
    const centre = physicalView(right).centre;
    state.offset = { x: centre.x - turned.x, y: centre.y - turned.y };
  }
  state.locked = locked;
  $('lock').classList.toggle('active', locked);
  $('lock').textContent = locked ? 'Synced' : 'Unlocked';
  if (locked) {
    state.leader = state.panes[0];
    follow(state.panes[0]);
  }
  publish();
}

function turn(degrees) {
  state.rotation = (state.rotation + degrees) % 360;
  state.leader = state.panes[0];
  follow(state.panes[0]);
}

function alignmentUrl() {
  return `/pathology/slides/${encodeURIComponent(state.panes[0].series)}/alignments/${encodeURIComponent(state.panes[1].series)}`;
}

async function save() {
  try {
    await fetchJson(alignmentUrl(), {
      method: 'PUT',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ offset_um: [state.offset.x, state.offset.y], rotation_deg: state.rotation }),
    });
    status('Alignment saved');
    setTimeout(() => status(''), 1500);
  } catch (error) {
    status(`Not saved: ${error.message}`, true);
  }
}

function makePane(series, element, suffix) {
  const viewer = OSD({
    element: $(element),
    prefixUrl: '/vendor/openseadragon/images/',
    drawer: 'canvas',
    showNavigator: true,
    navigatorPosition: 'TOP_RIGHT',
    showNavigationControl: false,
    animationTime: 0.3,
    visibilityRatio: 0.1,
    minZoomImageRatio: 0.5,
    maxZoomPixelRatio: 4,
    gestureSettingsMouse: { clickToZoom: false },
  });
  const pane = { series, viewer, mpp: 1, ready: false, tiles: 0, color: 'stored' };
  pane.dicom = new DicomLayer({
    svg: $(`dicom-overlay-${suffix}`),
    list: $(`dicom-sources-${suffix}`),
    note: $(`dicom-state-${suffix}`),
    viewer,
    toScreen: (p) => viewer.viewport.imageToViewerElementCoordinates(new OSD.Point(p.x, p.y)),
    fetchJson,
  });
  viewer.addHandler('canvas-key', (event) => {
    event.preventDefaultAction = true;
  });
  for (const name of ['canvas-press', 'canvas-scroll', 'canvas-drag', 'canvas-pinch']) {
    viewer.addHandler(name, () => {
      state.leader = pane;
    });
  }
  viewer.addHandler('viewport-change', () => {
    if (!pane.ready) return;
    updateScale(pane, suffix);
    pane.dicom.draw();
    follow(pane);
    publish();
  });
  viewer.addHandler('resize', () => pane.dicom.draw());
  viewer.addHandler('tile-drawn', () => {
    pane.tiles += 1;
    document.body.dataset[`tiles${suffix}`] = String(pane.tiles);
  });
  viewer.addHandler('open', () => {
    pane.ready = true;
    updateScale(pane, suffix);
    pane.dicom.draw();
    if (suffix === 'b') follow(state.panes[0]);
    publish();
  });
  return pane;
}

async function open(pane, suffix) {
  const info = await fetchJson(`/pathology/slides/${encodeURIComponent(pane.series)}/info`);
  pane.mpp = info.mpp_x || 1;
  pane.info = info;
  $(`name-${suffix}`).textContent = info.container_identifier
    ? `${info.container_identifier} · ${info.series_description}`
    : info.series_description;
  document.body.dataset[`color${suffix}`] = showColorMode($(`color-mode-${suffix}`), info, pane.color);
  pane.viewer.open(colorDzi(info.dzi.url, info, pane.color));
  pane.dicom.load(info.dicom_annotations).then((shapes) => {
    if (shapes !== null) document.body.dataset[`dicomShapes${suffix}`] = String(shapes);
  });
}

/** One side as stored or colour-managed; the tile variant is replaced in place, the view stays. */
function chooseColor(pane, suffix, color) {
  pane.color = color;
  document.body.dataset[`color${suffix}`] = effectiveColor(pane.info, color);
  replaceInPlace(pane.viewer, colorDzi(pane.info.dzi.url, pane.info, color));
}

async function main() {
  const left = params.get('series');
  const right = params.get('compare');
  if (!OSD || !left || !right) {
    status('Open with ?series=…&compare=… (two slides)', true);
    return;
  }
  const marker = document.createElementNS('urn:tessera:marker', 'style'); // see viewer.js
  marker.setAttribute('data-openseadragon-mobile-css', 'true');
  document.head.append(marker);
  state.panes = [makePane(left, 'viewer-a', 'a'), makePane(right, 'viewer-b', 'b')];
  window.tesseraCompare = state;
  try {
    const saved = await fetchJson(alignmentUrl());
    state.offset = { x: saved.offset_um[0], y: saved.offset_um[1] };
    state.rotation = saved.rotation_deg;
  } catch {
    // no saved alignment: start registered at the slide origin
  }
  try {
    await Promise.all([open(state.panes[0], 'a'), open(state.panes[1], 'b')]);
  } catch (error) {
    status(`Cannot open: ${error.message}`, true);
    return;
  }
  $('title').textContent = state.panes.map((p) => p.info.container_identifier || p.info.series_description).join('  ⇆  ');
  $('lock').addEventListener('click', () => setLocked(!state.locked));
  $('rotate-left').addEventListener('click', () => turn(-5));
  $('rotate-right').addEventListener('click', () => turn(5));
  $('reset').addEventListener('click', () => {
    state.offset = { x: 0, y: 0 };
    state.rotation = 0;
    state.leader = state.panes[0];
    follow(state.panes[0]);
  });
  $('save').addEventListener('click', save);
  state.panes.forEach((pane, index) => {
    const suffix = index ? 'b' : 'a';
    $(`color-mode-${suffix}`).addEventListener('change', (event) => chooseColor(pane, suffix, event.target.value));
    $(`dicom-layer-${suffix}`).addEventListener('change', (event) => pane.dicom.setShown(event.target.checked));
  });
  document.addEventListener('keydown', (event) => {
    if (event.key === ' ') setLocked(!state.locked);
    else if (event.key === '[') turn(-5);
    else if (event.key === ']') turn(5);
    else return;
    event.preventDefault();
  });
}

main();
