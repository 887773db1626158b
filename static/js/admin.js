// User management for administrators: accounts (add, disable/enable, reset password, end
// sessions, study groups) and the study groups themselves, over /api/users and /api/groups.
// Every value from the server reaches the DOM through textContent only; every change is audited
// by the server and carries the session's XSRF token (session.js).

import "./session.js";

const $ = (id) => document.getElementById(id);
const RULES = ["modalities", "institutions", "departments", "issuers", "sop_classes", "studies"];

function showError(text) {
  $("error-message").textContent = text;
  $("error").hidden = !text;
}

function say(text) {
  $("status").textContent = text;
}

function cell(text, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  td.textContent = text;
  return td;
}

function button(label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.addEventListener("click", onClick);
  return b;
}

function list(text) {
  return String(text || "").split(",").map((v) => v.trim()).filter(Boolean);
}

async function call(method, url, body) {
  const init = { method, headers: { Accept: "application/json" } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(url, init);
  if (!response.ok) {
    let detail = "";
    try { detail = (await response.json()).detail || ""; } catch { /* not JSON */ }
    if (response.status === 403 && !detail) detail = "only administrators manage users";
    throw new Error(detail || `HTTP ${response.status}`);
  }
  return response.status === 204 ? null : response.json();
}

async function act(description, method, url, body) {
  showError("");
  try {
    await call(method, url, body);
    say(description);
    await load();
  } catch (error) {
    showError(`${description} failed: ${error.message}`);
  }
}

function userRow(user) {
  const tr = document.createElement("tr");
  tr.dataset.user = user.username;
  const name = encodeURIComponent(user.username);
  const actions = document.createElement("td");
  actions.className = "admin-actions";
  actions.append(
    user.disabled
      ? button("Enable", () => act(`${user.username} enabled`, "POST", `/api/users/${name}/enable`))
      : button("Disable", () => act(`${user.username} disabled`, "POST", `/api/users/${name}/disable`)),
    button("End sessions", () => act(`sessions of ${user.username} ended`, "POST", `/api/users/${name}/logout`)),
    button("Reset password", () => {
      const password = window.prompt(`New password for ${user.username} (at least 12 characters)`);
      if (password) act(`password of ${user.username} reset`, "POST", `/api/users/${name}/password`, { password });
    }),
    button("Groups…", () => {
      const value = window.prompt(
        `Study groups of ${user.username}, comma-separated (empty: every study)`,
        user.groups.join(", "),
      );
      if (value !== null) act(`groups of ${user.username} set`, "POST", `/api/users/${name}/groups`, { groups: list(value) });
    }),
  );
  tr.append(
    cell(user.username),
    cell(user.role),
    cell(user.full_name),
    cell(user.disabled ? "disabled" : "active", user.disabled ? "failure" : ""),
    cell(user.groups.length ? user.groups.join(", ") : "every study"),
    cell(String(user.active_sessions), "num"),
    cell(String(user.active_tokens), "num"),
    actions,
  );
  return tr;
}

function groupRow(group) {
  const tr = document.createElement("tr");
  tr.dataset.group = group.name;
  const rules = Object.entries(group.rules).map(([k, v]) => `${k}: ${v.join(", ")}`).join("\n");
  const actions = document.createElement("td");
  actions.append(
    button("Edit", () => {
      const form = $("new-group");
      form.elements.name.value = group.name;
      form.elements.description.value = group.description;
      for (const rule of RULES) form.elements[rule].value = (group.rules[rule] || []).join(", ");
      form.elements.name.focus();
    }),
    button("Remove", () => {
      if (window.confirm(`Remove study group ${group.name}? Its members lose it.`)) {
        act(`group ${group.name} removed`, "DELETE", `/api/groups/${encodeURIComponent(group.name)}`);
      }
    }),
  );
  tr.append(cell(group.name), cell(group.description), cell(rules, "admin-rules"), cell(group.members.join(", ")), actions);
  return tr;
}

async function load() {
  try {
    const [users, groups] = await Promise.all([call("GET", "/api/users"), call("GET", "/api/groups")]);
    $("user-rows").replaceChildren(...users.users.map(userRow));
    $("group-rows").replaceChildren(...groups.groups.map(groupRow));
  } catch (error) {
    showError(`Users could not be loaded: ${error.message}`);
  }
}

$("new-user").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  const body = {
    username: form.elements.username.value.trim(),
    role: form.elements.role.value,
    full_name: form.elements.full_name.value.trim(),
    password: form.elements.password.value,
    groups: list(form.elements.groups.value),
  };
  act(`user ${body.username} added`, "POST", "/api/users", body).then(() => {
    if ($("error").hidden) form.reset();
  });
});

$("new-group").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  const rules = {};
  for (const rule of RULES) {
    const values = list(form.elements[rule].value);
    if (values.length) rules[rule] = values;
  }
  const name = form.elements.name.value.trim();
  act(`group ${name} saved`, "PUT", `/api/groups/${encodeURIComponent(name)}`, {
    rules,
    description: form.elements.description.value.trim(),
  }).then(() => {
    if ($("error").hidden) form.reset();
  });
});

load();
