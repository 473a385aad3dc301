// Small helpers: building elements without innerHTML (server text is never parsed as HTML), and
// numbers, durations and times in words.

export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") element.className = value;
    else if (key === "text") element.textContent = value;
    else if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(element.dataset, value);
    else element.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

// Set text only when it changed: the overview rewrites 50 rows a second, mostly unchanged.
export function setText(element, text) {
  if (element.textContent !== text) element.textContent = text;
}

export function seconds(value) {
  if (value === null || value === undefined) return "—";
  if (value < 0.001) return `${(value * 1e6).toFixed(0)} µs`;
  if (value < 1) return `${(value * 1000).toFixed(value < 0.01 ? 2 : 1)} ms`;
  if (value < 60) return `${value.toFixed(value < 10 ? 2 : 1)} s`;
  return duration(value);
}

export function duration(value) {
  const s = Math.floor(value);
  const d = Math.floor(s / 86400), hh = Math.floor((s % 86400) / 3600), mm = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${hh}h`;
  if (hh) return `${hh}h ${String(mm).padStart(2, "0")}m`;
  if (mm) return `${mm}m ${String(s % 60).padStart(2, "0")}s`;
  return `${s}s`;
}

export function count(value) {
  if (value === null || value === undefined) return "—";
  return value >= 10000 ? value.toLocaleString("en") : String(value);
}

export function rate(value) {
  if (value === null || value === undefined) return "—";
  return value >= 100 ? value.toFixed(0) : value >= 10 ? value.toFixed(1) : value.toFixed(2);
}

export function clock(unixSeconds) {
  return new Date(unixSeconds * 1000).toLocaleTimeString();
}

export function ago(unixSeconds, now = Date.now() / 1000) {
  return `${duration(Math.max(0, now - unixSeconds))} ago`;
}

export function pretty(value) {
  return JSON.stringify(value, null, 2);
}

const IMAGE = /^data:image\/(png|jpeg|gif|webp|avif|bmp|svg\+xml)(;[a-z0-9=.+-]*)*,/i;
export function isImage(value) {
  return typeof value === "string" && IMAGE.test(value.slice(0, 100));
}
