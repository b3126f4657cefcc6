/**
 * omnimetrics.js: a reconnecting client for omnimetrics' live stream (`WS /ws/metrics`).
 *
 * Any page can use it, no build step:
 *
 *   import { connect } from "/static/omnimetrics.js";
 *   const stream = connect({ tenant_id: "local", tool_id: "claude-code" }, (message) => {
 *     if (message.type === "metrics") console.log(message.seq, message.deltas);
 *   }, { onStatus: (status) => console.log(status.state, status.attempt, status.reason) });
 *   stream.reconnect({ filters: { tool_id: "cursor" } });   // other filters, at once
 *   stream.retryNow();   // the refusal may be over (e.g. streaming enabled again): no backoff
 *   stream.close();
 *
 * It remembers the cursor of the last batch it passed on and, when the connection drops
 * (a network fault, a server restart, a slow-consumer close), reconnects with
 * `since=<cursor>`: the server sends every batch missed in between, exactly once, in
 * order. Reconnects wait with exponential backoff and full jitter: a random time between
 * 0 and min(cap, base * 2^attempt), base 1 s, cap 60 s; the attempt count starts again
 * once a connection is established.
 *
 * Messages are the server's JSON objects (`connected`, `metrics`, `error`, `pong`, ...).
 * Status changes go to `onStatus({state, attempt, reason, delay})`, where state is
 * "connecting", "open", "waiting" (before a reconnect) or "closed" (by `close()`).
 */

export const BASE_DELAY_MS = 1000;
export const MAX_DELAY_MS = 60000;

/** Full-jitter backoff: milliseconds to wait before reconnect number `attempt` (0-based). */
export function backoff(attempt, { base = BASE_DELAY_MS, cap = MAX_DELAY_MS, random = Math.random } = {}) {
  return random() * Math.min(cap, base * 2 ** attempt);
}

/** The stream URL for `filters` (null or empty values are left out). */
export function streamUrl(endpoint, filters = {}, cursor = null, token = null) {
  const params = new URLSearchParams();
  for (const key of ["tenant_id", "tool_id", "session_id"]) {
    if (filters[key]) params.set(key, filters[key]);
  }
  if (cursor) params.set("since", cursor);
  if (token) params.set("token", token);
  const query = params.toString();
  return query ? `${endpoint}?${query}` : endpoint;
}

function defaultEndpoint() {
  const location = globalThis.location;
  if (!location) throw new Error("omnimetrics.connect: give options.url outside a browser");
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/ws/metrics`;
}

/**
 * Open the stream for `filters` and keep it open. `onMessage(message)` gets every parsed
 * message. Options: url (default: this page's host), cursor (resume from it), token,
 * onStatus, WebSocket, setTimeout, clearTimeout, random, base, cap (the last six for
 * tests and tuning).
 */
export function connect(filters, onMessage, options = {}) {
  const WS = options.WebSocket ?? globalThis.WebSocket;
  const later = options.setTimeout ?? globalThis.setTimeout.bind(globalThis);
  const cancel = options.clearTimeout ?? globalThis.clearTimeout.bind(globalThis);
  const endpoint = options.url ?? defaultEndpoint();
  const onStatus = options.onStatus ?? (() => {});
  const jitter = { base: options.base, cap: options.cap, random: options.random };

  const stream = {
    filters: { ...filters },
    cursor: options.cursor ?? null,
    attempt: 0,
    socket: null,
    closed: false,
    timer: null,
    hurry: false,

    /** Send a JSON message if the socket is open; returns whether it was sent. */
    send(message) {
      if (this.socket && this.socket.readyState === 1) {
        this.socket.send(JSON.stringify(message));
        return true;
      }
      return false;
    },

    /** Change the filters on the open connection (they apply from the next batch). */
    subscribe(newFilters) {
      this.filters = { ...newFilters };
      this.send({ type: "subscribe", ...this.filters });
    },

    /** Drop the connection and open a new one now, optionally with other filters or
     * another cursor to resume from (`cursor: null` for live only). */
    reconnect({ filters: newFilters, cursor } = {}) {
      if (newFilters) this.filters = { ...newFilters };
      if (cursor !== undefined) this.cursor = cursor;
      this.attempt = 0;
      cancel(this.timer);
      this.timer = null;
      drop(this.socket);
      open();
    },

    /** Skip the backoff once: when waiting, connect now; when a connection attempt is
     * under way, leave it alone (closing it mid-handshake is an error in browsers) and,
     * should it fail, reconnect at once instead of waiting. */
    retryNow() {
      if (this.closed) return;
      if (this.socket) {
        this.hurry = true;
        return;
      }
      cancel(this.timer);
      this.timer = null;
      open();
    },

    close() {
      this.closed = true;
      cancel(this.timer);
      this.timer = null;
      drop(this.socket);
      onStatus({ state: "closed", attempt: this.attempt, reason: null });
    },
  };

  function drop(socket) {
    if (!socket) return;
    socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
    if (socket.readyState === 0) {
      // Closing mid-handshake is reported as an error by browsers: close once it opens.
      socket.onopen = () => socket.close(1000);
    } else {
      try {
        socket.close(1000);
      } catch {
        // already closing
      }
    }
    if (stream.socket === socket) stream.socket = null;
  }

  function open() {
    onStatus({ state: "connecting", attempt: stream.attempt, reason: null });
    const socket = new WS(streamUrl(endpoint, stream.filters, stream.cursor, options.token));
    stream.socket = socket;
    socket.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (message.type === "connected") {
        stream.attempt = 0;
        stream.hurry = false;
        onStatus({ state: "open", attempt: 0, reason: null });
      }
      // The cursor moves only with batches passed on (and with a fresh `connected`).
      if (message.cursor && (message.type === "metrics" || message.type === "connected")) {
        stream.cursor = message.cursor;
      }
      onMessage(message);
    };
    socket.onclose = (event) => {
      if (stream.socket !== socket || stream.closed) return;
      stream.socket = null;
      const delay = stream.hurry ? 0 : backoff(stream.attempt, jitter);
      stream.hurry = false;
      const reason = event.reason || (event.code === 1006 ? "connection lost" : `closed (${event.code})`);
      onStatus({ state: "waiting", attempt: stream.attempt + 1, reason, code: event.code, delay });
      stream.attempt += 1;
      stream.timer = later(() => {
        stream.timer = null;
        if (!stream.closed) open();
      }, delay);
    };
  }

  open();
  return stream;
}
