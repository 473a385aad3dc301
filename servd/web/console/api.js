// Talking to servd: the token (this tab only), authorized fetches, the event stream, the websocket queue.
//
// The token lives in sessionStorage: it survives a reload of the tab, not the tab itself, and it
// travels in the Authorization header (fetch) or as a websocket subprotocol, never in an address.

const TOKEN_KEY = "servd.token";

export class Unauthorized extends Error {}

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (value) => sessionStorage.setItem(TOKEN_KEY, value),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
  needed: () => document.documentElement.dataset.auth === "token",
};

function headers(extra = {}) {
  const value = token.get();
  return value ? { ...extra, Authorization: `Bearer ${value}` } : extra;
}

export async function getJSON(path) {
  const reply = await fetch(path, { headers: headers({ Accept: "application/json" }), cache: "no-store" });
  if (reply.status === 401) throw new Unauthorized();
  if (!reply.ok) throw new Error(`${path}: HTTP ${reply.status}`);
  return reply.json();
}

// GET /v1/events read with fetch (EventSource can't send the Authorization header). Calls
// onEvent(type, body) for each event until the stream ends or `signal` aborts; throws
// Unauthorized on 401. Returns when the server ends the stream.
export async function readEvents(onEvent, signal) {
  const reply = await fetch("/v1/events", { headers: headers({ Accept: "text/event-stream" }), cache: "no-store", signal });
  if (reply.status === 401) throw new Unauthorized();
  if (!reply.ok || !reply.body) throw new Error(`/v1/events: HTTP ${reply.status}`);
  const reader = reply.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let type = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) type = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) onEvent(type, JSON.parse(data.join("\n")));
    }
  }
}

function base64url(text) {
  const bytes = new TextEncoder().encode(text);
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

// One websocket to /v1/ws for the whole console, opened on the first submit: requests go through
// the endpoint's queue like any client's. handlers: {message(msg), lost(reason)} per request id.
export class Queue {
  constructor() {
    this.socket = null;
    this.opening = null;
    this.handlers = new Map();
    this.next = 1;
  }

  open() {
    if (this.opening) return this.opening;
    const url = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/ws`;
    const value = token.get();
    const protocols = value ? ["servd", `servd.bearer.${base64url(value)}`] : ["servd"];
    this.opening = new Promise((resolve, reject) => {
      const socket = new WebSocket(url, protocols);
      socket.onopen = () => { this.socket = socket; resolve(socket); };
      socket.onmessage = (event) => this.dispatch(JSON.parse(event.data));
      socket.onclose = (event) => {
        this.socket = null;
        this.opening = null;
        reject(new Error("the websocket could not be opened"));
        const reason = event.reason || `the connection closed (code ${event.code})`;
        for (const handler of this.handlers.values()) handler.lost(reason);
        this.handlers.clear();
      };
    });
    return this.opening;
  }

  dispatch(message) {
    const handler = this.handlers.get(message.id);
    if (!handler) return;
    if (message.type === "completed" || message.type === "error") this.handlers.delete(message.id);
    handler.message(message);
  }

  async submit(endpoint, data, handler) {
    const socket = await this.open();
    const id = `console-${this.next++}`;
    this.handlers.set(id, handler);
    socket.send(JSON.stringify({ type: "submit", id, endpoint, data }));
    return id;
  }

  cancel(id) {
    if (this.socket && this.handlers.has(id)) this.socket.send(JSON.stringify({ type: "cancel", id }));
  }

  close() {
    if (this.socket) this.socket.close(1000, "signed out");
  }
}
