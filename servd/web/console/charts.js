// Small line charts drawn as inline SVG: the last few minutes of one series, a point a second.
// One path per chart whose `d` is rewritten on each update; no library, nothing fetched.

const SVG = "http://www.w3.org/2000/svg";
const MIN_SPAN_S = 30;

function svg(tag, attributes) {
  const element = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  return element;
}

export class Spark {
  // label: what the chart shows (read by screen readers with its latest value); format(v): its unit.
  constructor(label, format, { width = 120, height = 28, window = 300 } = {}) {
    this.label = label;
    this.format = format;
    this.width = width;
    this.height = height;
    this.window = window;
    this.element = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "spark", role: "img", preserveAspectRatio: "none" });
    this.title = svg("title", {});
    this.area = svg("path", { class: "spark-area" });
    this.line = svg("path", { class: "spark-line" });
    this.element.append(this.title, this.area, this.line);
    this.drawn = "";
  }

  // times: unix seconds, ascending; values: numbers or null (no data that second).
  update(times, values) {
    const last = values.length ? values[values.length - 1] : null;
    const text = `${this.label}: ${last === null ? "no data" : this.format(last)} now`;
    if (this.title.textContent !== text) {
      this.title.textContent = text;
      this.element.setAttribute("aria-label", text);
    }
    if (!times.length) return;
    // The x axis spans the data there is (at least MIN_SPAN_S), up to the window: a console opened
    // on a daemon that started a minute ago draws that minute across the whole chart.
    const end = times[times.length - 1];
    const start = end - Math.min(this.window, Math.max(MIN_SPAN_S, end - times[0]));
    const span = end - start;
    let top = 0;
    for (const v of values) if (v !== null && v > top) top = v;
    top = top > 0 ? top * 1.15 : 1;
    const x = (t) => ((t - start) / span) * this.width;
    const y = (v) => this.height - 1 - (v / top) * (this.height - 2);
    let line = "", area = "", run = [];
    const flush = () => {
      if (!run.length) return;
      line += run.map(([px, py], i) => `${i ? "L" : "M"}${px.toFixed(1)} ${py.toFixed(1)}`).join("");
      area += `M${run[0][0].toFixed(1)} ${this.height}` + run.map(([px, py]) => `L${px.toFixed(1)} ${py.toFixed(1)}`).join("")
        + `L${run[run.length - 1][0].toFixed(1)} ${this.height}Z`;
      run = [];
    };
    for (let i = 0; i < times.length; i++) {
      if (times[i] < start) continue;
      if (values[i] === null) flush();
      else run.push([x(times[i]), y(values[i])]);
    }
    flush();
    if (line !== this.drawn) {
      this.drawn = line;
      this.line.setAttribute("d", line);
      this.area.setAttribute("d", area);
    }
  }
}
