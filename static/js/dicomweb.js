// Tiny shared DICOMweb client for Tessera's pages: QIDO-RS searches, DICOM JSON tag
// helpers, person-name and date formatting, and problem+json errors.
// Every string returned here comes from DICOM data: put it in the DOM with textContent.

import "./session.js"; // credentials, XSRF token and the trip to the login page on 401

export const DICOMWEB = "/dicom-web";

/** DICOM JSON tag keys (8 hex digits, upper case) by keyword, for the tags the pages read. */
export const TAG = Object.freeze({
  SOPClassUID: "00080016",
  SOPInstanceUID: "00080018",
  StudyDate: "00080020",
  StudyTime: "00080030",
  AccessionNumber: "00080050",
  Modality: "00080060",
  ModalitiesInStudy: "00080061",
  StudyDescription: "00081030",
  SeriesDescription: "0008103E",
  PatientName: "00100010",
  PatientID: "00100020",
  PatientBirthDate: "00100030",
  PatientSex: "00100040",
  StudyInstanceUID: "0020000D",
  SeriesInstanceUID: "0020000E",
  SeriesNumber: "00200011",
  InstanceNumber: "00200013",
  NumberOfStudyRelatedSeries: "00201206",
  NumberOfStudyRelatedInstances: "00201208",
  NumberOfSeriesRelatedInstances: "00201209",
  SamplesPerPixel: "00280002",
  PhotometricInterpretation: "00280004",
  NumberOfFrames: "00280008",
  Rows: "00280010",
  Columns: "00280011",
  PixelSpacing: "00280030",
  BitsStored: "00280101",
  PixelRepresentation: "00280103",
  WindowCenter: "00281050",
  WindowWidth: "00281051",
  RescaleIntercept: "00281052",
  RescaleSlope: "00281053",
  WindowCenterWidthExplanation: "00281055",
});

/** An error answered by the server; `detail` is the problem+json detail when there is one. */
export class ProblemError extends Error {
  constructor(status, title, detail) {
    super(detail || title || `HTTP ${status}`);
    this.name = "ProblemError";
    this.status = status;
    this.title = title || `HTTP ${status}`;
    this.detail = detail || "";
  }
}

/** Turn a failed fetch Response into a ProblemError (reading problem+json when offered). */
export async function problemFrom(response) {
  let title = response.statusText || `HTTP ${response.status}`;
  let detail = "";
  const type = response.headers.get("Content-Type") || "";
  try {
    if (type.includes("json")) {
      const body = await response.json();
      if (body && typeof body === "object") {
        title = typeof body.title === "string" ? body.title : title;
        detail = typeof body.detail === "string" ? body.detail : "";
      }
    } else {
      const text = (await response.text()).trim();
      if (text && text.length < 300 && !text.startsWith("<")) detail = text;
    }
  } catch {
    /* body unreadable: keep the status line */
  }
  return new ProblemError(response.status, title, detail);
}

/** A human sentence for any error (ProblemError, network failure, abort). */
export function describeError(error) {
  if (error instanceof ProblemError) {
    return error.detail ? `${error.title} (${error.status}): ${error.detail}` : `${error.title} (${error.status})`;
  }
  if (error && error.name === "TypeError") return "The server could not be reached. Check the connection and try again.";
  return String((error && error.message) || error);
}

/** fetch() that throws ProblemError on a non-2xx answer. */
export async function request(url, { accept, signal, priority } = {}) {
  const headers = accept ? { Accept: accept } : {};
  const init = { headers, signal, credentials: "same-origin" };
  if (priority) init.priority = priority;
  const response = await fetch(url, init);
  if (!response.ok) throw await problemFrom(response);
  return response;
}

/** GET a JSON document (application/json or application/dicom+json). */
export async function getJSON(url, { accept = "application/json", signal } = {}) {
  const response = await request(url, { accept, signal });
  if (response.status === 204) return [];
  return response.json();
}

/**
 * QIDO-RS search. `path` is "studies", "studies/{uid}/series" or ".../instances";
 * `params` is an object of query parameters (empty values are left out; arrays repeat the key).
 * Resolves to {items, more}: `more` is true when the server says there may be more results.
 */
export async function qido(path, params = {}, { signal } = {}) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value === undefined || value === null || value === "") continue;
    for (const v of Array.isArray(value) ? value : [value]) query.append(key, String(v));
  }
  const qs = query.toString();
  const url = `${DICOMWEB}/${path}${qs ? `?${qs}` : ""}`;
  const response = await request(url, { accept: "application/dicom+json", signal });
  const warning = response.headers.get("Warning") || "";
  const items = response.status === 204 ? [] : await response.json();
  return { items: Array.isArray(items) ? items : [], more: /more results/i.test(warning) };
}

/** All values of a tag in a DICOM JSON object ([] when absent). */
export function values(dataset, tag) {
  const element = dataset && dataset[tag];
  return element && Array.isArray(element.Value) ? element.Value : [];
}

/** The first value of a tag, or `fallback`. Person names come back as their Alphabetic string. */
export function value(dataset, tag, fallback = "") {
  const v = values(dataset, tag)[0];
  if (v === undefined || v === null) return fallback;
  if (typeof v === "object") return v.Alphabetic ?? v.Ideographic ?? v.Phonetic ?? fallback;
  return v;
}

/** A number value of a tag (DS/IS can arrive as strings), or `fallback`. */
export function number(dataset, tag, index = 0, fallback = null) {
  const v = values(dataset, tag)[index];
  const n = typeof v === "number" ? v : parseFloat(v);
  return Number.isFinite(n) ? n : fallback;
}

/** `Family^Given^Middle^Prefix^Suffix` → "Family, Given Middle" (prefix/suffix around it). */
export function formatPersonName(name) {
  if (name && typeof name === "object") name = name.Alphabetic ?? name.Ideographic ?? "";
  if (!name) return "";
  const [family = "", given = "", middle = "", prefix = "", suffix = ""] = String(name).split("=")[0].split("^");
  const first = [given, middle].filter(Boolean).join(" ");
  let out = family && first ? `${family}, ${first}` : family || first;
  if (prefix) out = `${prefix} ${out}`;
  if (suffix) out = `${out}, ${suffix}`;
  return out.trim();
}

/** DICOM DA "YYYYMMDD" → "YYYY-MM-DD" (ISO, unambiguous); anything else is returned as is. */
export function formatDate(da) {
  const s = String(da ?? "").trim();
  const m = /^(\d{4})\.?(\d{2})\.?(\d{2})$/.exec(s);
  return m ? `${m[1]}-${m[2]}-${m[3]}` : s;
}

/** DICOM TM "HHMMSS.frac" → "HH:MM" ; anything else is returned as is. */
export function formatTime(tm) {
  const s = String(tm ?? "").trim();
  const m = /^(\d{2}):?(\d{2})?/.exec(s);
  return m ? `${m[1]}:${m[2] || "00"}` : s;
}

/** "YYYY-MM-DD" (an <input type=date> value) → DICOM DA "YYYYMMDD". */
export function toDicomDate(isoDate) {
  return String(isoDate || "").replaceAll("-", "");
}

/** DICOM AS / birth date + sex in the compact form reading rooms use: "1961-03-04 (M)". */
export function formatBirthAndSex(birthDate, sex) {
  const parts = [formatDate(birthDate)];
  if (sex) parts.push(`(${sex})`);
  return parts.filter(Boolean).join(" ");
}

/** Base URL of one series' WADO-RS resources. */
export function seriesUrl(study, series) {
  return `${DICOMWEB}/studies/${encodeURIComponent(study)}/series/${encodeURIComponent(series)}`;
}

/** Create an element with a class and optional text (text set through textContent). */
export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

/**
 * A series/instance thumbnail <img>; when the server cannot make one (reports, waveforms,
 * slides without a preview) it is replaced by a quiet box naming the modality.
 */
export function thumbnail(src, { className = "thumb", label = "", size } = {}) {
  const img = el("img", className);
  img.alt = "";
  img.loading = "lazy";
  img.decoding = "async";
  if (size) {
    img.width = size;
    img.height = size;
  }
  img.addEventListener(
    "error",
    () => {
      const box = el("span", `${className} failed`, label || "No preview");
      box.title = "No preview available";
      img.replaceWith(box);
    },
    { once: true },
  );
  img.src = src;
  return img;
}
