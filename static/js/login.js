// The sign-in page: posts the name and password to /api/session (JSON), then goes back to the
// page that sent the user here (same site only) or, for auditors, to the audit trail.

import { currentSession, safeNext } from "./session.js";

const $ = (id) => document.getElementById(id);
const form = $("login");
const next = safeNext(new URLSearchParams(location.search).get("next"));

function showError(text) {
  $("error-message").textContent = text;
  $("error").hidden = false;
}

function destination(role) {
  if (role === "auditor" && next === "/") return "/static/audit.html";
  return next;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  $("error").hidden = true;
  $("sign-in").disabled = true;
  $("status").textContent = "Signing in…";
  try {
    const response = await fetch("/api/session", {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ username: form.elements.username.value, password: form.elements.password.value }),
    });
    if (response.ok) {
      const session = await response.json();
      location.replace(destination(session.role));
      return;
    }
    if (response.status === 409) {
      location.replace(next); // authentication is off on this server
      return;
    }
    let detail = `Sign-in failed (${response.status}).`;
    if (response.status === 401) detail = "Wrong user name or password, or the account is locked or disabled.";
    showError(detail);
    form.elements.password.value = "";
    form.elements.password.focus();
  } catch {
    showError("The server could not be reached. Check the connection and try again.");
  } finally {
    $("sign-in").disabled = false;
    $("status").textContent = "";
  }
});

// Already signed in (or no sign-in needed): straight on.
currentSession()
  .then((session) => {
    if (session && (!session.auth_enabled || session.username)) location.replace(destination(session.role));
  })
  .catch(() => {});
