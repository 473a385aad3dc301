// An endpoint's API page, from /openapi.json: copyable curl, websocket and Python snippets, the
// request schema and every answer it can get.

import { header } from "./endpoint.js";
import { h, pretty } from "./format.js";

function shellQuote(text) {
  return `'${text.replaceAll("'", "'\\''")}'`;
}

export function pythonLiteral(value, indent = "") {
  if (value === null) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number" || typeof value === "string") return JSON.stringify(value);
  const inner = indent + "    ";
  if (Array.isArray(value)) {
    const flat = `[${value.map((v) => pythonLiteral(v, inner)).join(", ")}]`;
    return flat.length <= 80 ? flat : `[\n${inner}${value.map((v) => pythonLiteral(v, inner)).join(`,\n${inner}`)},\n${indent}]`;
  }
  const entries = Object.entries(value).map(([k, v]) => `${JSON.stringify(k)}: ${pythonLiteral(v, inner)}`);
  const flat = `{${entries.join(", ")}}`;
  return flat.length <= 80 ? flat : `{\n${inner}${entries.join(`,\n${inner}`)},\n${indent}}`;
}

// chat: for an endpoint with an openai: block, the body of POST /v1/chat/completions (or null).
export function snippets(name, data, { tokens, apiOpen, chat = null, origin = location.origin }) {
  const wsOrigin = origin.replace(/^http/, "ws");
  const auth = tokens ? ` -H "Authorization: Bearer $SERVD_TOKEN"` : "";
  const body = JSON.stringify({ data });
  const message = JSON.stringify({ type: "submit", id: 1, endpoint: name, data });
  const list = [];
  if (apiOpen && chat) {
    list.push(["curl, OpenAI chat completions",
      `curl -s ${origin}/v1/chat/completions${auth} \\\n  -H 'Content-Type: application/json' -d ${shellQuote(JSON.stringify(chat))}`]);
    const { model, messages, ...rest } = chat;
    const extra = Object.entries(rest).map(([key, value]) => `, ${key}=${pythonLiteral(value, "    ")}`).join("");
    list.push(["Python (openai)", [
      "import os",
      "",
      "from openai import OpenAI",
      "",
      `client = OpenAI(base_url="${origin}/v1", api_key=os.environ.get("SERVD_TOKEN", "none"))`,
      `reply = client.chat.completions.create(model=${JSON.stringify(model)}, messages=${pythonLiteral(messages)}${extra})`,
      "print(reply.choices[0].message.content)",
    ].join("\n")]);
  }
  if (apiOpen) {
    list.push(["curl", `curl -s ${origin}/v1/endpoints/${name}${auth} \\\n  -H 'Content-Type: application/json' -d ${shellQuote(body)}`]);
    list.push(["curl, streamed (server-sent events)",
      `curl -sN ${origin}/v1/endpoints/${name}${auth} \\\n  -H 'Accept: text/event-stream' -d ${shellQuote(body)}`]);
  }
  list.push(["Websocket (websocat)", `echo ${shellQuote(message)} \\\n  | websocat${auth} ${wsOrigin}/v1/ws`]);
  const token = tokens ? `, token=os.environ["SERVD_TOKEN"]` : "";
  list.push(["Python (servd.client)", [
    ...(tokens ? ["import os", ""] : []),
    "from servd.client import Client",
    "",
    `with Client("${wsOrigin}"${token}) as client:`,
    `    print(client.predict(${JSON.stringify(name)}, ${pythonLiteral(data, "    ")}))`,
  ].join("\n")]);
  return list;
}

async function copy(button, code) {
  try {
    await navigator.clipboard.writeText(code.textContent);
    button.textContent = "Copied";
  } catch {
    getSelection().selectAllChildren(code);
    button.textContent = "Selected: press Ctrl+C";
  }
  setTimeout(() => { button.textContent = "Copy"; }, 2000);
}

function snippet(title, text, index) {
  const code = h("code", { text });
  const id = `snippet-${index}`;
  const button = h("button", { type: "button", class: "copy", "aria-describedby": id, text: "Copy", onclick: () => copy(button, code) });
  return h("section", { class: "snippet" }, h("h3", { id, text: title }), h("div", { class: "code-box" }, h("pre", {}, code), button));
}

export class ApiPage {
  constructor(main, name, ctx) {
    this.name = name;
    this.ctx = ctx;
    this.body = h("div", { class: "api", "aria-live": "polite" }, h("p", { class: "quiet", text: "Loading the API document…" }));
    main.replaceChildren(...header(name, "api"), this.body);
    this.shown = null;
  }

  update(state) {
    const doc = state.doc;
    const key = doc ? `${state.docGeneration}` : null;
    if (!doc || key === this.shown) return;
    this.shown = key;
    const path = doc.paths[`/v1/endpoints/${this.name}`];
    if (!path) {
      this.body.replaceChildren(h("p", { class: "warning", text: `No endpoint ${this.name} in the API document.` }));
      return;
    }
    const input = doc.components.schemas[`${this.name}.input`] || {};
    const snapshot = state.endpoints.get(this.name);
    const data = input.examples ? input.examples[0] : snapshot ? this.ctx.example(snapshot).value : null;
    const chat = this.ctx.chatExample(snapshot);
    const apiOpen = snapshot ? snapshot.api_open : true;
    const tokens = Boolean(doc.components.securitySchemes);
    const parts = [];
    if (!apiOpen) parts.push(h("p", { class: "note", text: "The HTTP API of this endpoint is closed (api_open: false): use the websocket queue." }));
    if (tokens) parts.push(h("p", { class: "quiet", text: "Set SERVD_TOKEN to one of the tokens of server.tokens_file first." }));
    if (chat && apiOpen) parts.push(h("p", { text: `This endpoint is also the OpenAI-compatible chat model "${chat.model}": POST /v1/chat/completions, or any OpenAI client pointed at ${location.origin}/v1.` }));
    parts.push(...snippets(this.name, data, { tokens, apiOpen, chat }).map(([title, text], i) => snippet(title, text, i)));
    const schema = { ...input };
    delete schema.examples;
    parts.push(h("section", {}, h("h3", { text: "Request data (/v1/endpoints and the websocket)" }), h("pre", { class: "json", text: pretty(schema) })));
    parts.push(responses(path.post.responses, doc));
    parts.push(h("p", { class: "quiet", text: `The whole OpenAPI 3.1 document: GET ${location.origin}/openapi.json` }));
    this.body.replaceChildren(...parts);
  }
}

function responses(answers, doc) {
  const words = new Map(doc.components.schemas.ErrorCode.oneOf.map((c) => [c.const, c.description]));
  const rows = [];
  for (const [status, answer] of Object.entries(answers)) {
    const codes = answer.content?.["application/json"]?.schema?.properties?.error?.properties?.code?.enum;
    if (!codes) rows.push(h("tr", {}, h("td", { text: status }), h("td", { text: "—" }), h("td", { text: answer.description })));
    else for (const code of codes) rows.push(h("tr", {}, h("td", { text: status }), h("td", {}, h("code", { text: code })), h("td", { text: words.get(code) })));
  }
  return h("section", {}, h("h3", { text: "Answers over HTTP" }),
    h("div", { class: "table-wrap" }, h("table", { class: "answers" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col", text: "Status" }), h("th", { scope: "col", text: "Code" }), h("th", { scope: "col", text: "Meaning" }))),
      h("tbody", {}, rows))));
}
