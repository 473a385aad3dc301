// The overview: the daemon at a glance, every endpoint's queue live, and the last reloads.
// Rows are built once per endpoint and then only their changed text is rewritten, so a deployment
// of 50 endpoints costs a few hundred text compares a second.

import { Spark } from "./charts.js";
import { ago, clock, count, duration, h, rate, seconds, setText } from "./format.js";

const COLUMNS = [
  ["queued", "Queued"], ["running", "Running"], ["workers", "Workers"], ["batch", "Batch"],
  ["wait", "Wait p50 / p99"], ["run", "Run p50 / p99"], ["eta", "ETA new"], ["done", "Done"], ["failed", "Failed"],
];

export function endpointHref(name, page = "") {
  return `#/endpoints/${encodeURIComponent(name)}${page ? `/${page}` : ""}`;
}

function pair(quantiles) {
  return `${seconds(quantiles.p50)} / ${seconds(quantiles.p99)}`;
}

export function cells(snapshot) {
  const s = snapshot.stats;
  const failures = Object.entries(s.outcomes).filter(([k, n]) => k !== "completed" && n);
  return {
    queued: count(s.queued),
    running: count(s.running),
    workers: `${s.workers}/${s.workers_max}`,
    batch: snapshot.batch ? `${s.batch_size}/${snapshot.batch.max_size}` : "—",
    wait: pair(s.wait_s),
    run: pair(s.run_s),
    eta: s.eta_s === null ? "—" : seconds(s.eta_s),
    done: count(s.completed),
    failed: count(s.failed),
    failedTitle: failures.length ? failures.map(([k, n]) => `${k}: ${n}`).join(", ") : "none",
  };
}

export function changesText(changes) {
  if (!changes) return "";
  const parts = Object.entries(changes).filter(([, names]) => names.length).map(([kind, names]) => `${kind.replace("_", " ")}: ${names.join(", ")}`);
  return parts.length ? parts.join("; ") : "no changes";
}

export class Overview {
  constructor(main) {
    this.rows = new Map();
    this.summary = {};
    const items = [["config", "Config"], ["generation", "Generation"], ["uptime", "Up"], ["connections", "Websockets"],
      ["consoles", "Consoles"], ["state", "State"]];
    const list = h("dl", { class: "summary" });
    for (const [key, label] of items) {
      this.summary[key] = h("dd", { dataset: { field: key } });
      list.append(h("div", {}, h("dt", { text: label }), this.summary[key]));
    }
    this.restart = h("p", { class: "warning", role: "status", hidden: true });
    this.body = h("tbody");
    const head = h("tr", {}, h("th", { scope: "col", text: "Endpoint" }), COLUMNS.map(([, label]) => h("th", { scope: "col", text: label })),
      h("th", { scope: "col", text: "Done per second" }), h("th", { scope: "col", text: "p99 latency" }));
    this.empty = h("p", { text: "No endpoints are served.", hidden: true });
    this.reloadList = h("ol", { class: "reloads", reversed: true });
    this.noReloads = h("p", { class: "quiet", text: "No reload since the daemon started." });
    main.replaceChildren(
      h("h1", { text: "Overview" }),
      list,
      this.restart,
      h("section", { "aria-labelledby": "endpoints-title" },
        h("h2", { id: "endpoints-title", text: "Endpoints" }),
        h("div", { class: "table-wrap cards" }, h("table", { class: "endpoints" }, h("thead", {}, head), this.body)),
        this.empty),
      h("section", { "aria-labelledby": "reloads-title" },
        h("h2", { id: "reloads-title", text: "Reloads" }), this.noReloads, this.reloadList),
    );
    this.reloadsShown = null;
  }

  update(state) {
    const status = state.status;
    if (!status) return;
    setText(this.summary.config, status.config);
    setText(this.summary.generation, String(status.generation));
    setText(this.summary.uptime, duration(status.uptime_s));
    setText(this.summary.connections, String(status.connections));
    setText(this.summary.consoles, String(status.consoles));
    setText(this.summary.state, status.shutting_down ? "draining" : status.ready ? "ready" : "loading models");
    this.restart.hidden = !status.restart_needed.length;
    setText(this.restart, status.restart_needed.length ? `Restart needed to apply: ${status.restart_needed.join(", ")}` : "");
    this.updateRows(state);
    this.updateReloads(state.reloads);
  }

  updateRows(state) {
    const names = [...state.endpoints.keys()];
    for (const [name, row] of this.rows) if (!state.endpoints.has(name)) { row.element.remove(); this.rows.delete(name); }
    names.forEach((name, index) => {
      let row = this.rows.get(name);
      if (!row) { row = this.makeRow(name); this.rows.set(name, row); }
      if (this.body.children[index] !== row.element) this.body.insertBefore(row.element, this.body.children[index] || null);
      const values = cells(state.endpoints.get(name));
      for (const [key] of COLUMNS) setText(row.cells[key], values[key]);
      row.cells.failed.title = values.failedTitle;
      const series = state.history.get(name) || { t: [], rps: [], p99_s: [] };
      row.rps.update(series.t, series.rps);
      row.p99.update(series.t, series.p99_s);
    });
    this.empty.hidden = names.length > 0;
  }

  makeRow(name) {
    const cellsByKey = {};
    const tds = COLUMNS.map(([key, label]) => (cellsByKey[key] = h("td", { class: "num", dataset: { label, field: key } })));
    const rps = new Spark(`${name}: requests done per second`, (v) => `${rate(v)}/s`);
    const p99 = new Spark(`${name}: p99 latency`, seconds);
    const element = h("tr", { dataset: { endpoint: name } },
      h("th", { scope: "row" }, h("a", { href: endpointHref(name), text: name })),
      tds,
      h("td", { class: "chart", dataset: { label: "Done/s" } }, rps.element),
      h("td", { class: "chart", dataset: { label: "p99" } }, p99.element));
    return { element, cells: cellsByKey, rps, p99 };
  }

  updateReloads(reloads) {
    if (this.reloadsShown === reloads.length && reloads.length && this.lastReloadAt === reloads[reloads.length - 1].at) {
      for (const item of this.reloadList.children) setText(item.querySelector(".ago"), ago(Number(item.dataset.at)));
      return;
    }
    this.reloadsShown = reloads.length;
    this.lastReloadAt = reloads.length ? reloads[reloads.length - 1].at : null;
    this.noReloads.hidden = reloads.length > 0;
    this.reloadList.replaceChildren(...reloads.slice().reverse().map(reloadItem));
  }
}

export function reloadItem(record) {
  const item = h("li", { class: `reload ${record.result}`, dataset: { result: record.result, at: record.at } },
    h("span", { class: `badge ${record.result}`, text: record.result }), " ",
    h("time", { text: clock(record.at) }), " ", h("span", { class: "ago quiet", text: ago(record.at) }),
    h("span", { class: "quiet", text: ` · took ${seconds(record.took_s)}` }));
  if (record.changes) item.append(h("div", { class: "changes", text: changesText(record.changes) }));
  if (record.error) item.append(h("pre", { class: "problems", text: record.error }));
  return item;
}
