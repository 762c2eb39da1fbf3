// urbanseg serve: the page. Plain JavaScript, no build step, no external resources.
// One upload = one request = one inference: the JSON answer embeds the colour mask, the
// uncertainty map and the label PNG, and the overlay is the photo with the mask on top.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "urbanseg-token";
const state = { model: null, result: null, stem: "image", photoUrl: null, token: sessionStorage.getItem(TOKEN_KEY) || "" };

class ApiError extends Error {
  constructor(status, message, retryAfter) {
    super(message);
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

async function api(path, options = {}) {
  const headers = state.token ? { Authorization: `Bearer ${state.token}` } : {};
  const response = await fetch(path, { ...options, headers });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) $("token-form").hidden = false;
  if (!response.ok) {
    const retry = Number(response.headers.get("Retry-After")) || 0;
    throw new ApiError(response.status, body.error || `${response.status} ${response.statusText}`, retry);
  }
  return body;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

const rgb = (color) => `rgb(${color[0]}, ${color[1]}, ${color[2]})`;
const percent = (share) => (share >= 0.001 ? `${(share * 100).toFixed(1)}%` : "<0.1%");
const ms = (value) => (value >= 1000 ? `${(value / 1000).toFixed(2)} s` : `${Math.round(value)} ms`);

function legendItem(cls, share) {
  const item = el("li");
  item.dataset.class = cls.name;
  const swatch = el("span", "swatch");
  swatch.style.setProperty("background", rgb(cls.color));
  item.append(swatch, el("span", "name", cls.name));
  if (share !== undefined) {
    item.append(el("span", "share", percent(share)));
    const bar = el("span", "bar");
    const fill = el("span");
    fill.style.setProperty("width", `${Math.max(share * 100, 0.5)}%`);
    fill.style.setProperty("background", rgb(cls.color));
    bar.append(fill);
    item.append(bar);
  }
  return item;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

// ---------------------------------------------------------------- model
async function loadModel() {
  try {
    state.model = await api("/v1/model");
  } catch (error) {
    $("model-info").textContent = error.status === 401 ? "Token required" : "Model unavailable";
    if (error.status !== 401) showError(error.message);  // the token form already says what to do
    return;
  }
  $("token-form").hidden = true;
  showError("");
  const m = state.model;
  $("model-info").replaceChildren(el("b", "", m.name), el("span", "pill", m.backend),
                                  el("span", "pill", `${m.classes.length} classes`));
  if (m.input_size) $("model-info").append(el("span", "pill", `input ${m.input_size[0]}×${m.input_size[1]}`));
  $("limits-hint").textContent =
    `PNG, JPEG, BMP, TIFF or WebP · up to ${m.limits.max_upload_mb} MB and ${m.limits.max_megapixels} megapixels`;
  const legend = $("legend");
  legend.className = "legend all";
  legend.replaceChildren(...m.classes.map((cls) => legendItem(cls)));
}

// ---------------------------------------------------------------- upload
async function segment(file, attempt = 0) {
  const form = new FormData();
  form.append("image", file);
  const label = state.model && !state.model.label_ids ? "trainids" : "labelids";
  return api(`/v1/segment?include=color,entropy,${label}`, { method: "POST", body: form }).catch(async (error) => {
    if (error.status === 503 && attempt < 3) {  // the queue is full: wait as the server asks, then retry
      $("busy-text").textContent = `Server busy, retrying in ${error.retryAfter || 1} s…`;
      await new Promise((resolve) => setTimeout(resolve, 1000 * (error.retryAfter || 1)));
      $("busy-text").textContent = "Segmenting…";
      return segment(file, attempt + 1);
    }
    throw error;
  });
}

async function handleFile(file) {
  if (!file) return;
  showError("");
  const limits = state.model && state.model.limits;
  if (limits && file.size > limits.max_upload_mb * 1024 * 1024) {
    showError(`${file.name} is ${(file.size / 2 ** 20).toFixed(1)} MB; the limit is ${limits.max_upload_mb} MB.`);
    return;
  }
  state.stem = (file.name || "image").replace(/\.[^.]+$/, "") || "image";
  $("current-file").textContent = file.name || "";
  if (state.photoUrl) URL.revokeObjectURL(state.photoUrl);
  state.photoUrl = URL.createObjectURL(file);
  $("busy").hidden = false;
  const started = performance.now();
  try {
    const result = await segment(file);
    showResult(result, performance.now() - started);
  } catch (error) {
    showError(error.message);
  } finally {
    $("busy").hidden = true;
  }
}

function loadImage(img, src) {
  return new Promise((resolve) => {
    img.onload = () => resolve(true);
    img.onerror = () => resolve(false);
    img.src = src;
  });
}

async function showResult(result, roundTrip) {
  state.result = result;
  const images = result.images;
  const labelKey = images.labelids ? "labelids" : "trainids";
  // photos the browser cannot show (e.g. TIFF) fall back to the colour mask as the base layer
  const [photoOk] = await Promise.all([loadImage($("photo"), state.photoUrl), loadImage($("mask"), images.color),
                                       loadImage($("entropy"), images.entropy)]);
  if (!photoOk) await loadImage($("photo"), images.color);
  $("frame").style.setProperty("--aspect", String(result.image.width / result.image.height));
  $("empty").hidden = true;
  $("frame").hidden = false;
  document.body.classList.add("has-result");

  const byIndex = new Map(state.model ? state.model.classes.map((c) => [c.index, c]) : []);
  const legend = $("legend");
  legend.className = "legend";
  legend.replaceChildren(...result.classes.map((cls) => legendItem(cls, cls.share)));
  $("legend-note").textContent = `${result.classes.length} found`;
  const present = new Set(result.classes.map((c) => c.index));
  const absent = [...byIndex.values()].filter((c) => !present.has(c.index));
  $("absent").hidden = absent.length === 0;
  $("absent-summary").textContent = `Not found (${absent.length})`;
  $("legend-absent").replaceChildren(...absent.map((cls) => legendItem(cls)));

  const t = result.timing_ms;
  const rows = [["Image", `${result.image.width} × ${result.image.height}`], ["Inference", ms(t.inference)],
                ["Server total", ms(t.total)], ["Round trip", ms(roundTrip)], ["Backend", result.backend]];
  $("stats").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", "", k), el("dd", "", v)]));
  $("dl-label").href = images[labelKey];
  $("dl-label").download = `${state.stem}_${labelKey === "labelids" ? "labelIds" : "trainIds"}.png`;
  $("dl-label").textContent = `Download ${labelKey === "labelids" ? "label IDs" : "train IDs"} PNG`;
  $("dl-color").href = images.color;
  $("dl-color").download = `${state.stem}_color.png`;
  $("result-card").hidden = false;
}

// The overlay PNG is drawn here at the chosen opacity, from the photo and the mask the page shows.
function downloadOverlay(event) {
  event.preventDefault();
  if (!state.result) return;
  const photo = $("photo");
  const canvas = document.createElement("canvas");
  canvas.width = state.result.image.width;
  canvas.height = state.result.image.height;
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = false;
  context.drawImage(photo, 0, 0, canvas.width, canvas.height);
  context.globalAlpha = Number($("opacity").value) / 100;
  context.drawImage($("mask"), 0, 0, canvas.width, canvas.height);
  canvas.toBlob((blob) => {
    const link = el("a");
    link.href = URL.createObjectURL(blob);
    link.download = `${state.stem}_overlay.png`;
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  }, "image/png");
}

// ---------------------------------------------------------------- controls
function setView(view) {
  $("viewer").dataset.view = view;
  for (const tab of $("tabs").querySelectorAll("button")) tab.setAttribute("aria-selected", String(tab.dataset.view === view));
  $("opacity-control").classList.toggle("disabled", view !== "overlay");
  $("entropy-scale").classList.toggle("shown", view === "entropy");
}

function setOpacity() {
  const value = Number($("opacity").value);
  $("viewer").style.setProperty("--mask-opacity", String(value / 100));
  $("opacity-value").textContent = `${value}%`;
}

function wire() {
  const drop = $("dropzone");
  const input = $("file");
  drop.addEventListener("click", () => input.click());
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      input.click();
    }
  });
  input.addEventListener("change", () => {
    handleFile(input.files[0]);
    input.value = "";  // choosing the same file again still triggers a new upload
  });
  for (const type of ["dragenter", "dragover"]) {
    document.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    document.addEventListener(type, (event) => {
      event.preventDefault();
      if (type === "drop" || event.target === document.documentElement) drop.classList.remove("dragging");
    });
  }
  document.addEventListener("drop", (event) => handleFile(event.dataTransfer.files[0]));
  document.addEventListener("paste", (event) => {
    const file = [...event.clipboardData.files].find((f) => f.type.startsWith("image/"));
    if (file) handleFile(file);
  });
  $("tabs").addEventListener("click", (event) => {
    if (event.target.dataset.view) setView(event.target.dataset.view);
  });
  $("opacity").addEventListener("input", setOpacity);
  $("dl-overlay").addEventListener("click", downloadOverlay);
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, state.token);
    loadModel();
  });
  setOpacity();
  setView("overlay");
}

wire();
loadModel();
