// The audit trail for auditors: filters (user, event, outcome, study, patient, dates), newest
// first, paged, and export of the same selection as CSV or JSON lines.
// Every value shown comes from the audit records (user names, URLs, UIDs): textContent only.

import "./session.js";

const $ = (id) => document.getElementById(id);
const form = $("filters");
const rows = $("record-rows");
const PAGE = 50;
const OUTCOMES = { 0: "Success", 4: "Minor failure", 8: "Serious failure", 12: "Major failure" };
const ACTIONS = { C: "Create", R: "Read", U: "Update", D: "Delete", E: "Execute" };
let offset = 0;
// The study browser's grid keeps a detail column; the audit table uses the whole width (CSSOM, CSP-safe).
document.querySelector(".results").style.gridColumn = "1 / -1";

function cell(text, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  td.textContent = text;
  td.title = text; // the full value when the column cuts it short
  return td;
}

function filters() {
  const params = new URLSearchParams();
  for (const name of ["user", "event", "outcome", "study", "patient", "from", "to"]) {
    const value = form.elements[name].value.trim();
    if (value) params.set(name, value);
  }
  return params;
}

function showError(text) {
  $("error-message").textContent = text;
  $("error").hidden = false;
}

async function load() {
  $("error").hidden = true;
  const params = filters();
  for (const [id, format] of [["export-csv", "csv"], ["export-jsonl", "jsonl"]]) {
    const exportParams = new URLSearchParams(params);
    exportParams.set("format", format);
    $(id).href = `/api/audit/export?${exportParams}`;
  }
  params.set("offset", String(offset));
  params.set("limit", String(PAGE));
  $("status").textContent = "Loading…";
  let page;
  try {
    const response = await fetch(`/api/audit?${params}`, { headers: { Accept: "application/json" } });
    if (response.status === 403) {
      showError("Only auditors and administrators may read the audit trail.");
      $("status").textContent = "";
      return;
    }
    if (!response.ok) {
      let detail = "";
      try { detail = (await response.json()).detail || ""; } catch { /* not JSON */ }
      throw new Error(detail || `HTTP ${response.status}`);
    }
    page = await response.json();
  } catch (error) {
    showError(`The audit trail could not be loaded: ${error.message}`);
    $("status").textContent = "";
    return;
  }
  rows.replaceChildren();
  for (const record of page.records) {
    const tr = document.createElement("tr");
    tr.dataset.seq = String(record.seq);
    const event = record.event_type_name ? `${record.event_name} · ${record.event_type_name}` : record.event_name;
    const outcome = OUTCOMES[record.outcome] || String(record.outcome);
    const objects = [...record.study_uids, ...record.patient_ids.map((id) => `patient ${id}`)].join("\n");
    tr.append(
      cell(String(record.seq), "num"),
      cell(record.occurred_at.replace("T", " ").replace("Z", ""), "date"),
      cell(`${event} (${record.event_id})`),
      cell(ACTIONS[record.action] || record.action),
      cell(record.outcome_detail ? `${outcome}: ${record.outcome_detail}` : outcome, record.outcome ? "failure" : ""),
      cell(record.username ? `${record.username} (${record.auth_method})` : record.auth_method),
      cell(record.client_address),
      cell(record.http_method ? `${record.http_method} ${record.resource}` : record.resource),
      cell(objects),
    );
    rows.append(tr);
  }
  const last = Math.min(page.offset + page.records.length, page.total);
  $("status").textContent = page.total
    ? `Records ${page.offset + 1}–${last} of ${page.total}, newest first`
    : "No records match.";
  $("prev").disabled = offset === 0;
  $("next").disabled = last >= page.total;
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  offset = 0;
  load();
});
$("prev").addEventListener("click", () => { offset = Math.max(0, offset - PAGE); load(); });
$("next").addEventListener("click", () => { offset += PAGE; load(); });
load();
