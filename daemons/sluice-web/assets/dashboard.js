// sluice dashboard: asks for the API token once (kept in sessionStorage, sent as a bearer
// header, never a cookie), then shows job counts, the newest jobs and the newest documents
// from the JSON API. No data is in the page itself; without a token it shows only the form.
"use strict";

const base = document.body.dataset.base.replace(/\/$/, "");
const tokenKey = "sluice-token";

function element(tag, text) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function table(target, headings, rows) {
  const out = document.getElementById(target);
  out.replaceChildren();
  const head = element("tr");
  for (const heading of headings) head.append(element("th", heading));
  out.append(head);
  for (const row of rows) {
    const line = element("tr");
    for (const cell of row) line.append(element("td", cell));
    out.append(line);
  }
}

async function api(path) {
  const token = sessionStorage.getItem(tokenKey);
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const response = await fetch(base + path, { headers });
  const body = await response.json();
  if (!response.ok) {
    const error = new Error(body.error ? body.error.message : response.statusText);
    error.status = response.status;
    throw error;
  }
  return body;
}

function say(text) {
  document.getElementById("message").textContent = text;
}

async function refresh() {
  try {
    const [status, jobs, documents] = await Promise.all([
      api("/api/status"),
      api("/api/jobs?limit=20"),
      api("/api/documents?limit=20"),
    ]);
    const states = Object.keys(status.jobs);
    table("counts", states, [states.map((state) => status.jobs[state])]);
    table(
      "jobs",
      ["id", "kind", "state", "attempts", "error"],
      jobs.items.map((job) => [
        job.id, job.kind, job.state, job.attempts + "/" + job.max_attempts, job.error || "",
      ]),
    );
    table(
      "documents",
      ["id", "name", "type", "size", "sha256"],
      documents.items.map((d) => [d.id, d.original_name, d.mime, d.size, d.sha256]),
    );
    document.getElementById("login").hidden = true;
    document.getElementById("data").hidden = false;
    say("");
  } catch (error) {
    if (error.status === 401) {
      sessionStorage.removeItem(tokenKey);
      document.getElementById("login").hidden = false;
      document.getElementById("data").hidden = true;
    }
    say(error.message);
  }
}

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  const field = document.getElementById("token");
  sessionStorage.setItem(tokenKey, field.value.trim());
  field.value = "";
  refresh();
});

refresh();
setInterval(refresh, 5000);
