// One try-it request, from submit to its end, as the websocket queue reports it: place in line and
// an ETA counting down, then started with a progress bar, each partial as it streams, and the
// result (an image when it is a data: URL of one) or the error in plain words.

import { h, isImage, pretty, seconds } from "./format.js";

const TICK_MS = 100;
const LOST = "connection_lost";

export class Run {
  // expectedRun(): the endpoint's typical run time (run p50) or null; words(code): an error code in plain words.
  constructor({ expectedRun, words, onEnd }) {
    this.expectedRun = expectedRun;
    this.words = words;
    this.onEnd = onEnd;
    this.id = null;
    this.state = "sending";
    this.stateLine = h("p", { class: "run-state", role: "status", "aria-live": "polite", text: "Sending…" });
    this.rank = h("output", { class: "rank", dataset: { rank: "" } });
    this.eta = h("output", { class: "eta" });
    this.place = h("dl", { class: "place", hidden: true },
      h("div", {}, h("dt", { text: "Requests ahead of yours" }), h("dd", {}, this.rank)),
      h("div", {}, h("dt", { text: "Expected to finish in" }), h("dd", {}, this.eta)));
    this.progress = h("progress", { class: "progress", hidden: true, max: 1, "aria-label": "Progress of the call" });
    this.elapsed = h("span", { class: "elapsed quiet" });
    this.partials = h("ol", { class: "partials", hidden: true, "aria-label": "Partial results", "aria-live": "polite" });
    this.result = h("div", { class: "result", hidden: true });
    this.element = h("section", { class: "run", "aria-label": "Your request", dataset: { state: this.state } },
      this.stateLine, this.place, h("div", { class: "progress-line" }, this.progress, " ", this.elapsed),
      this.partials, this.result);
    this.timer = setInterval(() => this.tick(), TICK_MS);
  }

  setState(state, text) {
    this.state = state;
    this.element.dataset.state = state;
    this.stateLine.textContent = text;
  }

  message(msg) {
    if (msg.type === "queued" || msg.type === "estimation") return this.waiting(msg);
    if (msg.type === "started") return this.started();
    if (msg.type === "partial") return this.partial(msg.data);
    if (msg.type === "completed") return this.completed(msg);
    if (msg.type === "error") return this.failed(msg.error.code, msg.error.message);
  }

  waiting(msg) {
    if (this.state === "running") return;
    this.setState("queued", msg.rank === 0 ? "Waiting: next in line." : `Waiting in line: ${msg.rank} ahead of yours.`);
    this.place.hidden = false;
    this.rank.dataset.rank = String(msg.rank);
    this.rank.textContent = `${msg.rank} (of ${msg.queue_size} waiting)`;
    this.etaAt = msg.eta_s === null ? null : performance.now() + msg.eta_s * 1000;
    this.tick();
  }

  started() {
    this.setState("running", "Running.");
    this.place.hidden = true;
    this.startedAt = performance.now();
    this.progress.hidden = false;
    const expected = this.expectedRun();
    if (expected) this.progress.value = 0; else this.progress.removeAttribute("value");
    this.tick();
  }

  partial(data) {
    this.partials.hidden = false;
    const item = h("li", { class: "partial" });
    show(item, data);
    this.partials.append(item);
  }

  completed(msg) {
    const t = msg.timing;
    this.finish("completed", `Completed: waited ${seconds(t.queue_s)}, ran ${seconds(t.run_s)} in a batch of ${t.batch_size}.`);
    this.result.hidden = false;
    this.result.replaceChildren(h("h3", { text: "Result" }));
    show(this.result, msg.data);
  }

  failed(code, message) {
    this.finish(code === "cancelled" ? "cancelled" : "failed", code === "cancelled" ? "Cancelled." : "Failed.");
    this.result.hidden = false;
    this.result.replaceChildren(h("div", { class: "error-box", role: "alert", dataset: { code } },
      h("p", {}, h("strong", { class: "code", text: code }), " — ", this.words(code) || ""),
      message ? h("p", { class: "message", text: message }) : null));
  }

  lost(reason) {
    this.failed(LOST, reason);
  }

  finish(state, text) {
    clearInterval(this.timer);
    this.setState(state, text);
    this.place.hidden = true;
    this.progress.hidden = true;
    this.elapsed.textContent = "";
    if (this.onEnd) this.onEnd(this);
  }

  get active() {
    return this.state === "sending" || this.state === "queued" || this.state === "running";
  }

  tick() {
    const now = performance.now();
    if (this.state === "queued") {
      if (this.etaAt === null || this.etaAt === undefined) this.eta.textContent = "unknown until a call has been timed";
      else {
        const left = (this.etaAt - now) / 1000;
        this.eta.textContent = left > 0.05 ? `about ${left.toFixed(1)} s` : "any moment now";
        this.eta.dataset.seconds = Math.max(0, left).toFixed(2);
      }
    } else if (this.state === "running") {
      const ran = (now - this.startedAt) / 1000;
      this.elapsed.textContent = `running for ${seconds(ran)}`;
      const expected = this.expectedRun();
      if (expected) this.progress.value = Math.min(0.95, ran / expected);
    }
  }

  dispose() {
    clearInterval(this.timer);
  }
}

// A value as the page shows it: an image for a data: URL of one, else pretty JSON (with any
// top-level image fields of an object shown as images too).
export function show(container, data) {
  if (isImage(data)) {
    container.append(h("img", { src: data, alt: "Image returned by the endpoint", class: "result-image" }));
    return;
  }
  container.append(h("pre", { class: "json", text: typeof data === "string" ? data : pretty(data) }));
  if (data && typeof data === "object" && !Array.isArray(data)) {
    for (const [key, value] of Object.entries(data)) {
      if (isImage(value)) container.append(h("img", { src: value, alt: `${key}: image returned by the endpoint`, class: "result-image" }));
    }
  }
}

export const LOST_WORDS = "The connection to servd closed before the answer came; servd cancelled the request.";
