// Bookwire's browser client: one object that keeps a page's events flowing and calls the JSON API.
//
//   import { Bookwire } from "/client/bookwire.js";
//   const bw = new Bookwire({ getAccessToken: async () => token });
//   bw.on("booking.*", (envelope) => ...); bw.on("state", (state) => ...); bw.start();
//
// How it keeps the events flowing (docs/decisions.md, "Browser client"):
// - The stream is read with fetch() and a body reader, not EventSource: EventSource never shows a
//   page the server's heartbeat comments, so it cannot tell a quiet stream from one a buffering
//   proxy holds back. Each connection gets a fresh stream token, which also says how often the
//   server sends heartbeats (`heartbeat_seconds`).
// - Every reconnect resumes after the last event id seen (`?last_event_id=` or the poll cursor), and
//   an id is handed to listeners at most once, so a reconnect never shows a gap or a duplicate.
// - "auto" falls back to long-polling when the stream cannot be opened, or when it delivers nothing,
//   not even a heartbeat, for twice the heartbeat interval; it tries the stream again every few
//   minutes. Failures back off with jitter, 0.5 s doubling up to 30 s.
// - While the browser is offline the client is "offline" and holds no connection; it resumes when
//   the browser is back online.

const FIRST_DELAY_MS = 500;
const MAX_DELAY_MS = 30_000;
const DEFAULT_HEARTBEAT_SECONDS = 15;
const POLL_TIMEOUT_SECONDS = 25;
const STREAM_RETRY_MS = 3 * 60_000;
const REMEMBERED_IDS = 2000;

/** An API answer that was not 2xx: `problem` is its RFC 9457 problem document. */
export class BookwireError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.name = "BookwireError";
    this.status = status;
    this.problem = problem || { status, title: `HTTP ${status}` };
  }
}

class Stopped extends Error {}

/** Sleep `ms`, or until `signal` aborts (then reject with Stopped). */
function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(new Stopped());
    const timer = setTimeout(() => { signal.removeEventListener("abort", onAbort); resolve(); }, ms);
    const onAbort = () => { clearTimeout(timer); reject(new Stopped()); };
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

function online() {
  return typeof navigator === "undefined" || navigator.onLine !== false;
}

export class Bookwire {
  /**
   * @param {object} options
   * @param {string} [options.baseUrl] where the API is ("" for this page's origin)
   * @param {() => Promise<string>} options.getAccessToken an access token (called whenever one is needed)
   * @param {string[]} [options.topics] extra channels, e.g. ["resource:<id>"]
   * @param {"auto"|"sse"|"poll"} [options.transport]
   */
  constructor({ baseUrl = "", getAccessToken, topics = [], transport = "auto" } = {}) {
    if (typeof getAccessToken !== "function") throw new TypeError("getAccessToken must be an async function");
    if (!["auto", "sse", "poll"].includes(transport)) throw new TypeError(`unknown transport ${transport}`);
    this.baseUrl = baseUrl.replace(/\/$/, "");
    this.getAccessToken = getAccessToken;
    this.topics = [...topics];
    this.transport = transport;
    this._listeners = new Map();
    this._state = "offline";
    this._lastEventId = null;
    this._seen = new Set();
    this._seenOrder = [];
    this._run = null;         // AbortController of the running loop
    this._connection = null;  // AbortController of the current connection
    this._streamAgainAt = 0;  // "auto": poll until then, after the stream failed
    this._failures = 0;
    this._onOffline = () => this._connection && this._connection.abort();  // the loop then waits to be online
  }

  /** The id of the last event handed to listeners (where a reconnect resumes), or null. */
  get lastEventId() { return this._lastEventId; }

  /** "connecting", "live" (SSE), "polling" (long-poll) or "offline". */
  get state() { return this._state; }

  /**
   * Listen for envelopes of `type` ("booking.confirmed"), of a prefix ("booking.*") or of every type
   * ("*"); or for "state" changes, or "reset" (after `stream.reset`: refetch over REST).
   * Returns a function that removes the listener.
   */
  on(type, fn) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(fn);
    return () => this._listeners.get(type)?.delete(fn);
  }

  start() {
    if (this._run) return;
    this._run = new AbortController();
    if (typeof window !== "undefined") window.addEventListener("offline", this._onOffline);
    this._loop(this._run.signal);
  }

  stop() {
    if (!this._run) return;
    this._run.abort();
    this._connection?.abort();
    this._run = null;
    if (typeof window !== "undefined") window.removeEventListener("offline", this._onOffline);
    this._setState("offline");
  }

  /** Call the JSON API with the access token; the parsed answer (null for 204), or a BookwireError. */
  async request(method, path, body) {
    const headers = { Accept: "application/json" };
    const token = await this.getAccessToken();
    if (token) headers.Authorization = `Bearer ${token}`;  // none for sign-in and registration
    const init = { method, headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const answer = await fetch(this.baseUrl + path, init);
    if (!answer.ok) {
      let problem = null;
      try { problem = await answer.json(); } catch { /* not JSON: the error says the status */ }
      throw new BookwireError(answer.status, problem);
    }
    return answer.status === 204 ? null : answer.json();
  }

  // ---- the connection loop ---------------------------------------------------------------------

  async _loop(signal) {
    while (!signal.aborted) {
      try {
        if (!online()) {
          this._setState("offline");
          await this._untilOnline(signal);
          this._failures = 0;
          continue;
        }
        const usePoll = this.transport === "poll" || (this.transport === "auto" && Date.now() < this._streamAgainAt);
        if (usePoll) await this._poll(signal); else await this._stream(signal);
      } catch (error) {
        if (signal.aborted || error instanceof Stopped) return;
        if (!online()) continue;
        this._failures += 1;
        if (this.transport === "auto" && error.streamFailed) {
          this._streamAgainAt = Date.now() + STREAM_RETRY_MS;  // poll for a while, then try the stream again
          this._failures = 0;
          continue;
        }
        this._setState("connecting");
        const ceiling = Math.min(MAX_DELAY_MS, FIRST_DELAY_MS * 2 ** (this._failures - 1));
        try { await sleep(ceiling / 2 + Math.random() * ceiling / 2, signal); } catch { return; }
      }
    }
  }

  _untilOnline(signal) {
    return new Promise((resolve, reject) => {
      const done = () => { window.removeEventListener("online", done); signal.removeEventListener("abort", stop); resolve(); };
      const stop = () => { window.removeEventListener("online", done); reject(new Stopped()); };
      window.addEventListener("online", done);
      signal.addEventListener("abort", stop, { once: true });
    });
  }

  /** A connection's AbortController, aborted with the loop too. */
  _connect(signal) {
    const connection = new AbortController();
    const onAbort = () => connection.abort();
    signal.addEventListener("abort", onAbort, { once: true });
    connection.release = () => signal.removeEventListener("abort", onAbort);  // when the connection is over
    this._connection = connection;
    return connection;
  }

  async _streamToken() {
    const answer = await this.request("POST", "/v1/auth/stream-token");
    return { token: answer.token, heartbeat: answer.heartbeat_seconds || DEFAULT_HEARTBEAT_SECONDS };
  }

  async _stream(signal) {
    this._setState("connecting");
    const { token, heartbeat } = await this._streamToken();
    const params = new URLSearchParams({ access_token: token });
    if (this._lastEventId) params.set("last_event_id", this._lastEventId);
    if (this.topics.length) params.set("topics", this.topics.join(","));
    const connection = this._connect(signal);
    const silence = heartbeat * 2 * 1000;
    let watchdog = setTimeout(() => { connection.silent = true; connection.abort(); }, silence);
    const heard = () => {
      clearTimeout(watchdog);
      watchdog = setTimeout(() => { connection.silent = true; connection.abort(); }, silence);
    };
    const failed = (message) => Object.assign(new Error(message), { streamFailed: true });
    try {
      let answer;
      try {
        answer = await fetch(`${this.baseUrl}/v1/events/stream?${params}`, {
          headers: { Accept: "text/event-stream" }, signal: connection.signal, cache: "no-store",
        });
      } catch (error) {
        if (signal.aborted) throw new Stopped();
        throw connection.silent ? failed("the stream stayed silent") : failed(`the stream could not be opened: ${error}`);
      }
      if (!answer.ok || !answer.body) throw failed(`the stream answered ${answer.status}`);
      const reader = answer.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      let live = false;
      for (;;) {
        let chunk;
        try {
          chunk = await reader.read();
        } catch (error) {
          if (signal.aborted) throw new Stopped();
          if (connection.silent) throw failed("the stream stayed silent");
          throw error;  // dropped (or aborted when the browser went offline): reconnect and resume
        }
        if (chunk.done) throw new Error("the stream ended");
        heard();
        buffer += chunk.value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          if (!live) {  // the first block (`retry:`) proves the stream is open end to end
            live = true;
            this._failures = 0;
            this._setState("live");
          }
          const envelope = parseBlock(block);
          if (envelope && this._deliver(envelope) === "closing") return;  // reconnect at once
        }
      }
    } finally {
      clearTimeout(watchdog);
      connection.release();
    }
  }

  async _poll(signal) {
    const connection = this._connect(signal);
    try { await this._pollWith(connection, signal); } finally { connection.release(); }
  }

  async _pollWith(connection, signal) {
    this._setState(this._state === "polling" ? "polling" : "connecting");
    const params = new URLSearchParams({ timeout: String(POLL_TIMEOUT_SECONDS) });
    if (this._lastEventId) params.set("cursor", this._lastEventId);
    if (this.topics.length) params.set("topics", this.topics.join(","));
    let answer;
    try {
      answer = await fetch(`${this.baseUrl}/v1/events/poll?${params}`, {
        headers: { Authorization: `Bearer ${await this.getAccessToken()}`, Accept: "application/json" },
        signal: connection.signal, cache: "no-store",
      });
    } catch (error) {
      if (signal.aborted) throw new Stopped();
      throw error;
    }
    if (answer.status === 400 && this._lastEventId) {  // a cursor the API cannot read: start afresh
      this._lastEventId = null;
      this._emit("reset", { type: "stream.reset", id: null, channel: null, data: { reason: "unreadable_cursor" } });
      return;
    }
    if (!answer.ok) throw new BookwireError(answer.status, await answer.json().catch(() => null));
    const page = await answer.json();
    this._failures = 0;
    this._setState("polling");
    for (const envelope of page.events) this._deliver(envelope);
    if (page.cursor) this._lastEventId = page.cursor;
  }

  // ---- handing events to listeners -------------------------------------------------------------

  /** Hand one envelope to its listeners, once per id; "closing" when the server ends the stream. */
  _deliver(envelope) {
    if (envelope.type === "stream.closing") return "closing";
    if (envelope.type === "stream.reset") {
      this._lastEventId = envelope.id || (envelope.data && envelope.data.cursor) || null;
      this._emit("reset", envelope);
      return "reset";
    }
    if (envelope.id) {
      if (this._seen.has(envelope.id)) return "duplicate";
      this._remember(envelope.id);
      this._lastEventId = envelope.id;
    }
    this._dispatch(envelope);
    return "event";
  }

  _remember(id) {
    this._seen.add(id);
    this._seenOrder.push(id);
    if (this._seenOrder.length > REMEMBERED_IDS) this._seen.delete(this._seenOrder.shift());
  }

  _dispatch(envelope) {
    const type = envelope.type;
    const keys = new Set([type, "*"]);
    for (let dot = type.indexOf("."); dot >= 0; dot = type.indexOf(".", dot + 1)) keys.add(`${type.slice(0, dot)}.*`);
    for (const key of keys) this._emit(key, envelope);
  }

  _emit(key, value) {
    for (const fn of this._listeners.get(key) || []) {
      try { fn(value); } catch (error) { setTimeout(() => { throw error; }); }  // a listener's bug is not ours
    }
  }

  _setState(state) {
    if (state === this._state) return;
    this._state = state;
    this._emit("state", state);
  }
}

/** One SSE block (`id:`/`event:`/`data:` lines, or only comments) → its envelope, or null. */
function parseBlock(block) {
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("data:")) data.push(line.slice(line[5] === " " ? 6 : 5));
  }
  if (!data.length) return null;  // a heartbeat comment or `retry:`
  try { return JSON.parse(data.join("\n")); } catch { return null; }
}
