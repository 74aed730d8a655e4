// The upscaler's web page: queue images, send them to POST /upscale one at a time, compare.
// Plain JavaScript, no framework, no build step; it talks to this page's own origin only, with
// URLs relative to the page (`upscale`, never `/upscale`), so that it works behind a path prefix
// (a proxy at /upscaler/, `uvicorn --root-path`, Ray's route_prefix) as well as at the root.
"use strict";

const FORMATS = {
  png: { type: "image/png", ext: "png" },
  webp: { type: "image/webp", ext: "webp" },
  jpeg: { type: "image/jpeg", ext: "jpg" },
};
const EXT_BY_TYPE = { "image/png": "png", "image/webp": "webp", "image/jpeg": "jpg" };
const SETTINGS_KEY = "edsr-upscaler.settings";
const API_KEY_KEY = "edsr-upscaler.api-key";
const MAX_503_RETRIES = 20;

const $ = (id) => document.getElementById(id);
const config = JSON.parse($("service-config")?.textContent || "{}");
let scale = 4; // the default model's, from /readyz; each model's own comes from /models
let models = new Map(); // name -> what GET /models says of it ("auto" too, when offered)
let defaultModel = "";
const queue = [];
let shown = null; // the item whose result is on display
let zoom = "fit";
let split = 50;

// ---- small helpers -------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children.filter((child) => child != null));
  return node;
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB"];
  let value = n / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

const megapixels = (pixels) => `${(pixels / 1e6).toFixed(pixels < 1e6 ? 2 : 1)} MP`;
const side = (pixels) => Math.floor(Math.sqrt(pixels));
const dims = (w, h) => `${w}×${h}`;

function clock(ms) {
  const s = ms / 1000;
  return `${Math.floor(s / 60)}:${(s % 60).toFixed(1).padStart(4, "0")}`;
}

function announce(text) {
  $("announce").textContent = text;
}

function stem(name) {
  const dot = name.lastIndexOf(".");
  return dot > 0 ? name.slice(0, dot) : name;
}

// ---- settings, remembered in localStorage --------------------------------------------------

const settings = { quality: "standard", format: "png", metadata: "strip", model: "" };

function loadSettings() {
  try {
    Object.assign(settings, JSON.parse(localStorage.getItem(SETTINGS_KEY) || "{}"));
  } catch {
    // Storage disabled or unreadable: keep the defaults.
  }
  if (!(settings.format in FORMATS)) settings.format = "png";
  if (settings.quality !== "max") settings.quality = "standard";
  if (settings.metadata !== "keep") settings.metadata = "strip";
  const form = $("options");
  form.elements.quality.value = settings.quality;
  form.elements.format.value = settings.format;
  form.elements.metadata.value = settings.metadata;
}

function saveSettings(event) {
  const form = $("options");
  settings.quality = form.elements.quality.value;
  settings.metadata = form.elements.metadata.value;
  settings.format = form.elements.format.value;
  // Only a model the user picked is remembered, so an untouched picker follows the default.
  if (event?.target === $("model")) {
    settings.model = $("model").value;
    describeModel();
  }
  try {
    localStorage.setItem(SETTINGS_KEY, JSON.stringify(settings));
  } catch {
    // Not remembered; still used for this visit.
  }
  queue.filter((item) => item.state === "waiting" || item.state === "rejected").forEach(check);
  pump();
}

// ---- what the service says about itself ----------------------------------------------------

function showLimits() {
  const { maxUploadBytes: b, maxInputPixels: p, maxEnsembleInputPixels: e } = config;
  if (!b) return;
  $("limits").textContent =
    `Limits: ${bytes(b)} per file, ${megapixels(p)} (${dims(side(p), side(p))}) per image; ` +
    `quality Max up to ${megapixels(e)} (${dims(side(e), side(e))}).`;
}

async function pollReady() {
  const status = $("status");
  let wait = 5;
  try {
    const response = await fetch("readyz", { cache: "no-store" });
    const body = await response.json().catch(() => ({}));
    if (body.model?.scale) scale = body.model.scale;
    const provider = (body.providers?.[0] || "").replace("ExecutionProvider", "");
    if (response.ok) {
      status.dataset.state = "ready";
      status.textContent = `Ready · ${provider || "model loaded"}${body.fallback ? " (fallback)" : ""}`;
      return;
    }
    status.dataset.state = body.status === "failed" ? "failed" : "starting";
    status.textContent = body.status === "failed" ? "Model failed to load" : "Warming up…";
    wait = Number(response.headers.get("Retry-After")) || wait;
  } catch {
    status.dataset.state = "failed";
    status.textContent = "Service unreachable";
  }
  setTimeout(pollReady, wait * 1000);
}

async function loadModels() {
  // GET /models: {"default": NAME or "auto", "auto": {clean, robust, description} or null,
  // "models": [{name, description, degradation, scale, ...}]}, the default first; 503 until the
  // models are loaded. Without a list the choice stays hidden. "auto" (the service chooses from
  // each image) is offered first when the service has it.
  let wait = 0;
  try {
    const response = await fetch("models", { cache: "no-store", headers: authHeaders() });
    if (response.status === 401) askForKey("This service needs an API key.");
    if (response.status === 503) wait = Number(response.headers.get("Retry-After")) || 5;
    if (!response.ok) return;
    const body = await response.json();
    const list = (body.models || []).filter((model) => model?.name);
    if (!list.length) return;
    if (body.auto) {
      const clean = list.find((model) => model.name === body.auto.clean);
      list.unshift({ ...body.auto, name: "auto", label: "Automatic", scale: clean?.scale });
    }
    models = new Map(list.map((model) => [model.name, model]));
    defaultModel = models.has(body.default) ? body.default : list[0].name;
    const select = $("model");
    select.replaceChildren(
      ...list.map((model) => {
        const text = `${model.label || model.name}${purpose(model)}${model.name === defaultModel ? " (default)" : ""}`;
        return el("option", { value: model.name, textContent: text, title: model.description || "" });
      }),
    );
    // A remembered model the service no longer has falls back to the default.
    select.value = models.has(settings.model) ? settings.model : defaultModel;
    select.disabled = list.length < 2;
    $("model-field").hidden = false;
    describeModel();
  } catch {
    // No model list: the service picks its model.
  } finally {
    if (wait) setTimeout(loadModels, wait * 1000);
  }
}

function purpose(model) {
  // What a model is for, in a person's words, from what it was trained on: clean downscales
  // (bicubic) or degraded ones (the service's `auto` draws the same line).
  if (!model.degradation) return "";
  return model.degradation === "bicubic" ? ": for clean images" : ": for JPEG, noisy or blurred images";
}

function chosenModel() {
  return $("model-field").hidden ? "" : $("model").value;
}

function describeModel() {
  const model = models.get(chosenModel());
  $("model-about").textContent = model?.description || "";
  queue.filter((item) => item.state === "waiting" || item.state === "rejected").forEach(updateItem);
}

const modelScale = (name) => models.get(name)?.scale || scale;

function pace(name) {
  // The model's seconds per megapixel on the service's host (GET models, timed at its warm-up);
  // "auto" runs one of two models, known only once the image is read: the slower one's.
  const model = models.get(name);
  if (model?.clean) return Math.max(pace(model.clean) || 0, pace(model.robust) || 0) || null;
  return model?.seconds_per_megapixel || null;
}

function estimate(item) {
  // " · about 12 s": the model time the service will spend on this image, before it is sent.
  const seconds = (pace(chosenModel()) * item.width * item.height * (settings.quality === "max" ? 8 : 1)) / 1e6;
  if (!item.width || !seconds) return "";
  return ` · about ${seconds < 90 ? `${Math.max(1, Math.ceil(seconds))} s` : `${Math.round(seconds / 60)} min`}`;
}

// ---- API key (only when the service asks for one: a 401) ----------------------------------

function apiKey() {
  try {
    return localStorage.getItem(API_KEY_KEY) || "";
  } catch {
    return $("api-key").value;
  }
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function askForKey(message) {
  $("key-form").hidden = false;
  $("key-message").textContent = message;
}

function wireKey() {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    try {
      if (key) localStorage.setItem(API_KEY_KEY, key);
      else localStorage.removeItem(API_KEY_KEY);
    } catch {
      // Not remembered: apiKey() reads the field instead.
    }
    $("key-message").textContent = key ? "Key saved in this browser." : "Key removed.";
    loadModels();
  });
}

// ---- the queue ------------------------------------------------------------------------------

let pasted = 0;

function addFiles(files, origin) {
  for (let file of files) {
    if (origin === "paste") {
      // Clipboard images are all called "image.png"; give each its own name.
      pasted += 1;
      const ext = (file.type.split("/")[1] || "png").replace("jpeg", "jpg");
      file = new File([file], `pasted-${pasted}.${ext}`, { type: file.type });
    }
    const item = { file, state: "waiting", url: URL.createObjectURL(file) };
    item.node = renderItem(item);
    updateItem(item);
    queue.push(item);
    $("queue").append(item.node.li);
    measure(item);
  }
  $("queue-empty").hidden = queue.length > 0;
}

async function measure(item) {
  // Decoding in the browser gives the size before anything is sent. image-orientation is
  // from-image by default, so a rotated camera JPEG measures as it will be upscaled.
  const img = new Image();
  img.src = item.url;
  try {
    await img.decode();
    item.width = img.naturalWidth;
    item.height = img.naturalHeight;
  } catch {
    item.width = item.height = null; // e.g. TIFF: the service may still read it
  }
  item.measured = true;
  check(item);
  pump();
}

function check(item) {
  // Refuses, before any upload, a file the service would refuse for its size.
  const { maxUploadBytes, maxInputPixels, maxEnsembleInputPixels } = config;
  const pixels = item.width * item.height;
  let problem = null;
  if (maxUploadBytes && item.file.size > maxUploadBytes) {
    problem = `Too large: ${bytes(item.file.size)}; the service takes up to ${bytes(maxUploadBytes)}.`;
  } else if (maxInputPixels && pixels > maxInputPixels) {
    problem = `Too many pixels: ${dims(item.width, item.height)} is ${megapixels(pixels)}; the service takes up to ${megapixels(maxInputPixels)}.`;
  } else if (settings.quality === "max" && maxEnsembleInputPixels && pixels > maxEnsembleInputPixels) {
    problem = `Too large for quality Max (${megapixels(pixels)}; up to ${megapixels(maxEnsembleInputPixels)}): choose Standard.`;
  }
  if (problem) setState(item, "rejected", problem);
  else if (item.state === "rejected") setState(item, "waiting", "Waiting");
  else updateItem(item);
}

function pump() {
  if (queue.some((item) => item.state === "running")) return;
  const next = queue.find((item) => item.state === "waiting" && item.measured);
  if (next) start(next);
}

function renderItem(item) {
  const li = el("li", { className: "item" });
  const thumb = el("img", { className: "thumb", alt: "", src: item.url });
  thumb.onerror = () => thumb.classList.add("broken");
  const name = el("p", { className: "item-name", textContent: item.file.name });
  const size = el("p", { className: "item-dims" });
  const status = el("p", { className: "item-status" });
  const progress = el("progress", { max: 1, value: 0, hidden: true });
  progress.setAttribute("aria-label", `Progress of ${item.file.name}`);
  const actions = el("div", { className: "item-actions" });
  li.append(thumb, el("div", { className: "item-main" }, name, size, status, progress), actions);
  return { li, size, status, progress, actions };
}

function button(label, onclick, className = "button") {
  return el("button", { type: "button", className, textContent: label, onclick });
}

function setState(item, state, text) {
  item.state = state;
  item.statusText = text;
  updateItem(item);
}

function updateItem(item) {
  const { li, size, status, progress, actions } = item.node;
  li.dataset.state = item.state;
  const known = item.width != null;
  const factor = item.request?.scale || modelScale(chosenModel());
  const out = known ? ` → ${dims(item.width * factor, item.height * factor)}` : "";
  const about = item.state === "waiting" ? estimate(item) : "";
  size.textContent = item.measured
    ? `${known ? dims(item.width, item.height) : "size unknown to the browser"}${out} · ${bytes(item.file.size)}${about}`
    : `${bytes(item.file.size)} · measuring…`;
  status.textContent = item.statusText || "Waiting";
  status.setAttribute("role", item.state === "failed" || item.state === "rejected" ? "alert" : "status");
  progress.hidden = item.state !== "running";
  const buttons = [];
  const name = item.file.name;
  if (item.state === "running") {
    buttons.push(button("Stop", () => stop(item), "button danger"));
  } else if (item.state === "waiting") {
    buttons.push(button("Remove", () => remove(item)));
  } else if (item.state === "done") {
    buttons.push(button("Compare", () => show(item)));
    const link = el("a", { className: "button", href: item.result.url, download: item.result.name, textContent: "Download" });
    buttons.push(link);
  } else {
    if (item.retryable) buttons.push(button("Retry", () => { setState(item, "waiting", "Waiting"); pump(); }));
    buttons.push(button("Remove", () => remove(item)));
  }
  // "Stop photo.png" rather than a row of identical "Stop" buttons for a screen reader.
  buttons.forEach((b) => b.setAttribute("aria-label", `${b.textContent} ${name}`));
  actions.replaceChildren(...buttons);
}

function remove(item) {
  queue.splice(queue.indexOf(item), 1);
  item.node.li.remove();
  URL.revokeObjectURL(item.url);
  if (item.result) URL.revokeObjectURL(item.result.url);
  if (shown === item) $("result").hidden = true;
  $("queue-empty").hidden = queue.length > 0;
}

// ---- one upscale: upload progress, elapsed time, Stop, 503 with Retry-After -----------------

function start(item) {
  item.started = performance.now();
  item.attempts = 0;
  const model = chosenModel();
  item.request = { ...settings, model, scale: modelScale(model) };
  setState(item, "running", "Starting…");
  item.ticker = setInterval(() => tick(item), 100);
  send(item);
}

function tick(item) {
  const elapsed = clock(performance.now() - item.started);
  let text = item.phase;
  if (item.retryAt) text += ` in ${Math.ceil((item.retryAt - Date.now()) / 1000)} s`;
  item.node.status.textContent = `${text} · ${elapsed}`;
}

function send(item) {
  const { quality, format, model, metadata } = item.request;
  const params = new URLSearchParams();
  if (quality === "max") params.set("quality", "max");
  if (metadata === "keep") params.set("metadata", "keep");
  // Only a real choice is sent: without ?model= the service runs its default.
  if (model && model !== defaultModel) params.set("model", model);
  const xhr = new XMLHttpRequest();
  item.xhr = xhr;
  item.attempts += 1;
  item.retryAt = null;
  item.phase = "Uploading 0 %";
  // With jobs (config.jobs) the same request goes to POST jobs, which answers 202 at once.
  xhr.open("POST", `${config.jobs ? "jobs" : "upscale"}${params.size ? `?${params}` : ""}`);
  for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
  xhr.responseType = "blob";
  // The service negotiates the output format from Accept (PNG when nothing else is asked).
  xhr.setRequestHeader("Accept", FORMATS[format].type);
  // The raw file as the body: no multipart overhead, so the byte limit is the file's size.
  const type = item.file.type.startsWith("image/") ? item.file.type : "application/octet-stream";
  xhr.setRequestHeader("Content-Type", type);
  const bar = item.node.progress;
  bar.value = 0;
  xhr.upload.onprogress = (event) => {
    if (!event.lengthComputable) return;
    bar.value = event.loaded / event.total;
    item.phase = `Uploading ${Math.round(bar.value * 100)} %`;
  };
  xhr.upload.onload = () => {
    bar.removeAttribute("value"); // indeterminate: the service does not report tile progress
    item.phase = "Upscaling";
  };
  xhr.onload = () => (xhr.status === 202 ? accepted(item, xhr) : received(item, xhr));
  xhr.onerror = () => finish(item, "failed", "Network error: the service could not be reached.", true);
  xhr.onabort = () => {}; // Stop settles the item itself
  xhr.send(item.file);
}

// X-Upscaler-Evidence ("jpeg-quality=72; webp-quality=none; noise=3.1; sharpness=0.70;
// aliasing=0.71; hard-edges=0.00; flat=0.02; found=jpeg,noise"), sent when the service chose
// the model, in words; "" without it.
function explainChoice(evidence) {
  if (!evidence) return "";
  const fields = Object.fromEntries(evidence.split(";").map((part) => part.trim().split("=")));
  const words = {
    jpeg: `JPEG compression (quality ${fields["jpeg-quality"]})`,
    webp: `WebP compression (quality ${fields["webp-quality"]})`,
    noise: `noise (σ ≈ ${fields.noise})`,
    aliasing: "hard, jagged edges (as a resize without smoothing leaves)",
    blur: "a blurred picture",
    "hard-edges": "pixel-sharp edges (a screenshot, diagram, pixel art or pixelated enlargement)",
    flat: "flat colours (a drawing, chart, slide or screenshot)",
    noiseless: "no camera noise at all (a drawing or screenshot saved as JPEG or WebP)",
  };
  const found = (fields.found || "none").split(",").filter((name) => words[name]);
  return found.length ? found.map((name) => words[name]).join(", ") : "a clean image";
}

async function received(item, xhr) {
  if (xhr.status === 200) {
    succeeded(item, xhr);
    return;
  }
  let detail = `HTTP ${xhr.status}`;
  try {
    detail = JSON.parse(await xhr.response.text()).detail || detail;
  } catch {
    // Not the service's JSON (a proxy's page?): the status code will do.
  }
  if (xhr.status === 401) {
    askForKey(`${detail}. Enter a key, then Retry.`);
    finish(item, "failed", `401: ${detail}`, true);
    return;
  }
  if (xhr.status === 503 && item.attempts < MAX_503_RETRIES) {
    const wait = Math.max(1, Number(xhr.getResponseHeader("Retry-After")) || 5);
    item.retryAt = Date.now() + wait * 1000;
    item.phase = `Service busy (${detail}); retrying`;
    item.node.progress.value = 0;
    item.retryTimer = setTimeout(() => item.state === "running" && send(item), wait * 1000);
    return;
  }
  // Retrying helps after a timeout or a server fault, not after a refusal of the file itself.
  finish(item, "failed", `${xhr.status}: ${detail}`, xhr.status === 408 || xhr.status >= 500);
}

function succeeded(item, xhr) {
  const header = (name) => xhr.getResponseHeader(name) || "";
  const type = header("Content-Type").split(";")[0];
  const name = `${stem(item.file.name)}_x${item.request.scale}.${EXT_BY_TYPE[type] || "png"}`;
  const [width, height] = header("X-Output-Size").split("x").map(Number);
  const engine = ["Engine", "Device", "Precision"].map((part) => header(`X-Upscaler-${part}`));
  item.result = {
    url: URL.createObjectURL(xhr.response),
    name,
    width,
    height,
    facts: [
      ["Input", header("X-Input-Size").replace("x", "×")],
      ["Output", `${dims(width, height)} · ${type.replace("image/", "").toUpperCase()} · ${bytes(xhr.response.size)}`],
      ["Model", header("X-Upscaler-Model")],
      ["Chosen because", explainChoice(header("X-Upscaler-Evidence"))],
      ["Quality", header("X-Upscaler-Quality")],
      ["Model time", `${header("X-Inference-Time-Ms")} ms`],
      ["Server timing", header("Server-Timing").replace(/;dur=/g, " ").replace(/, /g, " ms · ") + " ms"],
      ["Engine", engine.filter(Boolean).join(" · ")],
      ["Provider", header("X-Upscaler-Provider")],
      ["Total", clock(performance.now() - item.started)],
    ].filter(([, value]) => value), // a header an older service does not send is left out
  };
  finish(item, "done", `Done in ${clock(performance.now() - item.started)}`);
  show(item);
}

function finish(item, state, text, retryable = false) {
  item.retryable = retryable || state === "stopped";
  clearInterval(item.ticker);
  clearTimeout(item.retryTimer);
  item.xhr = null;
  item.retryAt = null;
  setState(item, state, text);
  announce(`${item.file.name}: ${text}`);
  pump();
}

function stop(item) {
  // abort() closes the connection; the service notices and drops the rest of the work.
  item.xhr?.abort();
  if (item.job) cancelJob(item);
  finish(item, "stopped", "Stopped");
}

// ---- before/after comparison ---------------------------------------------------------------

function show(item) {
  shown = item;
  const { url, name, width, height, facts } = item.result;
  $("result").hidden = false;
  $("result-title").textContent = name;
  $("before").src = item.url;
  $("before").alt = `${item.file.name}, the input, drawn with square pixels`;
  $("after").src = url;
  $("after").alt = `${name}, the upscaled result`;
  const download = $("download");
  download.href = url;
  download.download = name;
  download.textContent = `Download ${name}`;
  $("facts").replaceChildren(
    ...facts.map(([term, value]) => el("div", {}, el("dt", { textContent: term }), el("dd", { textContent: value }))),
  );
  item.result.width = width;
  item.result.height = height;
  layout();
}

function layout() {
  if (!shown) return;
  const { width, height } = shown.result;
  const viewport = $("viewport");
  let factor = Number(zoom);
  if (zoom === "fit") {
    const room = viewport.clientWidth || width;
    const tall = window.innerHeight * 0.7;
    factor = Math.min(8, room / width, tall / height);
  }
  const stage = $("stage");
  stage.style.width = `${Math.round(width * factor)}px`;
  stage.style.height = `${Math.round(height * factor)}px`;
  stage.classList.toggle("sharp", factor > 1);
  stage.classList.toggle("zoomed", zoom !== "fit");
  document.querySelectorAll("[data-zoom]").forEach((b) => b.setAttribute("aria-pressed", String(b.dataset.zoom === zoom)));
  setSplit(split);
}

function setSplit(value) {
  split = Math.min(100, Math.max(0, Math.round(value)));
  $("after").style.clipPath = `inset(0 0 0 ${split}%)`;
  const handle = $("split");
  handle.style.left = `${split}%`;
  handle.setAttribute("aria-valuenow", String(split));
  handle.setAttribute("aria-valuetext", `${split} % input, ${100 - split} % result`);
}

function splitFromPointer(event) {
  const rect = $("stage").getBoundingClientRect();
  setSplit(((event.clientX - rect.left) / rect.width) * 100);
}

function wireComparison() {
  const stage = $("stage");
  const handle = $("split");
  let dragging = false;
  stage.addEventListener("pointerdown", (event) => {
    // A touch on a zoomed picture pans it; only the handle moves the split then.
    if (event.pointerType === "touch" && zoom !== "fit" && event.target !== handle) return;
    dragging = true;
    stage.setPointerCapture(event.pointerId);
    splitFromPointer(event);
    handle.focus({ preventScroll: true });
    event.preventDefault();
  });
  stage.addEventListener("pointermove", (event) => dragging && splitFromPointer(event));
  const end = () => (dragging = false);
  stage.addEventListener("pointerup", end);
  stage.addEventListener("pointercancel", end);
  handle.addEventListener("keydown", (event) => {
    const step = event.shiftKey ? 10 : 1;
    const moves = {
      ArrowLeft: -step, ArrowDown: -step, ArrowRight: step, ArrowUp: step,
      PageDown: -10, PageUp: 10, Home: -100, End: 100,
    };
    if (!(event.key in moves)) return;
    setSplit(split + moves[event.key]);
    event.preventDefault();
  });
  document.querySelectorAll("[data-zoom]").forEach((b) => {
    b.addEventListener("click", () => {
      zoom = b.dataset.zoom;
      layout();
    });
  });
  window.addEventListener("resize", () => zoom === "fit" && layout());
}

// ---- input: picker, drop anywhere, paste ---------------------------------------------------

function wireInput() {
  const input = $("file-input");
  $("pick").addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    addFiles([...input.files], "picker");
    input.value = "";
  });
  const overlay = $("drop-overlay");
  let depth = 0;
  const carriesFiles = (event) => [...(event.dataTransfer?.types || [])].includes("Files");
  document.addEventListener("dragenter", (event) => {
    if (!carriesFiles(event)) return;
    depth += 1;
    overlay.hidden = false;
  });
  document.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) overlay.hidden = true;
  });
  document.addEventListener("dragover", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  document.addEventListener("drop", (event) => {
    depth = 0;
    overlay.hidden = true;
    if (!event.dataTransfer?.files.length) return;
    event.preventDefault();
    addFiles([...event.dataTransfer.files], "drop");
  });
  document.addEventListener("paste", (event) => {
    const files = [...(event.clipboardData?.files || [])].filter((f) => f.type.startsWith("image/"));
    if (!files.length) return;
    event.preventDefault();
    addFiles(files, "paste");
  });
  $("options").addEventListener("change", saveSettings);
  $("options").addEventListener("submit", (event) => event.preventDefault());
}

// ---- jobs: every image as a job when the service keeps them (config.jobs) -----------------
// The upload goes to POST jobs (send above), which answers 202 at once; the page then follows
// the job's events: a real progress bar (tiles done, the time left at this job's pace), the
// tiles finished so far drawn over the input, Stop as POST jobs/ID/cancel. Unfinished jobs are
// remembered (their IDs in localStorage, their inputs in IndexedDB), so that a reload picks
// them up where they are instead of starting over. URLs are relative to the page.

const JOBS_KEY = "edsr-upscaler.jobs";
const INPUTS_DB = "edsr-upscaler-inputs";
const PREVIEW_EVERY_MS = 700;
const MAX_RECONNECT_MS = 10000;
const jobUrl = (id, part = "") => `jobs/${encodeURIComponent(id)}${part}`;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function rememberedJobs() {
  try {
    return JSON.parse(localStorage.getItem(JOBS_KEY) || "[]");
  } catch {
    return [];
  }
}

function saveJobs(jobs) {
  try {
    localStorage.setItem(JOBS_KEY, JSON.stringify(jobs));
  } catch {
    // Not remembered: a reload will not pick this job up.
  }
}

function inputs(mode, action) {
  // One IndexedDB transaction on the store of inputs; resolves with the request's result, or
  // null when IndexedDB is unavailable (the job is still followed, only its input is lost).
  return new Promise((resolve) => {
    let open;
    try {
      open = indexedDB.open(INPUTS_DB, 1);
    } catch {
      resolve(null);
      return;
    }
    open.onupgradeneeded = () => open.result.createObjectStore("files");
    open.onerror = () => resolve(null);
    open.onsuccess = () => {
      const db = open.result;
      const transaction = db.transaction("files", mode);
      const request = action(transaction.objectStore("files"));
      transaction.oncomplete = () => {
        db.close();
        resolve(request.result ?? null);
      };
      transaction.onerror = transaction.onabort = () => {
        db.close();
        resolve(null);
      };
    };
  });
}

function rememberJob(item) {
  const startedAt = Date.now() - (performance.now() - item.started);
  const saved = { id: item.job, name: item.file.name, type: item.file.type, request: item.request, startedAt };
  saveJobs([...rememberedJobs().filter((job) => job.id !== item.job), saved]);
  inputs("readwrite", (files) => files.put(item.file, item.job));
}

function endJob(item) {
  // The job needs no more watching: stop its events, forget it, drop its live preview.
  item.events?.abort();
  if (item.job) {
    const id = item.job;
    saveJobs(rememberedJobs().filter((job) => job.id !== id));
    inputs("readwrite", (files) => files.delete(id));
  }
  if (item.live) {
    URL.revokeObjectURL(item.live.sharp.src);
    item.live.figure.remove();
    item.live = null;
  }
  item.job = null;
}

async function accepted(item, xhr) {
  const job = JSON.parse(await xhr.response.text());
  item.xhr = null;
  item.job = job.id;
  item.rate = null;
  rememberJob(item);
  follow(item);
}

async function* jobEvents(response) {
  // The `data:` of each server-sent event, parsed (fetch, not EventSource: it sends the key).
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const lines = buffer.slice(0, end).split("\n");
      buffer = buffer.slice(end + 2);
      const data = lines.filter((line) => line.startsWith("data: ")).map((line) => line.slice(6));
      if (data.length) yield JSON.parse(data.join("\n"));
    }
  }
}

async function follow(item) {
  // Until the job ends: its events, reconnecting (with back-off) after a lost connection or a
  // restart of the service; the job itself lives on there.
  const controller = new AbortController();
  item.events = controller;
  let wait = 1000;
  while (item.state === "running" && !controller.signal.aborted) {
    try {
      const response = await fetch(jobUrl(item.job, "/events"), {
        headers: authHeaders(),
        cache: "no-store",
        signal: controller.signal,
      });
      if (response.status < 500 && !response.ok) {
        await jobRefused(item, response);
        return;
      }
      if (response.ok) {
        wait = 1000;
        for await (const job of jobEvents(response)) {
          if (progressed(item, job)) return;
        }
      }
    } catch {
      if (controller.signal.aborted) return;
    }
    item.phase = "Reconnecting";
    await sleep(wait);
    wait = Math.min(wait * 2, MAX_RECONNECT_MS);
  }
}

async function jobRefused(item, response) {
  // 404: the job is gone (deleted, expired, or the service keeps no jobs now); 401: a key.
  let detail = `HTTP ${response.status}`;
  try {
    detail = (await response.json()).detail || detail;
  } catch {
    // Not the service's JSON: the status will do.
  }
  if (response.status === 401) askForKey(`${detail}. Enter a key, then Retry.`);
  endJob(item);
  finish(item, "failed", `${response.status}: ${detail}`, true);
}

function progressed(item, job) {
  // Shows one event's job; true once it has ended.
  const bar = item.node.progress;
  const { tiles_done: done, tiles_total: total } = job.progress;
  if (job.status === "queued") {
    bar.value = 0;
    const ahead = (job.queue_position || 1) - 1;
    item.phase = ahead ? `Queued, ${ahead} ahead` : "Queued, next";
  } else if (job.status === "running") {
    bar.value = total ? done / total : 0;
    item.phase = total ? `Upscaling: tile ${done} of ${total}${timeLeft(item, done, total)}` : "Upscaling";
    if (done) showPreview(item);
  } else if (job.status === "succeeded") {
    bar.value = 1;
    item.phase = "Downloading";
    fetchResult(item);
    return true;
  } else {
    endJob(item);
    if (job.status === "canceled") finish(item, "stopped", "Stopped");
    else finish(item, "failed", job.detail || "The job failed.");
    return true;
  }
  return false;
}

function timeLeft(item, done, total) {
  // This job's pace since the page began watching it (a picked-up job starts measuring anew).
  const now = performance.now();
  if (!item.rate || done < item.rate.done) item.rate = { done, at: now };
  const tiles = done - item.rate.done;
  if (tiles < 1) return "";
  const seconds = ((now - item.rate.at) / tiles) * (total - done) / 1000;
  return ` · about ${seconds < 90 ? `${Math.ceil(seconds)} s` : `${Math.round(seconds / 60)} min`} left`;
}

function showPreview(item) {
  // The tiles done so far (GET jobs/ID/preview: transparent where not done), over the input.
  const now = performance.now();
  if (item.previewBusy || now - (item.previewAt || 0) < PREVIEW_EVERY_MS) return;
  item.previewBusy = true;
  item.previewAt = now;
  fetch(jobUrl(item.job, "/preview"), { headers: authHeaders(), cache: "no-store" })
    .then((response) => (response.ok ? response.blob() : null))
    .then((blob) => blob && item.state === "running" && item.job && drawPreview(item, blob))
    .catch(() => {})
    .finally(() => {
      item.previewBusy = false;
    });
}

function drawPreview(item, blob) {
  if (!item.live) {
    const blurry = el("img", { className: "live-blurry", alt: "", src: item.url });
    const sharp = el("img", { className: "live-sharp", alt: `The tiles of ${item.file.name} upscaled so far` });
    item.live = { figure: el("figure", { className: "live" }, blurry, sharp), sharp };
    item.node.li.querySelector(".item-main").append(item.live.figure);
  }
  const old = item.live.sharp.src;
  item.live.sharp.src = URL.createObjectURL(blob);
  if (old) URL.revokeObjectURL(old);
}

function fetchResult(item) {
  // The image, with the headers of POST /upscale, so `received` shows it as it shows those.
  const xhr = new XMLHttpRequest();
  item.xhr = xhr;
  xhr.open("GET", jobUrl(item.job, "/result"));
  for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
  xhr.setRequestHeader("Accept", FORMATS[item.request.format].type);
  xhr.responseType = "blob";
  xhr.onload = () => {
    const id = item.job;
    endJob(item);
    // The page holds the image now: the service need not keep it.
    if (xhr.status === 200) fetch(jobUrl(id), { method: "DELETE", headers: authHeaders() }).catch(() => {});
    received(item, xhr);
  };
  xhr.onerror = () => finish(item, "failed", "Network error: the service could not be reached.", true);
  xhr.send();
}

function cancelJob(item) {
  fetch(jobUrl(item.job, "/cancel"), { method: "POST", headers: authHeaders() }).catch(() => {});
  endJob(item);
}

async function resumeJobs() {
  // After a reload: the jobs this browser left unfinished, followed again.
  if (!config.jobs) return;
  for (const saved of rememberedJobs()) {
    const input = await inputs("readonly", (files) => files.get(saved.id));
    const file = new File(input ? [input] : [], saved.name, { type: saved.type });
    const item = { file, state: "running", url: URL.createObjectURL(file), request: saved.request, job: saved.id };
    item.started = performance.now() - (Date.now() - saved.startedAt);
    item.attempts = 1;
    item.phase = "Picking up";
    item.node = renderItem(item);
    queue.push(item);
    $("queue").append(item.node.li);
    $("queue-empty").hidden = true;
    setState(item, "running", "Picking up…");
    item.ticker = setInterval(() => tick(item), 100);
    measure(item);
    follow(item);
  }
}

loadSettings();
showLimits();
wireInput();
wireKey();
wireComparison();
pollReady();
loadModels();
resumeJobs();
