// BI-RADS report form: edits the report document of GET /mammography/reports/{study},
// saves it with POST (the server validates and stores a DICOM SR), and links the printable
// report and lay letter. Marks drawn in the viewer (sessionStorage) can be attached to findings.
// Every DICOM-derived string reaches the DOM through textContent.

import "/static/js/session.js"; // credentials, XSRF token, login on 401 (see static/js/session.js)
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(window.location.search);
const study = params.get("study");
const BASE = `/mammography/reports/${encodeURIComponent(study || "")}`;
let lexicon = null;
let images = [];
let findings = [];

function el(tag, text, attributes = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, v);
  return node;
}

function options(select, entries, selected, empty = "—") {
  select.replaceChildren(el("option", empty, { value: "" }));
  for (const [value, label] of entries) {
    const option = el("option", label, { value });
    option.selected = value === selected;
    select.append(option);
  }
}

function viewerMarks() {
  try {
    return JSON.parse(sessionStorage.getItem(`tessera.mammo.marks.${study}`) || "[]");
  } catch {
    return [];
  }
}

function assessmentEntries() {
  return Object.entries(lexicon.assessments).map(([k, v]) => [k, `${k} – ${v.label}`]);
}

function renderFindings() {
  const list = $("findings");
  list.replaceChildren();
  findings.forEach((f, index) => {
    const li = el("li");
    li.dataset.finding = String(index);
    const field = (label, node, name) => {
      node.dataset.field = name;
      const wrap = el("label", label);
      wrap.append(node);
      li.append(wrap);
      return node;
    };
    const side = field("Breast", el("select"), "laterality");
    options(side, [["R", "Right"], ["L", "Left"]], f.laterality, "?");
    side.addEventListener("change", () => { f.laterality = side.value; });
    const kind = field("Type", el("select"), "kind");
    options(kind, Object.entries(lexicon.finding_types).map(([k, v]) => [k, v.label]), f.kind, "?");
    kind.addEventListener("change", () => { f.kind = kind.value; f.descriptors = {}; renderFindings(); });
    const clock = field("Location", el("select"), "clock");
    options(clock, lexicon.clock_positions.map((c) => [c, /^\d+$/.test(c) ? `${c} o'clock` : c]), f.clock);
    clock.addEventListener("change", () => { f.clock = clock.value; });
    const depth = field("Depth", el("select"), "depth");
    options(depth, lexicon.depths.map((d) => [d, d]), f.depth);
    depth.addEventListener("change", () => { f.depth = depth.value; });
    const distance = field("From nipple (mm)", el("input", null, { type: "number", min: "0", step: "0.5" }), "distance");
    distance.value = f.distance_from_nipple_mm ?? "";
    distance.addEventListener("change", () => { f.distance_from_nipple_mm = distance.value === "" ? null : Number(distance.value); });
    const type = lexicon.finding_types[f.kind];
    for (const name of type ? type.descriptors : []) {
      const select = field(name[0].toUpperCase() + name.slice(1), el("select"), name);
      options(select, Object.keys(lexicon.descriptors[name].values).map((v) => [v, v]), f.descriptors[name] || "");
      select.addEventListener("change", () => {
        if (select.value) f.descriptors[name] = select.value;
        else delete f.descriptors[name];
      });
    }
    const assessment = field("BI-RADS", el("select"), "assessment");
    options(assessment, assessmentEntries(), f.assessment);
    assessment.addEventListener("change", () => { f.assessment = assessment.value; });
    const features = el("span", null, { class: "marks" });
    features.append(el("span", "Associated: "));
    for (const feature of lexicon.associated_features) {
      const box = el("input", null, { type: "checkbox" });
      box.checked = f.associated_features.includes(feature);
      box.addEventListener("change", () => {
        f.associated_features = box.checked ? [...f.associated_features, feature] : f.associated_features.filter((x) => x !== feature);
      });
      const wrap = el("label");
      wrap.append(box, document.createTextNode(feature));
      features.append(wrap);
    }
    li.append(features);
    const marks = el("span", null, { class: "marks" });
    marks.append(el("span", `Marked on: ${f.marks.map((m) => labelOf(m.sop_instance_uid)).join(", ") || "—"} `));
    const available = viewerMarks().filter((m) => !f.marks.some((x) => x.sop_instance_uid === m.sop && JSON.stringify(x.points) === JSON.stringify(m.points)));
    if (available.length) {
      const pick = el("select", null, { "data-field": "attach" });
      options(pick, available.map((m, i) => [String(i), `${m.label}: ${m.text}`]), "", "attach a viewer mark…");
      pick.addEventListener("change", () => {
        const m = available[Number(pick.value)];
        const image = images.find((i) => i.SOPInstanceUID === m.sop);
        f.marks.push({ sop_instance_uid: m.sop, sop_class_uid: image ? image.SOPClassUID : "", frame: m.frame || 0, points: m.points });
        renderFindings();
      });
      marks.append(pick);
    }
    const remove = el("button", "Remove finding", { type: "button" });
    remove.addEventListener("click", () => { findings.splice(index, 1); renderFindings(); });
    marks.append(remove);
    li.append(marks);
    list.append(li);
  });
}

function labelOf(sop) {
  const image = images.find((i) => i.SOPInstanceUID === sop);
  return image ? image.label : sop;
}

function fill(report) {
  const composition = $("composition");
  composition.replaceChildren();
  for (const [key, entry] of Object.entries(lexicon.composition)) {
    const radio = el("input", null, { type: "radio", name: "composition", value: key });
    radio.checked = report.composition === key;
    const label = el("label");
    label.append(radio, document.createTextNode(`${key.toUpperCase()}. ${entry.label}`));
    composition.append(label);
  }
  options($("assessment-right"), assessmentEntries(), report.assessment_right);
  options($("assessment-left"), assessmentEntries(), report.assessment_left);
  options($("assessment-overall"), assessmentEntries(), report.assessment_overall);
  const incomplete = $("incomplete");
  incomplete.replaceChildren(el("span", "Category 0 needs: "));
  for (const need of lexicon.incomplete_needs) {
    const box = el("input", null, { type: "checkbox", value: need });
    box.checked = report.incomplete_needs.includes(need);
    const label = el("label");
    label.append(box, document.createTextNode(need));
    incomplete.append(label);
  }
  incomplete.hidden = report.assessment_overall !== "0";
  $("recommendation").value = report.recommendation || "";
  $("comparison").value = report.comparison || "";
  $("narrative").value = report.narrative || "";
  $("reader").value = report.reader || "";
  findings = report.findings.map((f) => ({ ...f, descriptors: { ...f.descriptors }, associated_features: [...f.associated_features], marks: [...f.marks] }));
  renderFindings();
  updatePlaceholder();
}

function updatePlaceholder() {
  const overall = $("assessment-overall").value;
  $("incomplete").hidden = overall !== "0";
  $("recommendation").placeholder = overall ? lexicon.assessments[overall].recommendation : "the category's standard recommendation";
}

function collect() {
  const chosen = document.querySelector("input[name='composition']:checked");
  return {
    composition: chosen ? chosen.value : "",
    findings,
    assessment_right: $("assessment-right").value,
    assessment_left: $("assessment-left").value,
    assessment_overall: $("assessment-overall").value,
    incomplete_needs: [...$("incomplete").querySelectorAll("input:checked")].map((b) => b.value),
    recommendation: $("recommendation").value.trim(),
    comparison: $("comparison").value.trim(),
    narrative: $("narrative").value.trim(),
    reader: $("reader").value.trim(),
  };
}

function showSaved(saved) {
  $("saved").textContent = saved ? `Saved version ${saved.versions}` : "Not saved yet";
  $("outputs").hidden = !saved;
  for (const [id, path] of [["out-report-html", "report.html"], ["out-report-pdf", "report.pdf"], ["out-letter-html", "letter.html"], ["out-letter-pdf", "letter.pdf"]]) {
    $(id).href = `${BASE}/${path}`;
  }
}

async function save(event) {
  event.preventDefault();
  const problems = $("problems");
  problems.replaceChildren();
  const response = await fetch(BASE, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(collect()) });
  const body = await response.json();
  if (!response.ok) {
    for (const problem of body.problems || [body.detail || `${response.status}`]) problems.append(el("li", problem));
    return;
  }
  await load();
}

async function load() {
  if (!study) {
    $("error-message").textContent = "no study given";
    $("error").hidden = false;
    return;
  }
  const response = await fetch(BASE, { headers: { Accept: "application/json" } });
  const document_ = await response.json();
  if (!response.ok) {
    $("error-message").textContent = document_.detail || `${response.status}`;
    $("error").hidden = false;
    return;
  }
  lexicon = document_.lexicon;
  images = document_.images;
  $("viewer-link").href = `viewer.html?study=${encodeURIComponent(study)}`;
  $("who").textContent = `${images.length} images`;
  const empty = {
    composition: "", findings: [], assessment_right: "", assessment_left: "", assessment_overall: "",
    incomplete_needs: [], recommendation: "", comparison: "", narrative: "", reader: "",
  };
  fill(document_.report || empty);
  showSaved(document_.saved);
  document.body.dataset.loaded = "true";
}

$("add-finding").addEventListener("click", () => {
  findings.push({ laterality: "", kind: "", clock: "", depth: "", distance_from_nipple_mm: null, descriptors: {}, associated_features: [], assessment: "", marks: [] });
  renderFindings();
});
$("assessment-overall").addEventListener("change", updatePlaceholder);
$("form").addEventListener("submit", save);
load();
