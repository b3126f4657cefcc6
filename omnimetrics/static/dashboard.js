// The live dashboard: history from REST, then extended live from the stream.
//
// Each chart's history comes from /api/v1/increase, whose answer carries the stream
// cursor of the snapshot it was computed from; the stream resumes from the oldest such
// cursor, and a batch is added to a metric only when it is newer than that metric's
// snapshot. So the charts have no hole and count nothing twice, also across reconnects.
import { connect } from "./omnimetrics.js";

const STEP_MS = 60_000;
const WINDOW_MINUTES = 60;
// The old service's fields, by the last element of a metric's name (as the REST routes).
const COUNTERS = {
  tokens_saved: ["total_tokens_saved", "tokens_saved"],
  total_compressions: ["total_compressions"],
  total_embeddings: ["total_embeddings"],
};
const GAUGES = {
  cache_hit_rate: ["cache_hit_rate"],
  compression_ratio: ["avg_compression_ratio", "compression_ratio"],
};
const CHARTS = ["tokens_saved", "total_embeddings"];

const fieldOf = (metric, table) => {
  const last = metric.split(".").at(-1);
  return Object.keys(table).find((field) => table[field].includes(last)) ?? null;
};
const seqOf = (cursor) => Number(String(cursor).split(":").at(-1));

const state = {
  filters: {},
  window: { start: 0, end: 0 }, // ms; buckets of STEP_MS in [start, end)
  series: {}, // counter field -> { buckets: Map(bucket ms -> value) }
  seen: {}, // metric -> seq of the REST snapshot that already counts it
  gauges: {}, // gauge field -> latest value
  sources: {}, // source -> { status, error }
  messages: 0,
  lastSeq: 0,
  loads: 0,
  connection: { state: "connecting", attempt: 0, reason: null },
  settings: null,
};
let stream = null;
let generation = 0;

// With auth on, a credential (a JWT): from the address (`/#token=...`, then removed from
// it) or from this tab's session storage; sent as a bearer header, and on the stream.
const TOKEN_KEY = "omnimetrics-token";
let token = null;

class Unauthorized extends Error {}

function takeToken() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) {
    sessionStorage.setItem(TOKEN_KEY, fromHash);
    history.replaceState(null, "", location.pathname + location.search);
  }
  token = sessionStorage.getItem(TOKEN_KEY);
}

function authHeaders() {
  return token ? { Authorization: `Bearer ${token}` } : {};
}

function query(extra = {}) {
  const params = new URLSearchParams();
  for (const [key, value] of Object.entries({ ...state.filters, ...extra })) {
    if (value !== null && value !== undefined && value !== "") params.set(key, value);
  }
  return params.toString();
}

async function getJSON(path) {
  const response = await fetch(path, { headers: authHeaders() });
  if (response.status === 401) throw new Unauthorized((await response.json()).error);
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.error ?? `${path}: HTTP ${response.status}`);
  }
  return { body: await response.json(), cursor: response.headers.get("x-omnimetrics-cursor") };
}

function setWindow(now) {
  const last = Math.floor(now / STEP_MS) * STEP_MS;
  state.window = { start: last - (WINDOW_MINUTES - 1) * STEP_MS, end: last + STEP_MS };
}

function emptySeries() {
  const series = {};
  for (const field of Object.keys(COUNTERS)) {
    const buckets = new Map();
    for (let t = state.window.start; t < state.window.end; t += STEP_MS) buckets.set(t, 0);
    series[field] = { buckets };
  }
  return series;
}

/** Move the window on to the current minute, dropping the oldest buckets. */
function roll(now) {
  const last = Math.floor(now / STEP_MS) * STEP_MS;
  if (last < state.window.end) return;
  const end = last + STEP_MS;
  const start = end - WINDOW_MINUTES * STEP_MS;
  for (const { buckets } of Object.values(state.series)) {
    for (const t of [...buckets.keys()]) if (t < start) buckets.delete(t);
    for (let t = state.window.end; t < end; t += STEP_MS) buckets.set(t, 0);
  }
  state.window = { start, end };
}

/** Everything for the current filters from REST, then the stream from its snapshot. */
async function load() {
  const mine = ++generation;
  setWindow(Date.now());
  const from = new Date(state.window.start).toISOString();
  const to = new Date(state.window.end).toISOString();
  const latest = await getJSON(`/api/v1/latest?${query()}`);
  const metrics = [...new Set(latest.body.series.map((s) => s.metric))];
  const gauges = {};
  for (const s of latest.body.series) {
    const field = fieldOf(s.metric, GAUGES);
    if (field && (!gauges[field] || s.ts > gauges[field].ts)) gauges[field] = s;
  }
  const series = emptySeries();
  const seen = {};
  let since = latest.cursor;
  const counted = metrics.filter((metric) => fieldOf(metric, COUNTERS));
  const answers = await Promise.all(
    counted.map((metric) => getJSON(`/api/v1/increase?${query({ metric, step: "1m", from, to })}`)),
  );
  answers.forEach(({ body, cursor }, i) => {
    const { buckets } = series[fieldOf(counted[i], COUNTERS)];
    for (const bucket of body.buckets) {
      const t = Date.parse(bucket.t);
      if (buckets.has(t)) buckets.set(t, buckets.get(t) + bucket.value);
    }
    seen[counted[i]] = seqOf(cursor);
    if (seqOf(cursor) < seqOf(since)) since = cursor;
  });
  const current = await getJSON(`/metrics/current?${query()}`);
  if (mine !== generation) return; // the filters changed meanwhile: that load wins
  state.series = series;
  state.seen = seen;
  state.gauges = Object.fromEntries(Object.entries(gauges).map(([f, s]) => [f, s.value]));
  state.sources = {};
  for (const [name, entry] of Object.entries(current.body)) {
    if (name !== "timestamp") state.sources[name] = { status: entry.status, error: entry.error ?? null };
  }
  state.lastSeq = seqOf(since);
  state.loads += 1;
  if (stream) stream.reconnect({ filters: state.filters, cursor: since });
  else stream = connect(state.filters, onMessage, { cursor: since, onStatus, token });
  render();
}

function onMessage(message) {
  if (message.type === "connected") {
    if (message.resumed === false) load().catch(showError); // another database: start over
    return;
  }
  if (message.type === "error" && message.source) {
    state.sources[message.source] = { status: "down", error: message.error };
    schedule();
    return;
  }
  if (message.type !== "metrics") return;
  state.messages += 1;
  state.lastSeq = message.seq;
  const t = Math.floor(Date.parse(message.timestamp) / STEP_MS) * STEP_MS;
  roll(Math.max(Date.now(), t));
  for (const deltas of Object.values(message.deltas)) {
    for (const [metric, delta] of Object.entries(deltas)) {
      const field = fieldOf(metric, COUNTERS);
      if (!field || message.seq <= (state.seen[metric] ?? 0)) continue;
      const { buckets } = state.series[field];
      if (buckets.has(t)) buckets.set(t, buckets.get(t) + delta);
    }
  }
  for (const [source, data] of Object.entries(message.data)) {
    if (data.status) {
      const healthy = data.status === "healthy";
      state.sources[source] = { status: data.status, error: healthy ? null : state.sources[source]?.error ?? null };
    }
    collectGauges(data);
  }
  schedule();
}

function collectGauges(tree) {
  for (const [key, value] of Object.entries(tree)) {
    if (value && typeof value === "object") collectGauges(value);
    else if (typeof value === "number") {
      const field = fieldOf(key, GAUGES);
      if (field) state.gauges[field] = value;
    }
  }
}

function onStatus(status) {
  state.connection = status;
  renderConnection();
}

// ---- rendering ----

let pending = false;
function schedule() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => {
    pending = false;
    render();
  });
}

const integer = new Intl.NumberFormat("en", { maximumFractionDigits: 0 });
const ratio = (v) => (v <= 1 ? `${(v * 100).toFixed(1)}%` : v.toFixed(2));

function total(field) {
  let sum = 0;
  for (const value of state.series[field]?.buckets.values() ?? []) sum += value;
  return sum;
}

function render() {
  for (const field of Object.keys(COUNTERS)) {
    document.querySelector(`#tile-${field} .value`).textContent = integer.format(total(field));
  }
  for (const field of Object.keys(GAUGES)) {
    const value = state.gauges[field];
    document.querySelector(`#tile-${field} .value`).textContent = value === undefined ? "–" : ratio(value);
  }
  for (const field of CHARTS) drawChart(document.getElementById(`chart-${field}`), state.series[field]);
  renderSources();
  renderConnection();
}

function renderSources() {
  const list = document.getElementById("sources");
  const names = Object.keys(state.sources).sort();
  if (names.length === 0) {
    list.replaceChildren(Object.assign(document.createElement("li"), { className: "empty", textContent: "no sources seen yet" }));
    return;
  }
  list.replaceChildren(
    ...names.map((name) => {
      const { status, error } = state.sources[name];
      const item = document.createElement("li");
      item.className = status === "healthy" ? "healthy" : "down";
      item.dataset.source = name;
      item.append(
        Object.assign(document.createElement("span"), { className: "name", textContent: name }),
        Object.assign(document.createElement("span"), { className: "status", textContent: status }),
      );
      if (status !== "healthy" && error) {
        item.append(Object.assign(document.createElement("span"), { className: "error", textContent: error }));
      }
      return item;
    }),
  );
}

function renderConnection() {
  const { state: s, attempt, reason, code, delay } = state.connection;
  const box = document.getElementById("connection");
  let text;
  let shown = s;
  if (s === "open") text = "live";
  else if (s === "connecting") text = attempt ? `connecting… (attempt ${attempt})` : "connecting…";
  else if (s === "waiting" && code === 1008) {
    shown = "refused";
    text = `stream closed: ${reason} — retrying (attempt ${attempt})`;
  } else if (s === "waiting") {
    text = `reconnecting in ${Math.ceil(delay / 1000)} s (attempt ${attempt}): ${reason}`;
  } else text = "closed";
  box.dataset.state = shown;
  box.dataset.attempt = String(attempt ?? 0);
  document.getElementById("connection-text").textContent = text;
}

function drawChart(canvas, series) {
  const ratioPx = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 300;
  const height = canvas.clientHeight || 160;
  canvas.width = Math.round(width * ratioPx);
  canvas.height = Math.round(height * ratioPx);
  const g = canvas.getContext("2d");
  g.scale(ratioPx, ratioPx);
  g.clearRect(0, 0, width, height);
  const values = series ? [...series.buckets.values()] : [];
  const max = Math.max(1, ...values);
  const top = 14;
  const bottom = height - 16;
  const barWidth = width / Math.max(1, values.length);
  g.fillStyle = "#2f6fde";
  values.forEach((value, i) => {
    const h = ((bottom - top) * value) / max;
    g.fillRect(i * barWidth + 1, bottom - h, Math.max(1, barWidth - 2), h);
  });
  g.fillStyle = "#667085";
  g.font = "11px system-ui, sans-serif";
  g.fillText(integer.format(max), 2, 11);
  const label = (t) => new Date(t).toTimeString().slice(0, 5);
  g.fillText(label(state.window.start), 2, height - 3);
  const end = label(state.window.end);
  g.fillText(end, width - g.measureText(end).width - 2, height - 3);
}

// ---- filters and settings ----

function readFilters() {
  const form = new FormData(document.getElementById("filters"));
  const filters = {};
  for (const key of ["tenant_id", "tool_id", "session_id"]) {
    const value = String(form.get(key) ?? "").trim();
    if (value) filters[key] = value;
  }
  return filters;
}

async function applyFilters() {
  state.filters = readFilters();
  const url = new URL(location.href);
  url.search = query();
  history.replaceState(null, "", url);
  await Promise.all([load(), loadSettings()]);
}

// Without a tenant filter, the server's own choice: `local`, or the credential's tenant.
const settingsQuery = () => (state.filters.tenant_id ? `?tenant_id=${encodeURIComponent(state.filters.tenant_id)}` : "");

async function loadSettings() {
  const { body } = await getJSON(`/settings${settingsQuery()}`);
  state.settings = body.settings;
  document.getElementById("settings-tenant").textContent = `(${body.tenant_id})`;
  document.getElementById("profile").value = body.settings.performance_profile;
  document.getElementById("streaming").checked = body.settings.metrics_streaming;
}

async function putSettings(change) {
  const message = document.getElementById("settings-message");
  const response = await fetch(`/settings${settingsQuery()}`, {
    method: "PUT",
    headers: { "content-type": "application/json", ...authHeaders() },
    body: JSON.stringify(change),
  });
  const body = await response.json();
  if (!response.ok) {
    message.textContent = body.error ?? `HTTP ${response.status}`;
    return;
  }
  state.settings = body.settings;
  message.textContent = `saved: ${body.settings.performance_profile}, streaming ${body.settings.metrics_streaming ? "on" : "off"}`;
  document.getElementById("profile").value = body.settings.performance_profile;
  document.getElementById("streaming").checked = body.settings.metrics_streaming;
  if (stream && state.connection.state !== "open") stream.retryNow(); // streaming may be back
}

function showError(error) {
  if (error instanceof Unauthorized) {
    const login = document.getElementById("login");
    login.hidden = false;
    document.getElementById("login-message").textContent = error.message;
    return;
  }
  document.getElementById("settings-message").textContent = String(error.message ?? error);
}

function start() {
  takeToken();
  document.getElementById("login").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = new FormData(event.target).get("token").trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    token = value;
    event.target.hidden = true;
    if (stream) stream.close();
    stream = null;
    applyFilters().catch(showError);
  });
  const params = new URLSearchParams(location.search);
  const form = document.getElementById("filters");
  for (const key of ["tenant_id", "tool_id", "session_id"]) form.elements[key].value = params.get(key) ?? "";
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    applyFilters().catch(showError);
  });
  form.addEventListener("change", () => applyFilters().catch(showError));
  document.getElementById("profile").addEventListener("change", (event) => {
    putSettings({ performance_profile: event.target.value }).catch(showError);
  });
  document.getElementById("streaming").addEventListener("change", (event) => {
    putSettings({ metrics_streaming: event.target.checked }).catch(showError);
  });
  setInterval(() => {
    roll(Date.now());
    schedule();
  }, 5000);
  window.addEventListener("resize", schedule);
  applyFilters().catch(showError);
}

// For the tests and for anyone curious in the console.
window.omnimetrics = { state, get stream() { return stream; }, load };

start();
