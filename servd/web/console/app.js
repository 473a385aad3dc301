// The console's entry point: the token gate, the live event stream, and the router.
//
// Nothing of the deployment is fetched or shown until servd accepts the token (when it asks for
// one). The state below starts from the snapshot servd put in the page (#first-state: the event
// stream's first hello and status, and each endpoint's example request; absent when a token is
// needed), drawn before the stream opens so the page is never blank, and is then kept by GET
// /v1/events (status once a second, reloads as they happen) and /openapi.json (fetched again when
// the config's generation changes); the page on show redraws from it on each event.

import { ApiPage } from "./apidocs.js";
import { Queue, Unauthorized, getJSON, readEvents, token } from "./api.js";
import { EndpointPage } from "./endpoint.js";
import { Overview } from "./overview.js";

const main = document.getElementById("main");
const live = document.getElementById("live");
const forget = document.getElementById("forget");
const HISTORY_POINTS = 300;
const STALE_MS = 3500;

const state = { status: null, endpoints: new Map(), history: new Map(), reloads: [], doc: null, docGeneration: null, seenAt: 0, examples: null };
const queue = new Queue();
let view = null;
let routeKey = null;
let stream = null;
let docLoading = null;

const ctx = {
  queue,
  snapshot: (name) => state.endpoints.get(name),
  errorWords(code) {
    const codes = state.doc ? state.doc.components.schemas.ErrorCode.oneOf : [];
    const found = codes.find((c) => c.const === code);
    return found ? found.description : "";
  },
  // The request the try-it form starts from, as servd's examples.data_example made it for the
  // generation on show (from /openapi.json, or the page's first state until that arrives);
  // `final` is false for a stand-in, which the form replaces once the real one is known.
  example(snapshot) {
    const input = currentDoc() && state.doc.components.schemas[`${snapshot.name}.input`];
    if (input && input.examples) return { value: input.examples[0], final: true };
    const first = currentExamples() && state.examples.byName[snapshot.name];
    if (first) return { value: first.data, final: true };
    return { value: fallbackExample(snapshot.input_schema), final: false };
  },
  // The body for POST /v1/chat/completions of an endpoint with an openai: block, or null.
  chatExample(snapshot) {
    if (!snapshot || !snapshot.openai) return null;
    const examples = currentDoc() && state.doc.paths["/v1/chat/completions"]?.post.requestBody.content["application/json"].examples;
    if (examples && examples[snapshot.openai.model]) return examples[snapshot.openai.model].value;
    const first = currentExamples() && state.examples.byName[snapshot.name];
    return first ? first.chat : null;
  },
};

const generation = () => (state.status ? state.status.generation : null);
const currentDoc = () => Boolean(state.doc) && state.docGeneration === generation();
const currentExamples = () => Boolean(state.examples) && state.examples.generation === generation();

function fallbackExample(schema) {
  if (!schema) return null;
  const kind = Array.isArray(schema.type) ? schema.type[0] : schema.type;
  return { object: {}, array: [], string: "", number: 0, integer: 0, boolean: false }[kind] ?? null;
}

// -- routing ---------------------------------------------------------------------------------

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  if (parts[0] === "endpoints" && parts[1]) return { key: `${parts[1]}/${parts[2] || ""}`, name: parts[1], page: parts[2] || "" };
  return { key: "overview", page: "overview" };
}

function render(focus) {
  const where = route();
  if (where.key === routeKey && view) return;
  if (view && view.unmount) view.unmount();
  routeKey = where.key;
  if (where.page === "overview") view = new Overview(main);
  else if (where.page === "api") view = new ApiPage(main, where.name, ctx);
  else view = new EndpointPage(main, where.name, ctx);
  document.title = where.name ? `${where.name} · servd` : "servd console";
  for (const link of document.querySelectorAll("[data-nav]")) link.toggleAttribute("aria-current", where.page === "overview");
  view.update(state);
  if (focus) {
    window.scrollTo(0, 0);
    main.focus({ preventScroll: true }); // screen readers and keyboards start at the new page
  }
}

window.addEventListener("hashchange", () => { if (stream) render(true); });

// -- the token gate ----------------------------------------------------------------------------

function showGate(refused) {
  view = null;
  routeKey = null;
  live.textContent = "token needed";
  forget.hidden = true;
  main.replaceChildren(document.getElementById("token-gate").content.cloneNode(true));
  const form = document.getElementById("token-form");
  const input = document.getElementById("token");
  if (refused) document.getElementById("token-error").textContent = "servd refused that token.";
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = input.value.trim();
    if (!value) return;
    token.set(value);
    connect();
  });
  input.focus();
}

forget.addEventListener("click", () => {
  token.clear();
  queue.close();
  if (stream) stream.abort();
  stream = null;
  clearState();
  showGate(false);
});

function clearState() {
  Object.assign(state, { status: null, reloads: [], doc: null, docGeneration: null, examples: null });
  state.endpoints.clear();
  state.history.clear();
}

// -- the event stream ------------------------------------------------------------------------

function onEvent(type, body) {
  applyEvent(type, body);
  live.textContent = "live";
  live.dataset.state = "live";
  if (view) view.update(state);
}

function applyEvent(type, body) {
  if (type === "hello") {
    state.history = new Map(Object.entries(body.history));
    state.reloads = body.reloads;
  } else if (type === "status") {
    state.status = body.status;
    state.seenAt = Date.now();
    state.endpoints = new Map(body.endpoints.map((e) => [e.name, e]));
    appendSample(body.sample);
    if (!view) render(false);
    if (state.docGeneration !== body.status.generation) loadDoc(body.status.generation);
  } else if (type === "reload") {
    state.reloads = [...state.reloads, body].slice(-10);
  }
}

function appendSample(sample) {
  for (const [name, point] of Object.entries(sample)) {
    let series = state.history.get(name);
    if (!series) state.history.set(name, (series = { t: [], rps: [], p99_s: [] }));
    if (point.t === undefined || (series.t.length && series.t[series.t.length - 1] >= point.t)) continue; // seen
    series.t.push(point.t);
    series.rps.push(point.rps);
    series.p99_s.push(point.p99_s);
    if (series.t.length > HISTORY_POINTS) for (const key of ["t", "rps", "p99_s"]) series[key].shift();
  }
  for (const name of state.history.keys()) if (!(name in sample)) state.history.delete(name);
}

async function loadDoc(generation) {
  if (docLoading === generation) return;
  docLoading = generation;
  try {
    state.doc = await getJSON("/openapi.json");
    state.docGeneration = generation;
    if (view) view.update(state);
  } catch (error) {
    if (error instanceof Unauthorized) return; // the stream will say so
  } finally {
    if (docLoading === generation) docLoading = null;
  }
}

async function connect() {
  if (stream) stream.abort();
  const controller = new AbortController();
  stream = controller;
  live.textContent = "connecting…";
  forget.hidden = !token.get();
  let delay = 500;
  while (stream === controller) {
    try {
      await readEvents(onEvent, controller.signal);
      delay = 500;
    } catch (error) {
      if (error instanceof Unauthorized) {
        const refused = Boolean(token.get());
        token.clear();
        stream = null;
        clearState();
        showGate(refused);
        return;
      }
      if (controller.signal.aborted) return;
    }
    if (stream !== controller) return;
    live.textContent = "reconnecting…";
    live.dataset.state = "lost";
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 5000);
  }
}

setInterval(() => {
  if (stream && state.seenAt && Date.now() - state.seenAt > STALE_MS && live.dataset.state === "live") {
    live.textContent = "no news from servd…";
    live.dataset.state = "stale";
  }
}, 1000);

// -- the start -----------------------------------------------------------------------------

function firstState() {
  const block = document.getElementById("first-state");
  try {
    return block ? JSON.parse(block.textContent) : null;
  } catch {
    return null;
  }
}

function start() {
  if (token.needed() && !token.get()) {
    showGate(false);
    return;
  }
  const first = firstState();
  if (first) {
    state.examples = { generation: first.generation, byName: first.examples };
    applyEvent("hello", first.hello);
    applyEvent("status", first.status); // draws the page on show from it, before the stream opens
  } else {
    const waiting = document.createElement("p");
    waiting.className = "quiet";
    waiting.textContent = "Connecting to servd…";
    main.replaceChildren(waiting);
  }
  connect();
}

start();
