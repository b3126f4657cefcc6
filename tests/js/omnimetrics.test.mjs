// The reconnecting client on its own: node --test tests/js/
import assert from "node:assert/strict";
import { test } from "node:test";

import { backoff, connect, streamUrl } from "../../omnimetrics/static/omnimetrics.js";

class FakeSocket {
  static all = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.closedWith = null;
    FakeSocket.all.push(this);
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  close(code) {
    this.closedWith = code;
  }
  // what the server does
  accept(cursor = "e:0") {
    this.readyState = 1;
    this.receive({ type: "connected", cursor, resumed: null });
  }
  receive(message) {
    this.onmessage?.({ data: JSON.stringify(message) });
  }
  drop(code = 1006, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
}

function harness(filters = {}, options = {}) {
  FakeSocket.all = [];
  const timers = [];
  const messages = [];
  const statuses = [];
  const stream = connect(filters, (m) => messages.push(m), {
    url: "ws://host/ws/metrics",
    WebSocket: FakeSocket,
    setTimeout: (fn, ms) => {
      timers.push({ fn, ms });
      return timers.length;
    },
    clearTimeout: () => {},
    random: () => 1, // the top of the jitter range, to see the cap
    onStatus: (s) => statuses.push(s),
    ...options,
  });
  const fire = () => timers.shift().fn();
  return { stream, timers, messages, statuses, fire, last: () => FakeSocket.all.at(-1) };
}

test("the url carries the filters, the cursor and the token, and nothing empty", () => {
  assert.equal(streamUrl("ws://h/ws/metrics"), "ws://h/ws/metrics");
  assert.equal(
    streamUrl("ws://h/ws/metrics", { tenant_id: "t", tool_id: null, session_id: "" }, "e:5", "jwt"),
    "ws://h/ws/metrics?tenant_id=t&since=e%3A5&token=jwt",
  );
});

test("backoff is full jitter under an exponential cap", () => {
  const top = (attempt) => backoff(attempt, { random: () => 1 });
  assert.deepEqual([0, 1, 2, 3, 5, 6, 7, 20].map(top), [1000, 2000, 4000, 8000, 32000, 60000, 60000, 60000]);
  assert.equal(backoff(3, { random: () => 0 }), 0);
  for (let i = 0; i < 200; i++) {
    const ms = backoff(4);
    assert.ok(ms >= 0 && ms <= 16000, `${ms}`);
  }
});

test("it passes messages on and follows the cursor of batches only", () => {
  const h = harness({ tool_id: "a" });
  assert.equal(h.last().url, "ws://host/ws/metrics?tool_id=a");
  h.last().accept("e:3");
  h.last().receive({ type: "metrics", seq: 4, cursor: "e:4" });
  h.last().receive({ type: "error", error: "x" });
  assert.deepEqual(h.messages.map((m) => m.type), ["connected", "metrics", "error"]);
  assert.equal(h.stream.cursor, "e:4");
  assert.equal(h.statuses.at(-1).state, "open");
});

test("a dropped connection resumes from the cursor, with growing waits and a count", () => {
  const h = harness();
  h.last().accept("e:0");
  h.last().receive({ type: "metrics", seq: 7, cursor: "e:7" });
  h.last().drop(1001, "server shutting down; resume from e:7");
  assert.equal(h.statuses.at(-1).state, "waiting");
  assert.equal(h.statuses.at(-1).attempt, 1);
  assert.match(h.statuses.at(-1).reason, /shutting down/);
  assert.equal(h.timers[0].ms, 1000);
  h.fire();
  assert.equal(h.last().url, "ws://host/ws/metrics?since=e%3A7");
  h.last().drop(); // refused while the server is down
  assert.equal(h.timers[0].ms, 2000);
  assert.equal(h.statuses.at(-1).attempt, 2);
  assert.equal(h.statuses.at(-1).reason, "connection lost");
  h.fire();
  h.last().drop();
  assert.equal(h.timers[0].ms, 4000);
  h.fire();
  h.last().accept("e:7"); // back: the count starts again
  assert.equal(h.stream.attempt, 0);
  h.last().drop();
  assert.equal(h.timers[0].ms, 1000);
});

test("the wait never exceeds the cap however many attempts", () => {
  const h = harness();
  for (let i = 0; i < 12; i++) {
    h.last().drop();
    assert.ok(h.timers[0].ms <= 60000);
    h.fire();
  }
  assert.equal(h.statuses.filter((s) => s.state === "waiting").at(-1).attempt, 12);
});

test("subscribe changes the filters on the open socket and for later connections", () => {
  const h = harness({ tenant_id: "t" });
  h.last().accept();
  h.stream.subscribe({ tenant_id: "t", tool_id: "b" });
  assert.deepEqual(h.last().sent, [{ type: "subscribe", tenant_id: "t", tool_id: "b" }]);
  h.last().drop();
  h.fire();
  assert.match(h.last().url, /tool_id=b/);
});

test("reconnect opens at once with new filters and cursor, and forgets the old socket", () => {
  const h = harness({ tool_id: "a" });
  const first = h.last();
  first.accept("e:1");
  h.stream.reconnect({ filters: { tool_id: "b" }, cursor: "e:9" });
  assert.equal(first.closedWith, 1000);
  assert.equal(h.last().url, "ws://host/ws/metrics?tool_id=b&since=e%3A9");
  first.drop(); // a late close of the old socket schedules nothing
  assert.equal(h.timers.length, 0);
});

test("close stops for good", () => {
  const h = harness();
  h.last().accept();
  const socket = h.last();
  h.stream.close();
  assert.equal(socket.closedWith, 1000);
  socket.drop();
  assert.equal(h.timers.length, 0);
  assert.equal(h.statuses.at(-1).state, "closed");
});

test("a refusal keeps its reason and still retries, slowly", () => {
  const h = harness();
  h.last().drop(1008, "metrics streaming is disabled in settings");
  const status = h.statuses.at(-1);
  assert.equal(status.code, 1008);
  assert.equal(status.reason, "metrics streaming is disabled in settings");
  assert.equal(h.timers.length, 1);
});

test("retryNow connects at once when waiting, skipping the backoff", () => {
  const h = harness();
  h.last().drop(1008, "metrics streaming is disabled in settings");
  const sockets = FakeSocket.all.length;
  h.stream.retryNow();
  assert.equal(FakeSocket.all.length, sockets + 1);
  h.last().accept();
  h.last().drop(); // a later drop backs off as usual
  assert.equal(h.timers.at(-1).ms, 1000);
});

test("retryNow leaves a connection attempt alone, and reconnects at once if it fails", () => {
  const h = harness();
  h.last().drop(1008, "metrics streaming is disabled in settings");
  h.fire(); // the backoff's attempt, still in its handshake
  const attempt = h.last();
  h.stream.retryNow();
  assert.equal(attempt.closedWith, null);
  assert.equal(FakeSocket.all.at(-1), attempt);
  attempt.drop(1008, "metrics streaming is disabled in settings"); // sent before the change
  assert.equal(h.timers.at(-1).ms, 0);
  h.fire();
  h.last().accept();
  h.last().drop(); // hurried once only
  assert.equal(h.timers.at(-1).ms, 1000);
});

test("a socket dropped in its handshake is closed once it opens, never before", () => {
  const h = harness({ tool_id: "a" });
  const first = h.last();
  h.stream.reconnect({ filters: { tool_id: "b" } });
  assert.equal(first.closedWith, null);
  first.readyState = 1;
  first.onopen();
  assert.equal(first.closedWith, 1000);
  first.receive({ type: "connected", cursor: "e:1" }); // nothing reaches the page
  assert.equal(h.messages.length, 0);
});
