// The try-it form, built from an endpoint's input_schema: a field per property (text, number,
// checkbox, choice, list of numbers; a small JSON editor for anything else), or one field for a
// schema that is itself such a value. Without a schema, or for shapes a form can't say, a JSON
// editor. "Edit as JSON" switches any form to the editor and back. The server checks the data
// against the schema either way: this form only helps to write it.

import { h, pretty } from "./format.js";

let serial = 0;
export class FieldError extends Error {
  constructor(message, input) { super(message); this.input = input; }
}

function typeOf(schema) {
  if (!schema || typeof schema !== "object") return null;
  if (Array.isArray(schema.enum)) return "enum";
  if ("const" in schema) return "const";
  let kind = schema.type;
  if (Array.isArray(kind)) kind = kind.find((k) => k !== "null") || null;
  if (kind === "array") {
    const items = schema.items || {};
    const itemKind = Array.isArray(items.type) ? items.type.find((k) => k !== "null") : items.type;
    return itemKind === "number" || itemKind === "integer" ? "numbers" : "json";
  }
  if (["string", "number", "integer", "boolean"].includes(kind)) return kind;
  if (kind === "object" || schema.properties) return schema.properties ? "object" : "json";
  return "json";
}

function field(name, schema, value, required) {
  const kind = typeOf(schema);
  const id = `field-${++serial}`;
  const hintId = `${id}-hint`;
  const hints = [];
  if (schema && schema.description) hints.push(schema.description);
  let input, read, write;
  const described = (attrs) => ({ ...attrs, id, name, "aria-describedby": hintId });
  if (kind === "enum") {
    const options = schema.enum.map((option) => h("option", { value: JSON.stringify(option), text: typeof option === "string" ? option : JSON.stringify(option) }));
    input = h("select", described({}), required ? null : h("option", { value: "", text: "(leave out)" }), options);
    read = () => (input.value === "" ? undefined : JSON.parse(input.value));
    write = (v) => { input.value = v === undefined ? (required ? input.options[0].value : "") : JSON.stringify(v); };
  } else if (kind === "boolean") {
    input = h("input", described({ type: "checkbox" }));
    read = () => input.checked;
    write = (v) => { input.checked = Boolean(v); };
  } else if (kind === "number" || kind === "integer") {
    input = h("input", described({ type: "number", inputmode: kind === "integer" ? "numeric" : "decimal", step: kind === "integer" ? "1" : "any",
      min: schema.minimum ?? null, max: schema.maximum ?? null, required }));
    read = () => {
      if (input.value.trim() === "") { if (required) throw new FieldError(`${name}: a number is needed`, input); return undefined; }
      const n = Number(input.value);
      if (!Number.isFinite(n) || (kind === "integer" && !Number.isInteger(n))) throw new FieldError(`${name}: ${input.value} is not ${kind === "integer" ? "an integer" : "a number"}`, input);
      return n;
    };
    write = (v) => { input.value = v === undefined || v === null ? "" : String(v); };
    if (schema.minimum !== undefined || schema.maximum !== undefined) hints.push(`from ${schema.minimum ?? "−∞"} to ${schema.maximum ?? "∞"}`);
  } else if (kind === "string") {
    const long = !(schema.maxLength <= 80);
    input = long ? h("textarea", described({ rows: 2, spellcheck: "false" })) : h("input", described({ type: "text", spellcheck: "false" }));
    read = () => (input.value === "" && !required ? undefined : input.value);
    write = (v) => { input.value = v === undefined || v === null ? "" : String(v); };
  } else if (kind === "numbers") {
    input = h("textarea", described({ rows: 3, spellcheck: "false", inputmode: "decimal" }));
    const bounds = [schema.minItems, schema.maxItems];
    hints.push(`Numbers separated by commas or spaces${bounds[0] !== undefined && bounds[0] === bounds[1] ? ` (${bounds[0]} of them)` : ""}.`);
    read = () => {
      const parts = input.value.split(/[\s,]+/).filter(Boolean);
      const numbers = parts.map(Number);
      const bad = parts.find((p, i) => !Number.isFinite(numbers[i]));
      if (bad !== undefined) throw new FieldError(`${name}: ${bad} is not a number`, input);
      return numbers;
    };
    write = (v) => { input.value = Array.isArray(v) ? v.join(", ") : ""; };
  } else if (kind === "const") {
    input = h("input", described({ type: "text", readonly: true }));
    read = () => schema.const;
    write = () => { input.value = JSON.stringify(schema.const); };
  } else {
    input = h("textarea", described({ rows: 4, spellcheck: "false", class: "code" }));
    hints.push("JSON");
    read = () => {
      if (input.value.trim() === "" && !required) return undefined;
      try { return JSON.parse(input.value); } catch (error) { throw new FieldError(`${name}: not valid JSON (${error.message})`, input); }
    };
    write = (v) => { input.value = v === undefined ? "" : pretty(v); };
  }
  write(value);
  const label = h("label", { for: id }, name, required ? h("span", { class: "required", "aria-hidden": "true", text: " *" }) : null);
  const hint = h("small", { id: hintId, class: "hint", text: hints.join(" ") });
  const element = h("div", { class: `field ${kind}` }, kind === "boolean" ? [input, " ", label] : [label, input], hint);
  return { element, read, write, input };
}

export class DataForm {
  // schema: the endpoint's input_schema (or null); example: a value that meets it.
  constructor(schema, example) {
    this.schema = schema;
    this.fields = [];
    this.fieldsBox = h("div", { class: "fields" });
    this.editor = h("textarea", { id: `json-${++serial}`, class: "code json-editor", rows: 8, spellcheck: "false", "aria-label": "Request data as JSON" });
    this.editorBox = h("div", { class: "field json" }, h("label", { for: this.editor.id, text: "Data (JSON)" }), this.editor);
    const kind = typeOf(schema);
    this.formable = kind !== null && kind !== "json";
    if (kind === "object") {
      const required = new Set(schema.required || []);
      for (const [name, sub] of Object.entries(schema.properties)) {
        this.fields.push({ name, ...field(name, sub, example && example[name], required.has(name)) });
      }
    } else if (this.formable) {
      this.fields.push({ name: null, ...field("data", schema, example, true) });
    }
    this.fieldsBox.append(...this.fields.map((f) => f.element));
    this.editor.value = pretty(example);
    this.toggle = h("input", { type: "checkbox", id: `as-json-${serial}`, onchange: () => this.switchTo(this.toggle.checked) });
    this.toggleBox = h("div", { class: "field toggle" }, this.toggle, " ", h("label", { for: this.toggle.id, text: "Edit as JSON" }));
    this.error = h("p", { class: "error", role: "alert" });
    this.element = h("div", { class: "data-form" }, this.formable ? this.toggleBox : null, this.fieldsBox, this.editorBox, this.error);
    this.asJSON = !this.formable;
    this.show();
  }

  show() {
    this.fieldsBox.hidden = this.asJSON;
    this.editorBox.hidden = !this.asJSON;
  }

  switchTo(asJSON) {
    this.error.textContent = "";
    try {
      if (asJSON) this.editor.value = pretty(this.readFields());
      else this.writeFields(this.readEditor());
      this.asJSON = asJSON;
    } catch (error) {
      this.toggle.checked = this.asJSON;
      this.error.textContent = error.message;
    }
    this.show();
  }

  readEditor() {
    try { return JSON.parse(this.editor.value); } catch (error) { throw new FieldError(`Not valid JSON: ${error.message}`, this.editor); }
  }

  readFields() {
    if (this.fields.length === 1 && this.fields[0].name === null) return this.fields[0].read();
    const value = {};
    for (const f of this.fields) {
      const v = f.read();
      if (v !== undefined) value[f.name] = v;
    }
    return value;
  }

  writeFields(value) {
    if (this.fields.length === 1 && this.fields[0].name === null) return this.fields[0].write(value);
    if (!value || typeof value !== "object" || Array.isArray(value)) throw new Error("The schema wants an object here.");
    for (const f of this.fields) f.write(value[f.name]);
  }

  // The data to send; throws FieldError (shown, and its field focused) when a field can't be read.
  read() {
    this.error.textContent = "";
    try {
      return this.asJSON ? this.readEditor() : this.readFields();
    } catch (error) {
      this.error.textContent = error.message;
      if (error.input) error.input.focus();
      throw error;
    }
  }
}
