// The study browser at "/": search (QIDO-RS), paged results, a study's series with
// thumbnails, and an "Open" link to the viewer of the module that claims each series.
// DICOM-derived strings only ever reach the DOM through textContent.

import {
  TAG, qido, getJSON, value, values, number, formatPersonName, formatDate, formatTime,
  toDicomDate, describeError, seriesUrl, el, thumbnail,
} from "./dicomweb.js";

const $ = (id) => document.getElementById(id);
const form = $("search");
const rowsBody = $("study-rows");
const statusLine = $("status");
const detail = $("detail");
const limitSelect = $("f-limit");
const prevButton = $("prev");
const nextButton = $("next");
const COLUMNS = 9;

const state = {
  offset: 0,
  limit: 25,
  selected: null, // StudyInstanceUID
  searchController: null,
  detailController: null,
};

// ---- error banner --------------------------------------------------------

function showError(error) {
  $("error-message").textContent = describeError(error);
  $("error").hidden = false;
}
function clearError() {
  $("error").hidden = true;
  $("error-message").textContent = "";
}
$("error-close").addEventListener("click", clearError);

// ---- URL <-> form --------------------------------------------------------

const FIELDS = ["PatientName", "PatientID", "AccessionNumber", "from", "to", "ModalitiesInStudy"];

function readUrl() {
  const params = new URLSearchParams(location.search);
  for (const name of FIELDS) form.elements[name].value = params.get(name) || "";
  state.offset = Math.max(0, parseInt(params.get("offset") || "0", 10) || 0);
  const limit = parseInt(params.get("limit") || "25", 10);
  state.limit = [25, 50, 100].includes(limit) ? limit : 25;
  limitSelect.value = String(state.limit);
  state.selected = params.get("study") || null;
}

function writeUrl() {
  const params = new URLSearchParams();
  for (const name of FIELDS) {
    const v = form.elements[name].value.trim();
    if (v) params.set(name, v);
  }
  if (state.offset) params.set("offset", String(state.offset));
  if (state.limit !== 25) params.set("limit", String(state.limit));
  if (state.selected) params.set("study", state.selected);
  const qs = params.toString();
  const url = qs ? `/?${qs}` : "/";
  history.replaceState(null, "", url);
  try {
    sessionStorage.setItem("tessera.browserUrl", url); // the viewers' "back to studies" link
  } catch {
    /* storage disabled: the viewers fall back to the study's own link */
  }
}

/** Form values → QIDO-RS query parameters. */
function queryFromForm() {
  const f = form.elements;
  const hasWildcard = (s) => /[*?]/.test(s);
  const name = f.PatientName.value.trim();
  const id = f.PatientID.value.trim();
  const accession = f.AccessionNumber.value.trim();
  const from = toDicomDate(f.from.value);
  const to = toDicomDate(f.to.value);
  const params = {
    // A plain name matches anywhere in the name ("doe" finds "Doe^John", "john" too).
    PatientName: name ? (hasWildcard(name) ? name : `*${name}*`) : "",
    PatientID: id ? (hasWildcard(id) ? id : `${id}*`) : "",
    AccessionNumber: accession ? (hasWildcard(accession) ? accession : `${accession}*`) : "",
    StudyDate: from || to ? `${from}-${to}` : "",
    ModalitiesInStudy: f.ModalitiesInStudy.value,
    fuzzymatching: name ? "true" : "",
    includefield: ["StudyDescription", "PatientBirthDate", "PatientSex"],
  };
  return params;
}

// ---- search --------------------------------------------------------------

function placeholderRow(content) {
  const tr = el("tr");
  const td = el("td", "placeholder");
  td.colSpan = COLUMNS;
  if (typeof content === "string") td.textContent = content;
  else td.append(...content);
  tr.append(td);
  return tr;
}

async function search() {
  clearError();
  const { from, to } = form.elements;
  if (from.value && to.value && from.value > to.value) {
    showError(new Error("The study date range starts after it ends: swap the dates."));
    from.focus();
    return;
  }
  state.searchController?.abort();
  const controller = new AbortController();
  state.searchController = controller;
  writeUrl();
  const params = { ...queryFromForm(), limit: state.limit, offset: state.offset };
  $("studies").setAttribute("aria-busy", "true");
  statusLine.textContent = "Searching…";
  rowsBody.replaceChildren(placeholderRow([el("span", "spinner"), document.createTextNode("Searching…")]));
  prevButton.disabled = true;
  nextButton.disabled = true;
  try {
    const { items, more } = await qido("studies", params, { signal: controller.signal });
    if (controller.signal.aborted) return;
    renderResults(items, more);
  } catch (error) {
    if (error.name === "AbortError") return;
    rowsBody.replaceChildren(placeholderRow("The search failed."));
    statusLine.textContent = "";
    prevButton.disabled = state.offset === 0;
    showError(error);
  } finally {
    if (state.searchController === controller) $("studies").removeAttribute("aria-busy");
  }
}

function renderResults(items, more) {
  const first = state.offset + 1;
  const last = state.offset + items.length;
  if (items.length === 0) {
    rowsBody.replaceChildren(
      placeholderRow(state.offset ? "No more studies." : "No studies match this search."),
    );
    statusLine.textContent = state.offset ? "No more studies" : "No studies found";
  } else {
    rowsBody.replaceChildren(...items.map(studyRow));
    statusLine.textContent = `Studies ${first}–${last}${more ? " (more available)" : ""}`;
  }
  prevButton.disabled = state.offset === 0;
  nextButton.disabled = !more;
  if (state.selected) {
    const row = rowFor(state.selected);
    if (row) row.setAttribute("aria-selected", "true");
  }
}

function studyRow(study) {
  const uid = value(study, TAG.StudyInstanceUID);
  const tr = el("tr");
  tr.tabIndex = 0;
  tr.dataset.study = uid;
  tr.setAttribute("aria-selected", "false");
  const cells = [
    el("td", "patient-name", formatPersonName(value(study, TAG.PatientName))),
    el("td", "", value(study, TAG.PatientID)),
    el("td", "date", formatDate(value(study, TAG.PatientBirthDate))),
    el("td", "date", formatDate(value(study, TAG.StudyDate))),
    el("td", "", value(study, TAG.StudyDescription)),
    el("td", "", value(study, TAG.AccessionNumber)),
    el("td"),
    el("td", "num", value(study, TAG.NumberOfStudyRelatedSeries)),
    el("td", "num", value(study, TAG.NumberOfStudyRelatedInstances)),
  ];
  cells[0].title = value(study, TAG.PatientName);
  cells[3].title = [formatDate(value(study, TAG.StudyDate)), formatTime(value(study, TAG.StudyTime))].filter(Boolean).join(" ");
  cells[4].title = value(study, TAG.StudyDescription);
  for (const modality of values(study, TAG.ModalitiesInStudy)) cells[6].append(el("span", "modality-chip", modality));
  tr.append(...cells);
  return tr;
}

function rowFor(uid) {
  return [...rowsBody.querySelectorAll("tr[data-study]")].find((tr) => tr.dataset.study === uid) || null;
}

// ---- study detail --------------------------------------------------------

async function selectStudy(uid, { focusFirstSeries = false } = {}) {
  state.selected = uid;
  writeUrl();
  for (const tr of rowsBody.querySelectorAll("tr[data-study]")) {
    tr.setAttribute("aria-selected", String(tr.dataset.study === uid));
  }
  state.detailController?.abort();
  const controller = new AbortController();
  state.detailController = controller;
  detail.setAttribute("aria-busy", "true");
  detail.replaceChildren(el("p", "empty", ""));
  detail.firstChild.append(el("span", "spinner"), document.createTextNode("Loading series…"));
  try {
    const study = await getJSON(`/api/studies/${encodeURIComponent(uid)}`, { signal: controller.signal });
    if (controller.signal.aborted) return;
    renderDetail(study);
    if (focusFirstSeries) detail.querySelector("a.open")?.focus();
  } catch (error) {
    if (error.name === "AbortError") return;
    detail.replaceChildren(el("p", "empty", "This study could not be loaded."));
    showError(error);
  } finally {
    if (state.detailController === controller) detail.removeAttribute("aria-busy");
  }
}

function renderDetail(study) {
  const patient = study.patient || {};
  const nodes = [];
  nodes.push(el("h2", "", formatPersonName(patient.PatientName) || "(no name)"));
  nodes.push(el("p", "sub", study.StudyDescription || "(no description)"));
  const dl = el("dl");
  const facts = [
    ["Patient ID", patient.PatientID],
    ["Birth date", [formatDate(patient.PatientBirthDate), patient.PatientSex].filter(Boolean).join(" · ")],
    ["Study date", [formatDate(study.StudyDate), formatTime(study.StudyTime)].filter(Boolean).join(" ")],
    ["Accession", study.AccessionNumber],
    ["Referring", formatPersonName(study.ReferringPhysicianName)],
    ["Modalities", (study.ModalitiesInStudy || []).join(", ")],
  ];
  for (const [label, text] of facts) {
    if (!text) continue;
    dl.append(el("dt", "", label), el("dd", "", text));
  }
  nodes.push(dl);

  const series = study.series || [];
  if (series.length === 0) {
    nodes.push(el("p", "empty", "This study has no series."));
  } else {
    const list = el("ul", "series-list");
    list.setAttribute("aria-label", "Series");
    for (const s of series) list.append(seriesCard(study.StudyInstanceUID, s));
    nodes.push(list);
  }
  detail.replaceChildren(...nodes);
}

function seriesCard(studyUid, s) {
  const li = el("li", "series-card");
  li.dataset.series = s.SeriesInstanceUID;
  const img = thumbnail(`${seriesUrl(studyUid, s.SeriesInstanceUID)}/thumbnail?viewport=96,96`, {
    label: s.Modality || "",
    size: 96,
  });

  const meta = el("div", "meta");
  const title = [s.SeriesNumber != null ? `#${s.SeriesNumber}` : "", s.SeriesDescription || "(no description)"]
    .filter(Boolean)
    .join(" ");
  meta.append(el("span", "title", title));
  const count = s.NumberOfSeriesRelatedInstances;
  meta.append(
    el("span", "facts", [s.Modality, s.BodyPartExamined, s.Laterality, count != null ? `${count} image${count === 1 ? "" : "s"}` : ""]
      .filter(Boolean)
      .join(" · ")),
  );
  meta.append(
    s.module
      ? el("span", "module", `${s.module.title} viewer`)
      : el("span", "module generic", "Generic image viewer"),
  );
  const open = el("a", "button-link open", "Open");
  open.href = safeViewerUrl(s.viewer_url);
  open.setAttribute("aria-label", `Open series ${title} in the ${s.module ? s.module.title : "generic"} viewer`);
  const openRow = el("span", "open");
  openRow.append(open);
  meta.append(openRow);
  li.append(img, meta);
  li.addEventListener("dblclick", () => { location.href = open.href; });
  return li;
}

/** Only same-origin relative paths are followed; anything else falls back to the generic viewer. */
function safeViewerUrl(url) {
  if (typeof url === "string" && url.startsWith("/") && !url.startsWith("//")) return url;
  return "/viewer/";
}

// ---- events --------------------------------------------------------------

form.addEventListener("submit", (event) => {
  event.preventDefault();
  state.offset = 0;
  search();
});
$("clear").addEventListener("click", () => {
  form.reset();
  state.offset = 0;
  search();
  form.elements.PatientName.focus();
});
form.elements.ModalitiesInStudy.addEventListener("change", () => {
  state.offset = 0;
  search();
});
limitSelect.addEventListener("change", () => {
  state.limit = parseInt(limitSelect.value, 10);
  state.offset = 0;
  search();
});
prevButton.addEventListener("click", () => {
  state.offset = Math.max(0, state.offset - state.limit);
  search();
});
nextButton.addEventListener("click", () => {
  state.offset += state.limit;
  search();
});

rowsBody.addEventListener("click", (event) => {
  const tr = event.target.closest("tr[data-study]");
  if (tr) selectStudy(tr.dataset.study);
});
rowsBody.addEventListener("keydown", (event) => {
  const tr = event.target.closest("tr[data-study]");
  if (!tr) return;
  const rows = [...rowsBody.querySelectorAll("tr[data-study]")];
  const i = rows.indexOf(tr);
  let target = null;
  switch (event.key) {
    case "ArrowDown": target = rows[Math.min(rows.length - 1, i + 1)]; break;
    case "ArrowUp": target = rows[Math.max(0, i - 1)]; break;
    case "Home": target = rows[0]; break;
    case "End": target = rows[rows.length - 1]; break;
    case "Enter":
    case " ":
      event.preventDefault();
      selectStudy(tr.dataset.study, { focusFirstSeries: event.key === "Enter" });
      return;
    default: return;
  }
  event.preventDefault();
  target?.focus();
});
detail.addEventListener("keydown", (event) => {
  if (event.key === "Escape" && state.selected) {
    event.preventDefault();
    rowFor(state.selected)?.focus();
  }
});
document.addEventListener("keydown", (event) => {
  const typing = event.target.closest("input, select, textarea");
  if (event.key === "/" && !typing) {
    event.preventDefault();
    form.elements.PatientName.focus();
    form.elements.PatientName.select();
  } else if (event.key === "Escape" && typing && event.target.type === "search" && !event.target.value) {
    rowsBody.querySelector("tr[data-study]")?.focus();
  }
});

readUrl();
search();
if (state.selected) selectStudy(state.selected);
