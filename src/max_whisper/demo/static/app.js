// max-whisper demo page: no framework, no network beyond this server.
"use strict";

const $ = (selector) => document.querySelector(selector);
const SVG = "http://www.w3.org/2000/svg";
let config = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== null) node.textContent = text;
  return node;
}

const fmt = (value, digits) => (value === null || value === undefined ? "–" : Number(value).toFixed(digits));
const fmtTime = (s) => `${Math.floor(s / 60)}:${(s % 60).toFixed(1).padStart(4, "0")}`;

async function loadConfig() {
  const response = await fetch("/api/config");
  config = await response.json();

  const clip = $("#clip");
  for (const c of config.clips) {
    clip.append(el("option", { value: c.name }, `${c.name} (${c.seconds.toFixed(1)} s)`));
  }
  clip.addEventListener("change", clearUpload); // a clip picked after an upload is the one that runs
  $("#file").addEventListener("change", showReference);
  $("#clear-file").addEventListener("click", clearUpload);
  showReference();
  $("#beam-size").textContent = config.beam_size;

  const model = $("#model");
  for (const m of config.models) model.append(el("option", { value: m }, m));

  const box = $("#backends");
  config.backends.forEach((b, i) => {
    const input = el("input", { type: "checkbox", name: "backend", value: b.name, id: `backend-${b.name}` });
    input.checked = i < 2; // the first two preselected
    const label = el("label", { for: input.id, class: b.device === "gpu" ? "gpu" : "" }, input, ` ${b.name}`);
    if (b.device === "gpu") label.append(el("span", { class: "badge" }, "GPU"));
    box.append(label);
  });
  if (config.skipped.length) {
    const names = config.skipped.map((s) => s.backend || s.model).join(", ");
    const note = el("p", { class: "hint" }, `Not available here: ${names}.`);
    note.title = config.skipped.map((s) => `${s.backend || s.model}: ${s.reason}`).join("\n");
    box.after(note);
  }
}

function clearUpload() {
  $("#file").value = "";
  showReference();
}

function showReference() {
  $("#clear-file").hidden = !$("#file").files.length;
  const p = $("#reference");
  const chosen = config.clips.find((c) => c.name === $("#clip").value);
  if ($("#file").files.length || !chosen || !chosen.reference) {
    p.hidden = true;
    return;
  }
  p.hidden = false;
  p.textContent = `reference: ${chosen.reference}`;
}

async function run(event) {
  event.preventDefault();
  const backends = [...document.querySelectorAll("input[name=backend]:checked")].map((i) => i.value);
  if (!backends.length) {
    $("#status").textContent = "choose at least one backend";
    return;
  }
  const form = new FormData();
  form.append("model", $("#model").value);
  form.append("backends", backends.join(","));
  form.append("decoding", document.querySelector("input[name=decoding]:checked").value);
  form.append("condition_on_previous_text", $("#condition").checked ? "true" : "false");
  const file = $("#file").files[0];
  if (file) form.append("file", file);
  else form.append("clip", $("#clip").value);

  const button = $("#run");
  button.disabled = true;
  const started = performance.now();
  $("#status").textContent = "running…";
  $("#error").hidden = true;
  const ticker = setInterval(() => {
    $("#status").textContent = `running… ${((performance.now() - started) / 1000).toFixed(0)} s`;
  }, 1000);
  try {
    const response = await fetch("/api/transcribe", { method: "POST", body: form });
    const body = await response.json().catch(() => ({ detail: response.statusText }));
    if (!response.ok) {
      const detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
      throw new Error(detail || `HTTP ${response.status}`);
    }
    render(body);
    $("#status").textContent = `done in ${((performance.now() - started) / 1000).toFixed(1)} s`;
  } catch (error) {
    showError(error.message);
  } finally {
    clearInterval(ticker);
    button.disabled = false;
  }
}

// An error replaces the last results: nothing stale stays on the page.
function showError(message) {
  $("#status").textContent = "failed";
  $("#error").textContent = message;
  $("#error").hidden = false;
  $("#output").hidden = true;
  $("#results").replaceChildren();
  $("#options").textContent = "";
  $("#chart").replaceChildren();
  $("#timings tbody").replaceChildren();
}

function describeOptions(o) {
  return [
    o.beam_size > 1 ? `beam search, ${o.beam_size} beams` : "greedy",
    `temperature ${o.temperature} (no fallback)`,
    o.condition_on_previous_text ? "conditioned on previous text" : "not conditioned on previous text",
    `language ${o.language}`,
  ].join(" · ");
}

function appendDiff(node, diff) {
  for (const part of diff) {
    if (node.childNodes.length) node.append(" ");
    node.append(part.op === "equal" ? part.text : el(part.op === "insert" ? "ins" : "del", {}, part.text));
  }
}

function render(body) {
  $("#output").hidden = false;
  $("#source").textContent = `${body.source}, ${body.audio_s.toFixed(1)} s, ${body.model}`;
  $("#options").textContent = `Options: ${describeOptions(body.options)}`;

  const results = $("#results");
  results.replaceChildren();
  body.results.forEach((r, i) => {
    let text;
    if (r.error) {
      text = el("p", { class: "transcript error" }, r.error);
    } else if (!r.segments.length) {
      text = el("p", { class: "transcript hint" }, "(no speech)");
    } else {
      // one line per segment, its times beside its words
      text = el("ol", { class: "transcript" });
      for (const segment of r.segments) {
        const words = el("span", { class: "text" });
        appendDiff(words, segment.diff);
        text.append(el("li", { class: "segment" },
          el("span", { class: "time" }, `${fmtTime(segment.start)}–${fmtTime(segment.end)}`), words));
      }
    }
    const note = i === 0 ? "baseline" : r.error ? "" : `${r.changed_words} word(s) differ`;
    results.append(el("article", { class: "result", "data-backend": r.backend },
      el("h3", {}, r.backend, el("small", {}, ` ${note}`)), text));
  });

  const rows = body.results.map((r) => el("tr", {},
    el("td", {}, r.backend), el("td", {}, fmt(r.wall_s, 3)), el("td", {}, fmt(r.rtfx, 2)),
    el("td", {}, fmt(r.encoder_ms_per_window, 0)), el("td", {}, fmt(r.decoder_ms_per_token, 1)),
    el("td", {}, r.tokens ?? "–"), el("td", {}, r.wer === null ? "–" : `${(100 * r.wer).toFixed(1)}%`),
    el("td", {}, r.load_s ? fmt(r.load_s, 1) : "–")));
  $("#timings tbody").replaceChildren(...rows);
  drawChart(body.results.filter((r) => !r.error));
}

// Horizontal bars of RTFx, one per backend, in plain SVG.
function drawChart(results) {
  const chart = $("#chart");
  chart.replaceChildren();
  if (!results.length) return;
  const bar = 26, gap = 10, left = 190, right = 70, width = 720;
  const height = results.length * (bar + gap) + gap;
  const top = Math.max(...results.map((r) => r.rtfx));
  const image = svg("svg", { viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img",
                              "aria-label": "RTFx per backend" });
  results.forEach((r, i) => {
    const y = gap + i * (bar + gap);
    const w = Math.max(2, ((width - left - right) * r.rtfx) / top);
    image.append(svg("text", { x: left - 8, y: y + bar * 0.68, "text-anchor": "end", class: "label" }, r.backend));
    const rect = svg("rect", { x: left, y, width: w, height: bar, rx: 3, class: `bar bar-${i % 6}` });
    rect.append(svg("title", {}, `${r.backend}: RTFx ${fmt(r.rtfx, 2)}, ${fmt(r.wall_s, 3)} s`));
    image.append(rect);
    image.append(svg("text", { x: left + w + 6, y: y + bar * 0.68, class: "value" }, `${fmt(r.rtfx, 1)}×`));
  });
  chart.append(image);
}

$("#job").addEventListener("submit", run);
loadConfig().catch((error) => { $("#status").textContent = `cannot load the configuration: ${error.message}`; });
