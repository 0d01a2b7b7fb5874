// The page of `quantart serve`. It uses only the public API (GET /v1/health, GET /v1/styles,
// POST /v1/styles, POST /v1/stylize), so the service checks everything it sends, as for any client,
// and every refusal shown here is the service's own reason.
"use strict";

const RETRIES = 3; // a 503 (overloaded) is retried this many times, waiting Retry-After seconds
const $ = (id) => document.getElementById(id);
const state = { content: null, styleId: null, busy: false, again: false };

// -- talking to the service ------------------------------------------------------------------
async function call(method, path, body, headers = {}) {
  // One request, relative to the page (a route prefix works when the page URL ends in "/");
  // logged with its status and time.
  const started = performance.now();
  try {
    const response = await fetch(new URL(path, document.baseURI), { method, body, headers });
    log(method, path, response.status, performance.now() - started);
    return response;
  } catch (err) {
    log(method, path, "no answer", performance.now() - started);
    throw new Error(`The service did not answer (${err.message}).`);
  }
}

async function callRetrying(method, path, body, headers) {
  for (let attempt = 1; ; attempt++) {
    const response = await call(method, path, body, headers);
    if (response.status !== 503 || attempt > RETRIES) return response;
    const wait = Number(response.headers.get("Retry-After")) || attempt;
    show(`Server busy (503: ${await reason(response)}). Retrying in ${wait} s (${attempt}/${RETRIES})…`, "warn");
    await new Promise((resolve) => setTimeout(resolve, wait * 1000));
  }
}

async function reason(response) {
  // The service's words: {"error": ...}, or the plain text Ray Serve sends with a 503.
  const text = await response.text();
  try {
    return JSON.parse(text).error || text;
  } catch {
    return text || response.statusText;
  }
}

async function refusal(what, response) {
  const hint = response.status === 404 ? " Pick or upload the style again." : "";
  return new Error(`The service refused ${what}: ${response.status} ${await reason(response)}.${hint}`);
}

// -- what the page shows ---------------------------------------------------------------------
function show(text, kind = "info") {
  const message = $("message");
  message.textContent = text;
  message.className = `message ${kind}`;
  message.hidden = !text;
}

function log(method, path, status, ms) {
  const row = $("log").tBodies[0].insertRow(0);
  const ok = typeof status === "number" && status < 400;
  for (const text of [new Date().toLocaleTimeString(), `${method} ${path}`, status, `${Math.round(ms)} ms`]) {
    row.insertCell().textContent = text;
  }
  row.className = ok ? "ok" : "bad";
}

function showImage(img, blob) {
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(blob);
  img.hidden = false;
  img.nextElementSibling.hidden = true; // the placeholder
}

// -- health and styles -----------------------------------------------------------------------
async function loadHealth() {
  const badge = $("health");
  try {
    const response = await call("GET", "v1/health");
    const health = await response.json();
    badge.textContent = `${health.backend} · ${health.precision}`;
    badge.title = `model: ${health.kind}, latent stride ${health.latent_stride}`;
    badge.classList.add("ok");
  } catch (err) {
    badge.textContent = "service unreachable";
    badge.classList.add("bad");
  }
}

function addStyleTile(styleId, name, src) {
  let tile = document.querySelector(`.tile[data-style-id="${styleId}"]`);
  if (!tile) {
    tile = document.createElement("button");
    tile.className = "tile";
    tile.type = "button";
    tile.dataset.styleId = styleId;
    tile.title = name;
    const img = new Image();
    img.src = src;
    img.alt = name;
    const label = document.createElement("span");
    label.textContent = name;
    tile.append(img, label);
    tile.addEventListener("click", () => selectStyle(styleId));
    $("styles").insertBefore(tile, document.querySelector(".tile.upload"));
  }
  return tile;
}

function selectStyle(styleId) {
  state.styleId = styleId;
  for (const tile of document.querySelectorAll(".tile[data-style-id]")) {
    tile.setAttribute("aria-pressed", String(tile.dataset.styleId === styleId));
  }
  stylize();
}

async function loadStyles() {
  try {
    const response = await call("GET", "v1/styles");
    if (!response.ok) throw await refusal("the style list", response);
    const { styles } = await response.json();
    for (const style of styles) addStyleTile(style.style_id, style.name, style.thumbnail);
    $("no-styles").hidden = styles.length > 0;
    if (styles.length && !state.styleId) selectStyle(styles[0].style_id);
  } catch (err) {
    show(err.message, "error");
  }
}

async function uploadStyle(file) {
  show(`Registering the style ${file.name}…`);
  try {
    const response = await callRetrying("POST", "v1/styles", file);
    if (!response.ok) throw await refusal(`the style ${file.name}`, response);
    const { style_id: styleId } = await response.json();
    addStyleTile(styleId, file.name, URL.createObjectURL(file));
    show("");
    selectStyle(styleId);
  } catch (err) {
    show(err.message, "error");
  }
}

// -- content and the result ------------------------------------------------------------------
function setContent(file) {
  state.content = file;
  const hint = document.createElement("small");
  hint.textContent = "click or drop another to change";
  $("drop-text").replaceChildren(file.name, document.createElement("br"), hint);
  showImage($("content-img"), file);
  const result = $("result-img");
  result.hidden = $("download").hidden = true;
  result.nextElementSibling.hidden = false;
  $("result-info").textContent = "";
  stylize();
}

$("content-img").addEventListener("error", (e) => {
  // the browser cannot show it; the service still gets the file and says what it thinks of it
  e.target.hidden = true;
  e.target.nextElementSibling.hidden = false;
  e.target.nextElementSibling.textContent = "no preview for this file";
});

async function stylize() {
  if (!state.content || !state.styleId) {
    show(state.content ? "Now pick a style, or upload one." : "Choose or drop a photo to start.");
    return;
  }
  if (state.busy) {
    state.again = true; // one more run with the latest settings when this one ends
    return;
  }
  state.busy = true;
  document.body.classList.add("busy");
  const ratios = { content_ratio: $("content-ratio").value, output_ratio: $("output-ratio").value };
  const query = new URLSearchParams({ style_id: state.styleId, ...ratios });
  show("Stylizing…");
  try {
    const started = performance.now();
    const response = await callRetrying("POST", `v1/stylize?${query}`, state.content, { Accept: "image/png" });
    if (!response.ok) throw await refusal(state.content.name, response);
    const blob = await response.blob();
    const ms = Math.round(performance.now() - started);
    showImage($("result-img"), blob);
    const download = $("download");
    download.href = $("result-img").src;
    download.download = `${state.content.name.replace(/\.[^.]*$/, "")}_stylized.png`;
    download.hidden = false;
    const resized = response.headers.get("X-Quantart-Resized"); // the service downscaled a large photo
    $("result-info").textContent =
      `content_ratio ${Number(ratios.content_ratio).toFixed(2)} · output_ratio ` +
      `${Number(ratios.output_ratio).toFixed(2)} · ${ms} ms${resized ? ` · resized ${resized}` : ""}`;
    show("");
  } catch (err) {
    show(err.message, "error");
  } finally {
    state.busy = false;
    document.body.classList.remove("busy");
    if (state.again) {
      state.again = false;
      stylize();
    }
  }
}

// -- wiring ----------------------------------------------------------------------------------
function firstFile(input) {
  const file = input.files[0];
  input.value = ""; // choosing the same file again fires `change` again
  return file;
}

$("content-file").addEventListener("change", (e) => {
  const file = firstFile(e.target);
  if (file) setContent(file);
});
$("style-file").addEventListener("change", (e) => {
  const file = firstFile(e.target);
  if (file) uploadStyle(file);
});

const drop = $("drop");
drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length) setContent(e.dataTransfer.files[0]);
});

for (const id of ["content-ratio", "output-ratio"]) {
  const slider = $(id);
  slider.addEventListener("input", () => ($(`${id}-value`).textContent = Number(slider.value).toFixed(2)));
  slider.addEventListener("change", stylize);
}

loadHealth();
loadStyles();
