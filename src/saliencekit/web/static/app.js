// saliencekit explorer: a small hand-written page over the JSON API in saliencekit/web/app.py.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, image: null, polling: null, job: null, pending: null, estimate: null };
const CURVE_COLOURS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#be185d", "#4b5563"];

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c) e.append(c);
  return e;
}

function showError(msg) {
  const box = $("error");
  box.textContent = msg;
  box.hidden = !msg;
}

async function api(path, options) {
  let resp;
  try {
    resp = await fetch(path, options);
  } catch (err) {
    throw new Error("The server cannot be reached (is `saliencekit serve` still running?).");
  }
  let body = null;
  try { body = await resp.json(); } catch (err) { body = null; }
  if (!resp.ok) throw new Error((body && body.error) || `The server answered ${resp.status}.`);
  return body;
}

function colourBar(cmap, signed) {
  const stops = state.info.colormaps[cmap];
  const bar = el("div", { class: "cbar" });
  bar.style.background = `linear-gradient(to right, ${stops.join(", ")})`;
  const labels = signed
    ? el("div", { class: "cbar-labels" }, el("span", { text: "− lowers score" }), el("span", { text: "0" }),
      el("span", { text: "raises score +" }))
    : el("div", { class: "cbar-labels" }, el("span", { text: "0 (low)" }), el("span", { text: "1 (high)" }));
  return el("div", {}, bar, labels);
}

// ---------- start-up ----------
async function init() {
  try {
    state.info = await api("/api/info");
  } catch (err) { showError(err.message); return; }
  const info = state.info;
  $("model-line").textContent = `model: ${info.model} (${info.device})`;
  for (const name of info.samples) {
    $("samples").append(el("button", { type: "button", class: "sample", "data-sample": name, text: name,
      onclick: () => loadSample(name) }));
  }
  const mb = (info.limits.max_upload_bytes / 1e6).toFixed(0);
  $("upload-hint").textContent = `JPEG, PNG, WebP, BMP, GIF or TIFF up to ${mb} MB; large photos are downscaled.`;
  $("file").addEventListener("change", uploadFile);
  buildMethods(info);
  $("other-class").max = info.n_classes - 1;
  $("other-class").addEventListener("input", () => {
    if ($("other-class").value !== "") for (const r of document.querySelectorAll("input[name=cls]")) r.checked = false;
  });
  if (info.metrics) {
    $("metrics-box").hidden = false;
    const ms = $("metric-steps");
    ms.value = info.metric_steps.default; ms.min = info.metric_steps.min; ms.max = info.metric_steps.max;
  }
  $("run").addEventListener("click", run);
  $("cancel").addEventListener("click", cancelRun);
  $("confirm-run").addEventListener("click", () => {
    const pending = state.pending;
    hideConfirm();
    if (pending) submit(pending.req, pending.est);
  });
  $("confirm-back").addEventListener("click", () => { hideConfirm(); $("run").disabled = false; });
}

function buildMethods(info) {
  const box = $("methods");
  for (const [name, m] of Object.entries(info.methods)) {
    const checked = info.default_methods.includes(name);
    const params = el("div", { class: "params" });
    for (const [key, p] of Object.entries(m.params)) {
      let input;
      if (p.kind === "choice" || p.kind === "layer") {
        input = el("select", { "data-param": key });
        if (p.kind === "layer") input.append(el("option", { value: "", text: "automatic" }));
        for (const c of p.choices) input.append(el("option", { value: c, text: c }));
        if (p.default !== null && p.default !== undefined) input.value = p.default;
      } else {
        input = el("input", { type: "number", "data-param": key, value: p.default, min: p.min, max: p.max,
          step: p.kind === "int" ? 1 : "any" });
      }
      params.append(el("label", { class: "param", title: p.help }, `${p.label} `, input));
    }
    const doc = m.doc ? el("div", { class: "doc", text: m.doc }) : null;
    const details = el("div", {}, doc, params);
    details.hidden = !checked;
    const cb = el("input", { type: "checkbox", "data-method": name, checked,
      onchange: (ev) => { details.hidden = !ev.target.checked; } });
    box.append(el("div", { class: "method", "data-method-box": name },
      el("label", { title: m.doc }, cb, ` ${name}`, m.signed ? el("span", { class: "tag", text: "signed" }) : null,
        m.stochastic ? el("span", { class: "tag", text: "sampled" }) : null), details));
  }
}

// ---------- image ----------
async function loadSample(name) {
  for (const b of document.querySelectorAll("button.sample")) b.classList.toggle("active", b.dataset.sample === name);
  $("file").value = "";
  await setImage(api(`/api/image?sample=${encodeURIComponent(name)}`, { method: "POST" }));
}

async function uploadFile() {
  const f = $("file").files[0];
  if (!f) return;
  for (const b of document.querySelectorAll("button.sample")) b.classList.remove("active");
  if (f.size > state.info.limits.max_upload_bytes) {
    showError(`The file is ${(f.size / 1e6).toFixed(1)} MB; uploads are limited to ` +
      `${(state.info.limits.max_upload_bytes / 1e6).toFixed(1)} MB.`);
    return;
  }
  await setImage(api(`/api/image?name=${encodeURIComponent(f.name)}`, { method: "POST", body: f }));
}

async function setImage(promise) {
  showError("");
  let img;
  try { img = await promise; } catch (err) { showError(err.message); return; }
  state.image = img;
  const notes = $("notes");
  notes.replaceChildren(...img.notes.map((n) => el("p", { text: n })));
  notes.hidden = img.notes.length === 0;
  $("preview").src = img.preview; $("preview").hidden = false;
  $("crop").textContent = img.crop;
  const list = $("top5");
  list.replaceChildren();
  img.top5.forEach((t, i) => {
    const fill = el("div"); fill.style.width = `${Math.round(t.probability * 100)}%`;
    list.append(el("li", {}, el("label", {},
      el("input", { type: "radio", name: "cls", value: t.index, checked: i === 0,
        onchange: () => { $("other-class").value = ""; } }),
      el("span", { class: "cls", text: `${t.name} (${t.index})${i === 0 ? " · predicted" : ""}` }),
      el("span", { class: "prob" }, fill), el("span", { class: "pct", text: `${(t.probability * 100).toFixed(1)}%` }))));
  });
  $("other-class").value = "";
  $("class-panel").hidden = false;
  $("method-panel").hidden = false;
}

// ---------- run ----------
function collectRequest() {
  const methods = [];
  for (const cb of document.querySelectorAll("input[data-method]")) {
    if (!cb.checked) continue;
    const name = cb.dataset.method;
    const options = {};
    const box = document.querySelector(`[data-method-box="${name}"]`);
    for (const input of box.querySelectorAll("[data-param]")) {
      const v = input.value;
      if (input.tagName === "SELECT") options[input.dataset.param] = v;
      else options[input.dataset.param] = v === "" ? null : Number(v);
    }
    for (const [k, v] of Object.entries(options)) if (v === null) delete options[k];
    methods.push({ name, options });
  }
  let target = "predicted";
  const other = $("other-class").value;
  const radio = document.querySelector("input[name=cls]:checked");
  if (other !== "") target = other;
  else if (radio) target = Number(radio.value);
  const req = { image_id: state.image.image_id, target, methods, metrics: false };
  if (state.info.metrics && $("metrics").checked) {
    req.metrics = true;
    req.metric_steps = Number($("metric-steps").value);
  }
  return req;
}

function duration(seconds) {
  if (seconds < 90) return `${Math.max(1, Math.round(seconds))} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

const JSON_POST = { method: "POST", headers: { "content-type": "application/json" } };

async function run() {
  showError("");
  hideConfirm();
  if (!state.image) { showError("Choose a sample or upload a photo first."); return; }
  const req = collectRequest();
  if (req.methods.length === 0) { showError("Tick at least one method."); return; }
  $("run").disabled = true;  // one run per page at a time; other tabs and users queue on the server
  let est;
  try {
    est = await api("/api/estimate", { ...JSON_POST, body: JSON.stringify(req) });
  } catch (err) { showError(err.message); $("run").disabled = false; return; }
  if (est.long) { showConfirm(req, est); return; }
  submit(req, est);
}

// a run estimated to hold the server for minutes waits for the user's go-ahead
function showConfirm(req, est) {
  state.pending = { req, est };
  const rows = (n) => `${n} row${n === 1 ? "" : "s"}`;
  const parts = est.methods.map((m) => `${m.method} ${rows(Math.round(m.rows))}`).join(", ");
  const curves = est.curve_rows ? ` and ${est.curve_rows} curve rows` : "";
  $("confirm-text").textContent = `This run is estimated to take about ${duration(est.seconds)} ` +
    `(${parts}${curves}; about ${(est.seconds_per_row * 1000).toFixed(1)} ms per row on this model), and ` +
    "other runs wait meanwhile. Run it anyway, or lower the samples / steps first?";
  $("confirm").hidden = false;
}

function hideConfirm() {
  state.pending = null;
  $("confirm").hidden = true;
}

async function submit(req, est) {
  let answer;
  $("run").disabled = true;
  try {
    answer = await api("/api/explain", { ...JSON_POST, body: JSON.stringify(req) });
  } catch (err) { showError(err.message); $("run").disabled = false; return; }
  state.job = answer.job;
  state.estimate = est;
  $("progress").hidden = false;
  $("cancel").hidden = false;
  $("cancel").disabled = false;
  poll(answer.job);
}

async function cancelRun() {
  if (!state.job) return;
  $("cancel").disabled = true;
  try {
    await api(`/api/jobs/${state.job}/cancel`, { method: "POST" });
  } catch (err) { showError(err.message); }
}

function endRun() {
  state.job = null;
  $("run").disabled = false;
  $("cancel").hidden = true;
}

function setProgress(st) {
  $("bar-fill").style.width = `${Math.round((st.progress || 0) * 100)}%`;
  const est = state.estimate && state.estimate.seconds >= 5 ? ` (estimated ${duration(state.estimate.seconds)} in all)` : "";
  let text;
  if (st.state === "queued") text = `queued: ${st.ahead} run${st.ahead === 1 ? "" : "s"} ahead of this one`;
  else if (st.state === "running" && st.stage === "cancelling") text = "cancelling: stopping at the next step…";
  else if (st.state === "running") text = `running ${st.stage || ""} · ${Math.round(st.progress * 100)}%${est}`;
  else if (st.state === "done") text = `done in ${st.elapsed_s} s`;
  else if (st.state === "cancelled") text = "cancelled";
  else text = "failed";
  $("progress-text").textContent = text;
}

async function poll(jobId) {
  let st;
  try { st = await api(`/api/jobs/${jobId}`); } catch (err) {
    showError(err.message); endRun(); return;
  }
  setProgress(st);
  if (st.state === "done") { endRun(); showResult(st.result, jobId); return; }
  if (st.state === "error") { endRun(); showError(st.error); return; }
  if (st.state === "cancelled") { endRun(); return; }
  setTimeout(() => poll(jobId), 300);
}

// ---------- results ----------
function showResult(res, jobId) {
  $("welcome").hidden = true;
  $("summary").replaceChildren(el("span", {}, "Explaining ", el("b", { id: "explained-class",
    text: `${res.target_name} (${res.target})` }),
    state.image.predicted.index === res.target ? " — the predicted class" : ""));
  const maps = $("maps");
  maps.replaceChildren(el("div", { class: "card input-card" }, el("h3", { text: "input" }),
    el("img", { src: state.image.preview, alt: "input" }),
    el("div", { class: "meta", text: `predicted: ${state.image.predicted.name}` })));
  res.methods.forEach((m, i) => {
    const card = el("div", { class: "card", "data-result": m.name });
    card.append(el("h3", { text: m.name }));
    card.append(el("img", { class: "map", src: res.files[m.png], alt: `${m.name} map`, "data-method": m.name }));
    card.append(colourBar(m.colormap, m.signed));
    if (m.signed_png) {
      card.append(el("div", { class: "view-label", text: "signed view (raw attribution, channels summed)" }));
      card.append(el("img", { class: "map signed", src: res.files[m.signed_png], alt: `${m.name} signed map` }));
      card.append(colourBar("bwr", true));
    }
    card.append(el("div", { class: "meta", text: `score ${m.score.toFixed(3)} · ${m.time_s.toFixed(2)} s` }));
    if (m.deletion) {
      card.append(el("div", { class: "auc", "data-auc": m.name,
        text: `deletion AUC ${m.deletion.auc.toFixed(3)} · insertion AUC ${m.insertion.auc.toFixed(3)}` }));
      m.colour = CURVE_COLOURS[i % CURVE_COLOURS.length];
    } else if (m.metrics_error) {
      card.append(el("div", { class: "auc", text: `metrics failed: ${m.metrics_error}` }));
    }
    const links = el("div");
    links.append(el("a", { href: `${res.files[m.png]}?download=1`, download: `${m.name}.png`, text: "PNG" }));
    if (m.signed_png) links.append(el("a", { href: `${res.files[m.signed_png]}?download=1`,
      download: `${m.name}_signed.png`, text: "signed PNG" }));
    card.append(links);
    maps.append(card);
  });
  for (const f of res.failed || []) {   // a method the model could not run: said on its own card
    maps.append(el("div", { class: "card failed", "data-failed": f.name }, el("h3", { text: f.name }),
      el("div", { class: "error-text", text: f.error })));
  }
  const withCurves = res.methods.filter((m) => m.deletion && m.deletion.curve);
  $("curves").hidden = !(res.metrics && withCurves.length);
  if (!$("curves").hidden) {
    $("curve-plots").replaceChildren(plot("deletion", withCurves), plot("insertion", withCurves));
  }
  $("downloads").replaceChildren(el("a", { id: "download-tensors", href: `${res.files[res.tensors]}?download=1`,
    download: "saliency.pt", text: "Download raw tensors (saliency.pt: attributions, heatmaps, AUCs)" }));
}

function plot(kind, methods) {
  const W = 300, H = 190, L = 34, B = 26, T = 8, R = 14;
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H); svg.setAttribute("data-curve", kind);
  const sx = (f) => L + f * (W - L - R), sy = (p) => T + (1 - p) * (H - T - B);
  const line = (x1, y1, x2, y2, c) => {
    const l = document.createElementNS(NS, "line");
    for (const [k, v] of Object.entries({ x1, y1, x2, y2, stroke: c, "stroke-width": 1 })) l.setAttribute(k, v);
    svg.append(l);
  };
  const text = (x, y, s, anchor) => {
    const t = document.createElementNS(NS, "text");
    t.setAttribute("x", x); t.setAttribute("y", y); t.setAttribute("font-size", 10);
    t.setAttribute("text-anchor", anchor || "middle"); t.setAttribute("fill", "#5b6773"); t.textContent = s;
    svg.append(t);
  };
  line(L, sy(0), W - R, sy(0), "#9aa5b1"); line(L, sy(0), L, sy(1), "#9aa5b1");
  for (const v of [0, 0.5, 1]) { text(L - 4, sy(v) + 3, v.toFixed(1), "end"); text(sx(v), H - B + 12, v.toFixed(1)); }
  text((L + W) / 2, H - 3, kind === "deletion" ? "fraction of pixels removed" : "fraction of pixels restored");
  for (const m of methods) {
    const c = m[kind];
    const pts = c.curve.map((y, i) => `${sx(c.fractions[i]).toFixed(1)},${sy(y).toFixed(1)}`).join(" ");
    const pl = document.createElementNS(NS, "polyline");
    pl.setAttribute("points", pts); pl.setAttribute("fill", "none"); pl.setAttribute("stroke", m.colour);
    pl.setAttribute("stroke-width", 1.6);
    svg.append(pl);
  }
  const legend = el("div", { class: "legend" });
  for (const m of methods) {
    const sw = el("span"); sw.style.background = m.colour;
    legend.append(el("div", {}, sw, `${m.name}: AUC ${m[kind].auc.toFixed(3)}`));
  }
  return el("div", {}, el("div", { text: `${kind} (class probability)` }), svg, legend);
}

document.addEventListener("DOMContentLoaded", init);
