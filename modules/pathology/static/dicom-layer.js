// The read-only layer of a slide's DICOM annotations in the archive (bulk annotations, TID 1500
// measurement reports), drawn dashed over one OpenSeadragon viewer with a toggle per source.
// The single and side-by-side viewers share it. Every DICOM string goes in with textContent.
import { formatArea, formatLength } from './measure.js';

const SVG = 'http://www.w3.org/2000/svg';
const SOURCE_COLORS = ['#5fb3ff', '#ff7ad9', '#7dff9a', '#ffa24d', '#c59bff', '#4de1ff'];
const KIND_LABELS = { annotations: 'Bulk annotations', 'measurement-report': 'Measurement report' };

export function svgElement(name, attributes) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  return element;
}

function sourceColor(index) {
  return SOURCE_COLORS[index % SOURCE_COLORS.length];
}

function formatDicomDate(date) {
  return date && date.length === 8 ? `${date.slice(0, 4)}-${date.slice(4, 6)}-${date.slice(6)}` : date || '';
}

function formatMeasurement(m) {
  if (m.unit === 'um') return formatLength(m.value);
  if (m.unit === 'mm2') return formatArea(m.value * 1e6);
  return `${m.value} ${m.unit}`;
}

/** GeoJSON geometry → lists of level-0 points, each drawn as one shape. */
function dicomShapes(geometry) {
  const toPoint = ([x, y]) => ({ x, y });
  if (geometry.type === 'Point') return [{ kind: 'point', points: [toPoint(geometry.coordinates)] }];
  if (geometry.type === 'MultiPoint') return geometry.coordinates.map((c) => ({ kind: 'point', points: [toPoint(c)] }));
  if (geometry.type === 'LineString') return [{ kind: 'line', points: geometry.coordinates.map(toPoint) }];
  if (geometry.type === 'Polygon') return [{ kind: 'polygon', points: geometry.coordinates[0].slice(0, -1).map(toPoint) }];
  return [];
}

export class DicomLayer {
  /**
   * svg: the overlay drawn into; list: the <ol> of sources; note: where "none" or an error is said;
   * viewer: the OpenSeadragon viewer; toScreen: level-0 image point → viewer element point;
   * fetchJson: the page's fetch (its error message is the problem's detail).
   */
  constructor({ svg, list, note, viewer, toScreen, fetchJson }) {
    Object.assign(this, { svg, list, note, viewer, toScreen, fetchJson });
    this.features = [];
    this.sources = [];
    this.hidden = new Set();
    this.shown = true;
    this.url = null;
  }

  /** Forget the current slide's layer (another slide is being opened). */
  clear() {
    this.url = null;
    this.features = [];
    this.sources = [];
    this.hidden = new Set();
    this.listSources();
    this.draw();
  }

  /** Load the slide's layer from its /dicom-annotations URL; the number of shapes, or null when
   *  another slide was opened meanwhile. */
  async load(url) {
    this.url = url;
    try {
      const collection = await this.fetchJson(url);
      if (this.url !== url) return null;
      this.features = collection.features;
      this.sources = collection.sources;
      this.hidden = new Set();
      this.note.textContent = collection.sources.length ? '' : 'None in the archive for this slide';
    } catch (error) {
      if (this.url !== url) return null;
      this.features = [];
      this.sources = [];
      this.note.textContent = `DICOM annotations: ${error.message}`;
    }
    this.listSources();
    this.draw();
    return this.features.length;
  }

  setShown(shown) {
    this.shown = shown;
    this.draw();
  }

  listSources() {
    this.list.replaceChildren(
      ...this.sources.map((source, index) => {
        const item = document.createElement('li');
        const label = document.createElement('label');
        const box = document.createElement('input');
        box.type = 'checkbox';
        box.checked = !this.hidden.has(index);
        box.addEventListener('change', () => {
          if (box.checked) this.hidden.delete(index);
          else this.hidden.add(index);
          this.draw();
        });
        const swatch = document.createElement('span');
        swatch.className = 'swatch';
        swatch.style.backgroundColor = sourceColor(index);
        const text = document.createElement('span');
        const title = source.series_description || source.content_label || KIND_LABELS[source.kind] || source.kind;
        const details = [KIND_LABELS[source.kind], source.manufacturer, formatDicomDate(source.content_date), `${source.features} shape(s)`];
        text.textContent = `${title} — ${details.filter(Boolean).join(' · ')}`;
        label.append(box, swatch, text);
        item.append(label);
        if (source.error) {
          const error = document.createElement('span');
          error.className = 'error';
          error.textContent = `Not shown: ${source.error}`;
          item.append(error);
        }
        return item;
      }),
    );
  }

  draw() {
    if (!this.viewer || !this.viewer.world.getItemCount() || !this.shown) {
      this.svg.replaceChildren();
      return;
    }
    const shapes = [];
    for (const feature of this.features) {
      const { source, label, measurements } = feature.properties;
      if (this.hidden.has(source)) continue;
      const color = sourceColor(source);
      for (const shape of dicomShapes(feature.geometry)) {
        const screen = shape.points.map(this.toScreen);
        if (shape.kind === 'point') {
          shapes.push(svgElement('circle', { cx: screen[0].x, cy: screen[0].y, r: 5, fill: 'none', stroke: color, 'stroke-width': 2 }));
        } else {
          const closed = shape.kind === 'polygon';
          shapes.push(
            svgElement(closed ? 'polygon' : 'polyline', {
              points: screen.map((p) => `${p.x.toFixed(1)},${p.y.toFixed(1)}`).join(' '),
              class: closed ? 'dicom' : 'dicom-open',
              stroke: color,
              fill: color,
            }),
          );
        }
        const text = [label, ...(measurements || []).map(formatMeasurement)].filter(Boolean).join(' · ');
        if (text) {
          const last = screen[screen.length - 1];
          const node = svgElement('text', { x: last.x + 8, y: last.y + 16, class: 'measure-label' });
          node.textContent = text;
          shapes.push(node);
        }
      }
    }
    this.svg.replaceChildren(...shapes);
  }
}
