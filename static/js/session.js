// Login state shared by every page: the XSRF token on state-changing requests, a trip to the
// login page when the server answers 401, and a "signed in as … · Sign out" corner in the top bar.
// When authentication is off on the server none of this shows or changes anything.
// Strings from the server reach the DOM through textContent only.

const XSRF_COOKIE = "tessera_xsrf";
const XSRF_HEADER = "X-XSRF-Token";
const SAFE_METHODS = new Set(["GET", "HEAD", "OPTIONS"]);
const LOGIN_PAGE = "/static/login.html";

/** The XSRF token the server set at login (a readable cookie), or "". */
export function xsrfToken() {
  for (const part of document.cookie.split(";")) {
    const [name, ...rest] = part.trim().split("=");
    if (name === XSRF_COOKIE) return decodeURIComponent(rest.join("="));
  }
  return "";
}

/** A same-site path to go back to after login; anything else (other hosts, "//x") becomes "/". */
export function safeNext(raw) {
  const value = String(raw || "");
  if (!value.startsWith("/") || value.startsWith("//") || value.startsWith("/\\")) return "/";
  return value;
}

/** The login page, coming back to `next` (default: where we are). */
export function loginUrl(next = location.pathname + location.search + location.hash) {
  return `${LOGIN_PAGE}?next=${encodeURIComponent(safeNext(next))}`;
}

let redirecting = false;
function toLogin() {
  if (redirecting || location.pathname === LOGIN_PAGE) return;
  redirecting = true;
  location.assign(loginUrl());
}

const plainFetch = window.fetch.bind(window);

/** fetch() with the session's credentials and XSRF token; a 401 sends the user to the login page. */
async function sessionFetch(input, init = {}) {
  const isRequest = typeof Request !== "undefined" && input instanceof Request;
  const url = new URL(isRequest ? input.url : String(input), location.href);
  const sameOrigin = url.origin === location.origin;
  const method = String(init.method || (isRequest ? input.method : "GET")).toUpperCase();
  let options = init;
  if (sameOrigin) {
    options = { ...init, credentials: "same-origin" };
    const token = xsrfToken();
    if (!SAFE_METHODS.has(method) && token) {
      const headers = new Headers(init.headers || (isRequest ? input.headers : undefined));
      headers.set(XSRF_HEADER, token);
      options.headers = headers;
    }
  }
  const response = await plainFetch(input, options);
  if (response.status === 401 && sameOrigin && !url.pathname.startsWith("/api/session")) toLogin();
  return response;
}

if (!window.__tesseraSession) {
  window.__tesseraSession = true;
  window.fetch = sessionFetch;
}

/** Who is signed in: {auth_enabled, username, role} or null when not signed in. */
export async function currentSession() {
  const response = await plainFetch("/api/session", { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (response.status === 401) return null;
  if (!response.ok) throw new Error(`session check failed (${response.status})`);
  return response.json();
}

export async function signOut() {
  await sessionFetch("/api/session", { method: "DELETE" });
  location.assign(LOGIN_PAGE);
}

function showIdentity(session) {
  const bar = document.querySelector(".topbar");
  if (!bar || bar.querySelector(".session-user")) return;
  const box = document.createElement("span");
  box.className = "hint session-user";
  box.textContent = `${session.username} · ${session.role}`;
  bar.append(box);
  if (session.role === "auditor" || session.role === "administrator") {
    const link = document.createElement("a");
    link.href = "/static/audit.html";
    link.textContent = "Audit trail";
    link.className = "session-audit";
    bar.append(link);
  }
  if (session.role === "administrator") {
    const link = document.createElement("a");
    link.href = "/static/admin.html";
    link.textContent = "Users";
    link.className = "session-admin";
    bar.append(link);
  }
  if (session.limited) showEmergency(bar, session);
  const button = document.createElement("button");
  button.type = "button";
  button.id = "sign-out";
  button.textContent = "Sign out";
  button.addEventListener("click", () => signOut());
  bar.append(button);
}

/** Break-glass: a limited account may lift its study-group limits for a while, giving a reason
 * (audited); while that lasts every page shows a banner with the reason and the end time. */
function showEmergency(bar, session) {
  const active = session.emergency;
  if (!active) {
    const start = document.createElement("button");
    start.type = "button";
    start.id = "emergency-start";
    start.textContent = "Emergency access…";
    start.title = `You see the studies of: ${session.groups.join(", ")}`;
    start.addEventListener("click", async () => {
      const reason = window.prompt(
        "Emergency access shows every study for 60 minutes and is recorded with your reason.\nReason:",
      );
      if (!reason) return;
      const response = await sessionFetch("/api/emergency", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ reason, minutes: 60 }),
      });
      if (response.ok) location.reload();
      else {
        let detail = "";
        try { detail = (await response.json()).detail || ""; } catch { /* not JSON */ }
        window.alert(`Emergency access refused: ${detail || response.status}`);
      }
    });
    bar.append(start);
    return;
  }
  const banner = document.createElement("div");
  banner.className = "banner emergency";
  banner.id = "emergency-banner";
  banner.setAttribute("role", "status");
  const message = document.createElement("span");
  message.className = "message";
  const until = new Date(active.expires_at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  message.textContent = `Emergency access until ${until}: every study is visible and each access is audited. Reason: ${active.reason}`;
  const stop = document.createElement("button");
  stop.type = "button";
  stop.id = "emergency-stop";
  stop.textContent = "End emergency access";
  stop.addEventListener("click", async () => {
    await sessionFetch("/api/emergency", { method: "DELETE" });
    location.reload();
  });
  banner.append(message, stop);
  bar.after(banner);
}

async function announce() {
  if (location.pathname === LOGIN_PAGE) return;
  try {
    const session = await currentSession();
    if (session === null) toLogin();
    else if (session.auth_enabled) showIdentity(session);
  } catch {
    /* the page's own requests will show what is wrong */
  }
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", announce, { once: true });
else announce();
