// An endpoint's page: its live queue, what a new request would wait now, and the try-it form,
// which sends over the websocket queue like any client (api_open: false endpoints included).

import { Spark } from "./charts.js";
import { DataForm } from "./form.js";
import { h, rate, seconds, setText } from "./format.js";
import { cells, endpointHref } from "./overview.js";
import { LOST_WORDS, Run } from "./run.js";

// The request tried on each endpoint, kept across page changes: going to the API tab and back
// shows it still waiting or running (only Cancel, or its end, stops it).
const runs = new Map();

export function header(name, current) {
  const tab = (page, label) => h("a", { href: endpointHref(name, page), "aria-current": current === page ? "page" : null, text: label });
  return [
    h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: "#/", text: "Overview" }), " › ", name),
    h("h1", {}, name),
    h("nav", { class: "tabs", "aria-label": `${name} pages` }, tab("", "Try it"), tab("api", "API")),
  ];
}

function waitText(snapshot) {
  const s = snapshot.stats;
  if (!snapshot.accepting) return "This endpoint is not accepting requests (it is being removed).";
  const busy = `${s.queued} waiting, ${s.workers} of ${s.workers_max} workers busy`;
  if (s.eta_s === null) return `A request sent now: no call has been timed yet, so no estimate (${busy}).`;
  return `A request sent now would finish in about ${seconds(s.eta_s)} (${busy}).`;
}

export class EndpointPage {
  constructor(main, name, ctx) {
    this.name = name;
    this.ctx = ctx;
    this.run = runs.get(name) || null;
    this.form = null;
    this.schemaKey = undefined;
    this.exampleKey = null;
    this.wait = h("p", { class: "wait", dataset: { field: "wait" } });
    this.stats = h("dl", { class: "summary compact" });
    this.statCells = {};
    for (const [key, label] of [["queued", "Queued"], ["running", "Running"], ["workers", "Workers"], ["batch", "Batch"],
      ["wait", "Wait p50 / p99"], ["run", "Run p50 / p99"], ["done", "Done"], ["failed", "Failed"]]) {
      this.statCells[key] = h("dd", { dataset: { field: key } });
      this.stats.append(h("div", {}, h("dt", { text: label }), this.statCells[key]));
    }
    this.config = h("p", { class: "config quiet" });
    this.closedNote = h("p", { class: "note", hidden: true,
      text: "Its HTTP API is closed (api_open: false). This page uses the websocket queue, which stays open, as Gradio's UI does." });
    this.formBox = h("div");
    this.submit = h("button", { type: "submit", class: "primary", text: "Submit" });
    this.cancel = h("button", { type: "button", text: "Cancel", disabled: true, onclick: () => this.cancelRun() });
    this.runBox = h("div", { class: "run-box" });
    const form = h("form", { class: "try-it", "aria-labelledby": "try-title", onsubmit: (event) => { event.preventDefault(); this.send(); } },
      this.formBox, h("div", { class: "actions" }, this.submit, this.cancel));
    this.rps = new Spark(`${name}: requests done per second`, (v) => `${rate(v)}/s`, { width: 300, height: 60 });
    this.p99 = new Spark(`${name}: p99 latency`, seconds, { width: 300, height: 60 });
    this.missing = h("p", { class: "warning", role: "status", hidden: true, text: `No endpoint ${name} is served now.` });
    if (this.run) {
      this.runBox.append(this.run.element);
      this.run.onEnd = () => this.syncButtons();
      this.syncButtons();
    }
    main.replaceChildren(
      ...header(name, ""),
      this.missing,
      this.config, this.closedNote,
      h("section", { "aria-labelledby": "try-title" }, h("h2", { id: "try-title", text: "Try it" }), this.wait, form, this.runBox),
      h("section", { "aria-labelledby": "live-title" }, h("h2", { id: "live-title", text: "Live" }), this.stats,
        h("div", { class: "charts" },
          h("figure", {}, this.rps.element, h("figcaption", { text: "Done per second, the last minutes (up to 5)" })),
          h("figure", {}, this.p99.element, h("figcaption", { text: "p99 latency of what completed each second" })))),
    );
  }

  update(state) {
    const snapshot = state.endpoints.get(this.name);
    this.missing.hidden = Boolean(snapshot);
    if (!snapshot) return;
    this.snapshot = snapshot;
    const key = JSON.stringify(snapshot.input_schema);
    const example = this.ctx.example(snapshot);
    const exampleKey = example.final ? JSON.stringify(example.value) : null;
    const newExample = exampleKey !== null && exampleKey !== this.exampleKey && !this.touched;
    if (key !== this.schemaKey || newExample) this.buildForm(snapshot, key, example, exampleKey);
    const batch = snapshot.batch ? `batches of up to ${snapshot.batch.max_size}` : "no batching";
    setText(this.config, `${snapshot.entrypoint} on ${snapshot.devices.join(", ")} · concurrency ${snapshot.concurrency} · ${batch}`
      + ` · queue ${snapshot.queue.max_size === null ? "unbounded" : `max ${snapshot.queue.max_size}`}`
      + (snapshot.queue.timeout_s === null ? "" : ` · timeout ${seconds(snapshot.queue.timeout_s)}`));
    this.closedNote.hidden = snapshot.api_open;
    setText(this.wait, waitText(snapshot));
    const values = cells(snapshot);
    for (const [field, element] of Object.entries(this.statCells)) setText(element, values[field]);
    const series = state.history.get(this.name) || { t: [], rps: [], p99_s: [] };
    this.rps.update(series.t, series.rps);
    this.p99.update(series.t, series.p99_s);
  }

  // Rebuilt when the schema changes (a reload), and when servd's example for it changes or arrives
  // (after a reload, a stand-in until the new API document brings it), unless the form was edited.
  buildForm(snapshot, key, example, exampleKey) {
    this.schemaKey = key;
    this.exampleKey = exampleKey;
    this.touched = false;
    const previous = this.form;
    this.form = new DataForm(snapshot.input_schema, example.value);
    this.form.element.addEventListener("input", () => { this.touched = true; });
    if (previous && previous.asJSON && !this.form.formable) this.form.editor.value = previous.editor.value;
    this.formBox.replaceChildren(this.form.element);
  }

  async send() {
    if (this.run && this.run.active) return;
    let data;
    try { data = this.form.read(); } catch { return; }
    if (this.run) this.run.dispose();
    const expected = () => { const snapshot = this.ctx.snapshot(this.name); return snapshot ? snapshot.stats.run_s.p50 : null; };
    const run = new Run({
      expectedRun: expected,
      words: (code) => (code === "connection_lost" ? LOST_WORDS : this.ctx.errorWords(code)),
      onEnd: () => this.syncButtons(),
    });
    this.run = run;
    runs.set(this.name, run);
    this.runBox.replaceChildren(run.element);
    this.syncButtons();
    try {
      run.id = await this.ctx.queue.submit(this.name, data, run);
    } catch (error) {
      run.lost(error.message);
    }
  }

  syncButtons() {
    const active = Boolean(this.run && this.run.active);
    this.submit.disabled = active;
    this.cancel.disabled = !active;
  }

  cancelRun() {
    if (this.run && this.run.active && this.run.id) this.ctx.queue.cancel(this.run.id);
  }

  unmount() {
    if (this.run) this.run.onEnd = null; // it goes on; the next visit shows it again
  }
}
