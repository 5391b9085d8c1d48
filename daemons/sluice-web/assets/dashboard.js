// sluice dashboard. Asks for the API token once (kept in sessionStorage, sent as a bearer
// header, never a cookie), checks it before showing anything, then loads status, jobs,
// downloads, sources and documents from the JSON API and follows GET /api/events with fetch()
// (an EventSource cannot send the header). When the stream drops it reconnects with backoff
// and, once the new stream is open, reads everything again, so nothing that happened during
// the drop is missed (the global stream has no replay; a fresh read is the catch-up).
// Everything shown is set with textContent: no server text is ever parsed as HTML.
"use strict";

const base = document.body.dataset.base.replace(/\/$/, "");
const tokenKey = "sluice-token";
const activeJobStates = "queued,running,retrying";
const jobStates = ["queued", "running", "retrying", "succeeded", "failed", "cancelled", "dead"];
const maxLogLines = 60;

const view = {
  status: null,
  recentJobs: [],
  activeJobs: [],
  downloads: [],
  sources: [],
  documents: [],
  query: "",
};
// Live values from events, between two reads of the API.
const jobProgress = new Map(); // job id -> { fraction, message }
const downloadProgress = new Map(); // download id -> { bytes, total, rate, at }
const thumbnailUrls = new Map(); // document id -> object URL (or null when it has none)

let stream = null; // { controller } of the open event stream
let reconnectTimer = null;
let reconnectDelay = 1000;
let refreshTimer = null;
let statusTimer = null;
let loading = null;
let streamDropped = false; // the stream broke and has not been open since

// --- small helpers ---

function $(id) {
  return document.getElementById(id);
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function badge(text) {
  return element("span", text, "badge " + String(text).replace(/[^a-z-]/g, ""));
}

function bytes(count) {
  if (count === null || count === undefined) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = Number(count);
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return (unit === 0 ? value : value.toFixed(1)) + " " + units[unit];
}

function duration(milliseconds) {
  let seconds = Math.max(0, Math.round(milliseconds / 1000));
  if (seconds < 60) return seconds + " s";
  const minutes = Math.floor(seconds / 60);
  seconds %= 60;
  if (minutes < 60) return minutes + " min" + (seconds ? " " + seconds + " s" : "");
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return hours + " h" + (minutes % 60 ? " " + (minutes % 60) + " min" : "");
  return Math.floor(hours / 24) + " days";
}

function relative(atMs) {
  if (!atMs) return "never";
  const difference = atMs - Date.now();
  return difference >= 0 ? "in " + duration(difference) : duration(-difference) + " ago";
}

function clock(date) {
  return date.toLocaleTimeString([], { hour12: false });
}

function say(text, kind) {
  const message = $("message");
  message.textContent = text || "";
  message.className = kind || "";
}

function table(id, headings, rows, emptyText) {
  const out = $(id);
  out.replaceChildren();
  const head = element("tr");
  for (const heading of headings) {
    const cell = element("th", typeof heading === "string" ? heading : heading.label);
    if (heading.className) cell.className = heading.className;
    head.append(cell);
  }
  const thead = element("thead");
  thead.append(head);
  const tbody = element("tbody");
  for (const row of rows) {
    const line = element("tr");
    if (row.id) line.id = row.id;
    for (const [index, value] of row.cells.entries()) {
      const cell = element("td");
      if (value instanceof Node) cell.append(value);
      else cell.textContent = value === null || value === undefined ? "" : String(value);
      const className = headings[index].className;
      if (className) cell.className = className;
      line.append(cell);
    }
    tbody.append(line);
  }
  if (rows.length === 0) {
    const line = element("tr");
    const cell = element("td", emptyText || "nothing", "empty");
    cell.colSpan = headings.length;
    line.append(cell);
    tbody.append(line);
  }
  out.append(thead, tbody);
}

// --- the API ---

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function authorization() {
  const token = sessionStorage.getItem(tokenKey);
  return token ? { Authorization: "Bearer " + token } : {};
}

async function api(path, options) {
  const request = Object.assign({}, options || {});
  request.headers = Object.assign({ Accept: "application/json" }, authorization(), request.headers || {});
  let response;
  try {
    response = await fetch(base + path, request);
  } catch (error) {
    throw new ApiError(0, "sluice-web cannot be reached (" + error.message + ")");
  }
  let body = null;
  try {
    body = await response.json();
  } catch (error) {
    body = null;
  }
  if (!response.ok) {
    const message = body && body.error ? body.error.message : response.status + " " + response.statusText;
    throw new ApiError(response.status, message);
  }
  return body;
}

// --- signing in and out ---

function showLogin(text) {
  stopStream();
  clearInterval(statusTimer);
  sessionStorage.removeItem(tokenKey);
  $("dashboard").hidden = true;
  $("connection").hidden = true;
  $("logout").hidden = true;
  $("updated").textContent = "";
  $("login").hidden = false;
  say(text || "", text ? "" : "info");
  $("token").focus();
}

async function signIn() {
  // The token is checked before anything is shown: a wrong one leaves only the form.
  try {
    // One request tells whether the token is good; only then is everything read.
    await api("/api/status");
    await loadAll();
  } catch (error) {
    if (error.status === 401) {
      showLogin("That token was refused: " + error.message + ". Enter the read or the admin token.");
    } else {
      showLogin("The dashboard cannot load: " + error.message);
      // Keep the token: the server, not the token, is the problem.
    }
    return;
  }
  $("login").hidden = true;
  $("dashboard").hidden = false;
  $("logout").hidden = false;
  $("connection").hidden = false;
  say("");
  connectStream();
  clearInterval(statusTimer);
  // Daemon health has no events of its own: it is read every few seconds.
  statusTimer = setInterval(() => {
    loadStatus().catch(handleLoadError);
  }, 5000);
}

function handleLoadError(error) {
  if (error.status === 401) {
    showLogin("The token is no longer accepted: " + error.message);
  } else {
    say("Could not refresh: " + error.message);
  }
}

// --- loading ---

async function loadStatus() {
  view.status = await api("/api/status");
  renderStatus();
  stamp();
}

async function loadDocuments() {
  const query = view.query ? "&q=" + encodeURIComponent(view.query) : "";
  const page = await api("/api/documents?limit=24" + query);
  view.documents = page.items;
  renderDocuments();
}

// Reads everything at once; rejects (and changes nothing) when any read fails.
function loadAll() {
  if (loading) return loading;
  loading = (async () => {
    try {
      await readEverything();
    } finally {
      loading = null;
    }
  })();
  return loading;
}

async function readEverything() {
  {
    const query = view.query ? "&q=" + encodeURIComponent(view.query) : "";
    const [status, recent, active, downloads, sources, documents] = await Promise.all([
      api("/api/status"),
      api("/api/jobs?limit=15"),
      api("/api/jobs?limit=200&state=" + activeJobStates),
      api("/api/downloads?limit=15"),
      api("/api/sources"),
      api("/api/documents?limit=24" + query),
    ]);
    view.status = status;
    view.recentJobs = recent.items;
    view.activeJobs = active.items;
    view.downloads = downloads.items;
    view.sources = sources.items;
    view.documents = documents.items;
    for (const id of jobProgress.keys()) {
      if (!view.activeJobs.some((job) => job.id === id)) jobProgress.delete(id);
    }
    for (const id of downloadProgress.keys()) {
      if (!view.downloads.some((download) => download.id === id && download.state === "running")) downloadProgress.delete(id);
    }
    renderAll();
    stamp();
  }
}

function refreshSoon() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(() => {
    refreshTimer = null;
    loadAll().catch(handleLoadError);
  }, 250);
}

function stamp() {
  $("updated").textContent = "updated " + clock(new Date());
}

// --- rendering ---

function renderAll() {
  renderStatus();
  renderActivity();
  renderJobs();
  renderDownloads();
  renderSources();
  renderDocuments();
}

function renderStatus() {
  const status = view.status;
  if (!status) return;
  $("store-path").textContent = status.store ? status.store.path : "";
  // systemd's view (unit state, PID, restarts) only where systemd runs the suite.
  const underSystemd = status.daemons.some((daemon) => daemon.unit && daemon.unit.active_state);
  const headings = ["daemon", "bus", "status"];
  if (underSystemd) headings.push({ label: "unit", className: "hide-narrow" }, { label: "pid", className: "number" }, { label: "restarts", className: "number" });
  table(
    "daemons",
    headings,
    status.daemons.map((daemon) => {
      const bus = element("span", null, "nowrap");
      bus.append(element("span", null, daemon.running ? "dot on" : "dot"), element("span", daemon.running ? "on bus" : "absent", "bus-text"));
      const line = element("div");
      line.append(element("div", daemon.state || (daemon.running ? "" : "not running")));
      if (daemon.status) line.append(element("div", daemon.status, "status-line"));
      if (daemon.last_error) line.append(element("div", "last error: " + daemon.last_error, "status-line"));
      const unit = daemon.unit || {};
      const unitText = unit.active_state ? unit.active_state + (unit.sub_state ? " (" + unit.sub_state + ")" : "") : "—";
      return {
        id: "daemon-" + daemon.name.replace(/[^A-Za-z0-9_-]/g, "_"),
        cells: [element("span", daemon.name, "nowrap"), bus, line].concat(
          underSystemd ? [unitText, unit.main_pid || "—", unit.restarts === null || unit.restarts === undefined ? "—" : unit.restarts] : [],
        ),
      };
    }),
    "no daemons",
  );
  const counts = $("counts");
  counts.replaceChildren();
  for (const state of jobStates) {
    const box = element("div", null, "count");
    box.id = "count-" + state;
    box.append(element("b", status.jobs[state] || 0), element("span", state));
    counts.append(box);
  }
}

function renderActivity() {
  // The queue by kind: what waits and runs now, from the active jobs.
  const kinds = new Map();
  for (const job of view.activeJobs) {
    const row = kinds.get(job.kind) || { queued: 0, running: 0, retrying: 0 };
    row[job.state] = (row[job.state] || 0) + 1;
    kinds.set(job.kind, row);
  }
  table(
    "kinds",
    ["kind", { label: "queued", className: "number" }, { label: "running", className: "number" }, { label: "retrying", className: "number" }],
    [...kinds.entries()].sort().map(([kind, row]) => ({ cells: [kind, row.queued, row.running, row.retrying] })),
    "the queue is empty",
  );

  const activity = $("activity");
  activity.replaceChildren();
  const running = view.activeJobs.filter((job) => job.state === "running");
  const downloads = view.downloads.filter((download) => download.state === "running" || download.state === "queued");
  for (const download of downloads) activity.append(downloadItem(download));
  for (const job of running) {
    if (job.kind === "download" && downloads.some((download) => download.job_id === job.id)) continue;
    activity.append(jobItem(job));
  }
  if (activity.childElementCount === 0) activity.append(element("p", "Nothing is running.", "empty"));
  $("activity-summary").textContent = running.length + " running, " + view.activeJobs.filter((job) => job.state !== "running").length + " waiting";
}

function jobItem(job) {
  const item = element("div", null, "activity-item");
  item.id = "running-job-" + job.id;
  const title = element("div", null, "title");
  title.append(element("strong", "job " + job.id), badge(job.kind), element("span", job.lease_owner || "", "status-line"));
  const live = jobProgress.get(job.id);
  const fraction = live ? live.fraction : job.progress;
  const bar = element("progress");
  bar.max = 1;
  if (fraction !== null && fraction !== undefined) bar.value = Math.min(1, Math.max(0, fraction));
  bar.setAttribute("aria-label", "progress of job " + job.id);
  const detail = element("div", null, "detail");
  const message = live ? live.message : job.progress_message;
  detail.append(element("span", fraction !== null && fraction !== undefined ? Math.round(fraction * 100) + "%" : "working"));
  if (message) detail.append(element("span", message));
  if (job.started_at_ms) detail.append(element("span", "started " + relative(job.started_at_ms)));
  item.append(title, bar, detail);
  return item;
}

function downloadItem(download) {
  const item = element("div", null, "activity-item");
  item.id = "running-download-" + download.id;
  const live = downloadProgress.get(download.id);
  const { done, total } = downloadBytes(download);
  const rate = live && live.rate ? live.rate : download.rate_bytes_per_second;
  const title = element("div", null, "title");
  title.append(element("strong", download.file_name || download.url), badge(download.state));
  const bar = element("progress");
  bar.setAttribute("aria-label", "download " + download.id);
  if (total) {
    bar.max = total;
    bar.value = Math.min(done, total);
  }
  const detail = element("div", null, "detail");
  detail.append(element("span", bytes(done) + (total ? " of " + bytes(total) + " (" + Math.floor((done / total) * 100) + "%)" : "")));
  if (rate) detail.append(element("span", bytes(rate) + "/s"));
  if (rate && total && total > done) detail.append(element("span", "ETA " + duration(((total - done) / rate) * 1000)));
  item.append(title, bar, detail);
  return item;
}

// The newer of the row read from the API and the last progress event: the row is saved less
// often than events are sent, so a fresh read may be behind what the page has already shown.
function downloadBytes(download) {
  const live = downloadProgress.get(download.id);
  const done = Math.max(download.bytes_done || 0, live ? live.bytes : 0);
  const total = download.bytes_total || (live ? live.total : null);
  return { done, total };
}

function actionButton(label, className, action) {
  const button = element("button", label, "small " + className);
  button.type = "button";
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await action();
      say("");
    } catch (error) {
      if (error.status === 403) say(label + " needs the admin token: " + error.message);
      else say(label + " failed: " + error.message);
    }
    refreshSoon();
  });
  return button;
}

function renderJobs() {
  table(
    "jobs",
    [{ label: "id", className: "number" }, "kind", "state", { label: "tries", className: "number hide-narrow" }, { label: "detail", className: "hide-narrow" }, "actions"],
    view.recentJobs.map((job) => {
      const actions = element("span", null, "actions");
      if (["failed", "dead", "cancelled"].includes(job.state)) {
        actions.append(actionButton("Retry", "quiet", () => api("/api/jobs/" + job.id + "/retry", { method: "POST" })));
      }
      if (["queued", "running", "retrying"].includes(job.state) && !job.cancel_requested) {
        actions.append(actionButton("Cancel", "danger", () => api("/api/jobs/" + job.id + "/cancel", { method: "POST" })));
      }
      const note = job.error || (job.cancel_requested ? "cancelling" : job.progress_message || "");
      return {
        id: "job-" + job.id,
        cells: [job.id, job.kind, badge(job.state), job.attempts + "/" + job.max_attempts, element("span", note, "status-line"), actions],
      };
    }),
    "no jobs yet",
  );
}

function renderDownloads() {
  table(
    "downloads",
    [{ label: "id", className: "number" }, "file", "state", { label: "size", className: "number" }, "actions"],
    view.downloads.map((download) => {
      const { done, total } = downloadBytes(download);
      const name = element("div");
      name.append(element("div", download.file_name), element("div", download.error || download.url, "status-line"));
      const actions = element("span", null, "actions");
      actions.append(actionButton("Delete", "danger", () => api("/api/downloads/" + download.id, { method: "DELETE" })));
      return {
        id: "download-" + download.id,
        cells: [download.id, name, badge(download.state), bytes(done) + (total && total !== done ? " / " + bytes(total) : ""), actions],
      };
    }),
    "no downloads",
  );
}

function renderSources() {
  table(
    "sources",
    ["source", "every", "last check", "next check", { label: "items", className: "number" }],
    view.sources.map((source) => {
      const name = element("div");
      name.append(element("div", source.name + (source.enabled ? "" : " (removed)")), element("div", source.mode + " · " + source.url, "status-line"));
      const last = element("div");
      last.append(element("div", relative(source.last_checked_at_ms)));
      if (source.last_outcome) last.append(badge(source.last_outcome));
      if (source.last_error) last.append(element("div", source.last_error, "status-line"));
      return {
        id: "source-" + source.id,
        cells: [name, duration(source.every_ms), last, source.enabled ? relative(source.next_check_at_ms) : "—", source.items_seen],
      };
    }),
    "no sources configured",
  );
}

function snippet(text) {
  // The store marks the matched words with [ and ]; they become <mark> elements here.
  const out = element("div", null, "snippet");
  const parts = String(text).split(/(\[[^\]]*\])/);
  for (const part of parts) {
    if (part.startsWith("[") && part.endsWith("]")) out.append(element("mark", part.slice(1, -1)));
    else if (part) out.append(document.createTextNode(part));
  }
  return out;
}

function renderDocuments() {
  const out = $("documents");
  out.replaceChildren();
  for (const document_ of view.documents) {
    const card = element("article", null, "document");
    card.id = "document-" + document_.id + (document_.page ? "-page-" + document_.page : "");
    card.dataset.documentId = document_.id;
    const thumbnail = element("div", null, "thumbnail");
    const kind = (document_.mime || "").split("/").pop();
    thumbnail.textContent = kind.slice(0, 8);
    showThumbnail(document_, thumbnail);
    const about = element("div", null, "about");
    about.append(element("div", document_.original_name, "name"));
    about.append(element("div", document_.mime + " · " + bytes(document_.size) + " · #" + document_.id + (document_.page ? " · page " + document_.page : ""), "meta"));
    if (document_.snippet) about.append(snippet(document_.snippet));
    card.append(thumbnail, about);
    out.append(card);
  }
  if (view.documents.length === 0) {
    out.append(element("p", view.query ? "No page matches " + JSON.stringify(view.query) + "." : "No documents yet: drop a file above.", "empty"));
  }
  $("documents-summary").textContent = view.query ? "matching " + JSON.stringify(view.query) : "newest first";
}

async function showThumbnail(document_, holder) {
  const metadata = document_.metadata || {};
  // A thumbnail is made by a job of its own after the ingest: until it has run, the card
  // shows the type, and the job's JobFinished event reads the documents again.
  if (metadata.thumbnail_job && !metadata.thumbnail && !metadata.thumbnail_error) holder.title = "thumbnail on its way";
  if (!metadata.thumbnail) return;
  let url = thumbnailUrls.get(document_.id);
  if (url === undefined) {
    // An <img src> cannot send the bearer header: the thumbnail is fetched and shown as a blob.
    thumbnailUrls.set(document_.id, null);
    try {
      const response = await fetch(base + "/api/documents/" + document_.id + "/thumbnail", { headers: authorization() });
      if (!response.ok) return;
      url = URL.createObjectURL(await response.blob());
      thumbnailUrls.set(document_.id, url);
    } catch (error) {
      thumbnailUrls.delete(document_.id);
      return;
    }
  }
  if (!url) return;
  const image = element("img");
  image.alt = "thumbnail of " + document_.original_name;
  image.src = url;
  holder.replaceChildren(image);
}

// --- the live event stream ---

function setConnection(state, text) {
  const badge_ = $("connection");
  badge_.className = state;
  badge_.textContent = text;
}

function stopStream() {
  clearTimeout(reconnectTimer);
  reconnectTimer = null;
  if (stream) stream.controller.abort();
  stream = null;
}

function scheduleReconnect(reason, retryAfterSeconds) {
  if (!sessionStorage.getItem(tokenKey) || reconnectTimer) return;
  stream = null;
  streamDropped = true;
  const delay = retryAfterSeconds ? retryAfterSeconds * 1000 : reconnectDelay;
  reconnectDelay = Math.min(reconnectDelay * 2, 30000);
  setConnection("reconnecting", reason + "; reconnecting in " + Math.round(delay / 1000) + " s");
  reconnectTimer = setTimeout(() => {
    reconnectTimer = null;
    connectStream();
  }, delay);
}

async function connectStream() {
  stopStream();
  const controller = new AbortController();
  const current = { controller };
  stream = current;
  setConnection("connecting", "connecting");
  let response;
  try {
    response = await fetch(base + "/api/events", {
      headers: Object.assign({ Accept: "text/event-stream" }, authorization()),
      signal: controller.signal,
      cache: "no-store",
    });
  } catch (error) {
    if (stream === current) scheduleReconnect("offline");
    return;
  }
  if (response.status === 401) {
    showLogin("The token is no longer accepted; enter it again.");
    return;
  }
  if (!response.ok || !response.body) {
    const retryAfter = Number(response.headers.get("Retry-After")) || 0;
    if (stream === current) scheduleReconnect("the event stream was refused (" + response.status + ")", retryAfter);
    return;
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { name: "message", data: [] };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline).replace(/\r$/, "");
        buffer = buffer.slice(newline + 1);
        if (line === "") {
          if (event.data.length > 0) handleEvent(event.name, event.data.join("\n"));
          event = { name: "message", data: [] };
        } else if (line.startsWith(":")) {
          if (line.startsWith(": connected") && stream === current) connected();
        } else if (line.startsWith("event:")) {
          event.name = line.slice(6).trim();
        } else if (line.startsWith("data:")) {
          event.data.push(line.slice(5).replace(/^ /, ""));
        }
      }
    }
  } catch (error) {
    // The connection broke (or was aborted by stopStream); handled below.
  }
  if (stream === current) scheduleReconnect("the event stream ended");
}

function connected() {
  const wasDown = streamDropped;
  streamDropped = false;
  reconnectDelay = 1000;
  setConnection("live", "live");
  if (wasDown) logLine("reconnected", "reading everything again");
  // The subscription exists now: a fresh read catches up with whatever happened before it.
  loadAll()
    .then(() => {
      if (wasDown) say("");
    })
    .catch(handleLoadError);
}

function logLine(name, text) {
  const log = $("log");
  const item = element("li");
  item.append(element("time", clock(new Date())), element("strong", name + " "), document.createTextNode(text));
  log.prepend(item);
  while (log.childElementCount > maxLogLines) log.lastElementChild.remove();
}

function findJob(id) {
  return view.activeJobs.find((job) => job.id === id) || view.recentJobs.find((job) => job.id === id);
}

function setJobState(id, state, fields) {
  for (const list of [view.activeJobs, view.recentJobs]) {
    const job = list.find((candidate) => candidate.id === id);
    if (job) Object.assign(job, { state }, fields || {});
  }
  view.activeJobs = view.activeJobs.filter((job) => activeJobStates.includes(job.state));
}

function handleEvent(name, text) {
  let data;
  try {
    data = JSON.parse(text);
  } catch (error) {
    logLine(name, text);
    return;
  }
  switch (name) {
    case "JobQueued":
      logLine(name, "job " + data.job_id + " (" + data.kind + ")");
      refreshSoon();
      break;
    case "JobStarted":
      logLine(name, "job " + data.job_id + " (" + data.kind + ") on " + data.worker);
      if (findJob(data.job_id)) setJobState(data.job_id, "running", { lease_owner: data.worker });
      else view.activeJobs.push({ id: data.job_id, kind: data.kind, state: "running", lease_owner: data.worker, attempts: 0, max_attempts: 0 });
      renderActivity();
      renderJobs();
      refreshSoon();
      break;
    case "JobProgress":
      jobProgress.set(data.job_id, { fraction: data.fraction, message: data.message });
      renderActivity();
      break;
    case "JobFinished":
      logLine(name, "job " + data.job_id + " " + data.state);
      jobProgress.delete(data.job_id);
      setJobState(data.job_id, data.state);
      renderActivity();
      renderJobs();
      refreshSoon();
      break;
    case "FileDetected":
      logLine(name, data.path + " → job " + data.job_id);
      refreshSoon();
      break;
    case "DownloadProgress": {
      const now = Date.now();
      const before = downloadProgress.get(data.download_id);
      let rate = before ? before.rate : null;
      if (before && now > before.at && data.bytes >= before.bytes) {
        const recent = ((data.bytes - before.bytes) * 1000) / (now - before.at);
        rate = rate ? rate * 0.7 + recent * 0.3 : recent;
      }
      downloadProgress.set(data.download_id, { bytes: data.bytes, total: data.total || null, rate, at: now });
      const download = view.downloads.find((candidate) => candidate.id === data.download_id);
      if (download) {
        download.state = "running";
        renderActivity();
        renderDownloads();
      } else {
        refreshSoon();
      }
      break;
    }
    case "DownloadFinished":
      logLine(name, "download " + data.download_id + " " + data.state);
      refreshSoon();
      break;
    case "Lagged":
      logLine(name, data.missed + " events missed; reading everything again");
      refreshSoon();
      break;
    default:
      logLine(name, text);
  }
}

// --- search and upload ---

async function upload(chosen) {
  // A copy: the input's own list is emptied as soon as this returns to the event loop.
  const files = [...chosen];
  if (files.length === 0) return;
  const form = new FormData();
  for (const file of files) form.append("file", file, file.name);
  const status = $("upload-status");
  status.textContent = "Uploading " + files.length + " file" + (files.length > 1 ? "s" : "") + "…";
  try {
    const answer = await api("/api/documents", { method: "POST", body: form });
    const jobs = (answer.uploads || []).map((entry) => entry.job_id).filter(Boolean);
    status.textContent = "Uploaded " + files.map((file) => file.name).join(", ") + (jobs.length ? ": ingest job " + jobs.join(", ") : "");
  } catch (error) {
    status.textContent = error.status === 403 ? "Uploading needs the admin token: " + error.message : "Upload failed: " + error.message;
  }
  refreshSoon();
}

function wire() {
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    const field = $("token");
    const token = field.value.trim();
    field.value = "";
    if (!token) return;
    sessionStorage.setItem(tokenKey, token);
    say("Checking the token…", "info");
    signIn();
  });
  $("logout").addEventListener("click", () => showLogin(""));
  $("search").addEventListener("submit", (event) => {
    event.preventDefault();
    view.query = $("query").value.trim();
    loadDocuments().catch((error) => say("Search failed: " + error.message));
  });
  $("clear-search").addEventListener("click", () => {
    $("query").value = "";
    view.query = "";
    loadDocuments().catch(handleLoadError);
  });
  const dropzone = $("dropzone");
  for (const name of ["dragenter", "dragover"]) {
    dropzone.addEventListener(name, (event) => {
      event.preventDefault();
      dropzone.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    dropzone.addEventListener(name, () => dropzone.classList.remove("over"));
  }
  dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    upload(event.dataTransfer.files);
  });
  $("file-input").addEventListener("change", (event) => {
    upload(event.target.files);
    event.target.value = "";
  });
}

wire();
if (sessionStorage.getItem(tokenKey)) signIn();
else showLogin("");
