// The upload page: pick or drop a file, upload it with progress, poll the job, show the answer.
import {
  CODE_SENTENCES,
  CODE_TITLES,
  ShownError,
  apiJson,
  checksTable,
  describeHttpError,
  formatBytes,
  heatmapViewer,
  labelClass,
  labelText,
  networkError,
  percent,
  probabilityBar,
} from "/static/common.js";

const POLL_FAST_MS = 500; // the first seconds: a tiny model answers quickly
const POLL_SLOW_MS = 1500;
const POLL_FAST_FOR_MS = 15000;
const MAX_POLL_FAILURES = 5; // in a row; then the error is shown and polling stops
const BIG_FILE_BYTES = 20 * 1024 * 1024;

const $ = (id) => document.getElementById(id);
const PREVIEWABLE = /\.(jpe?g|png)$/i;

let run = 0; // increments per upload; stale callbacks of an older upload do nothing
let objectUrl = null;
let xhr = null;
let pollTimer = null;

function setStatus(text) {
  $("status").textContent = text;
}

function reset() {
  run += 1;
  if (xhr) xhr.abort();
  xhr = null;
  clearTimeout(pollTimer);
  if (objectUrl) URL.revokeObjectURL(objectUrl);
  objectUrl = null;
  for (const id of ["progress-card", "error", "rejection", "result", "again"]) $(id).hidden = true;
  $("viewer").replaceChildren();
  $("rejection-checks").replaceChildren();
  $("rejection-thumb").hidden = true;
  $("rejection-thumb").removeAttribute("src");
  setStatus("");
}

function showError(err, title = "Something went wrong") {
  const msg = err instanceof ShownError ? err.message : `Unexpected error: ${err && err.message ? err.message : err}`;
  $("error-title").textContent = title;
  $("error-text").textContent = msg;
  $("error").hidden = false;
  $("again").hidden = false;
  setStatus(`Stopped: ${title.toLowerCase()}.`);
}

function setProgress(fraction) {
  const pct = Math.round(Math.max(0, Math.min(1, fraction)) * 100);
  $("upload-progress").value = pct;
  $("upload-percent").textContent = `${pct}%`;
}

function start(file) {
  reset();
  const mine = run;
  $("progress-card").hidden = false;
  $("file-name").textContent = file.name || "(unnamed file)";
  $("file-size").textContent = `(${formatBytes(file.size)})`;
  setProgress(0);
  setStatus("Uploading…");
  if (file.type === "image/jpeg" || file.type === "image/png" || PREVIEWABLE.test(file.name || "")) {
    objectUrl = URL.createObjectURL(file); // the user's own file, never sent anywhere else
  }

  const form = new FormData();
  form.append("file", file, file.name || "upload");
  xhr = new XMLHttpRequest();
  xhr.open("POST", "/v1/predictions");
  xhr.setRequestHeader("Accept", "application/json");
  xhr.upload.addEventListener("progress", (e) => {
    if (mine === run && e.lengthComputable && e.total > 0) setProgress(e.loaded / e.total);
  });
  xhr.upload.addEventListener("load", () => {
    if (mine !== run) return;
    setProgress(1);
    setStatus("Uploaded; waiting for the service to accept the file…");
  });
  xhr.addEventListener("load", () => {
    if (mine !== run) return;
    const status = xhr.status;
    let body = null;
    try {
      body = JSON.parse(xhr.responseText);
    } catch (e) {
      body = null;
    }
    xhr = null;
    if (status === 202 && body && body.id) {
      setProgress(1);
      setStatus("Queued: waiting for a free worker…");
      const started = Date.now();
      poll(mine, body.status_url || `/v1/predictions/${body.id}`, started, 0);
    } else {
      showError(describeHttpError(status, body), status === 503 ? "The service is busy or unavailable" : "The file was refused");
    }
  });
  xhr.addEventListener("error", () => {
    if (mine !== run) return;
    xhr = null;
    const err = networkError();
    // A server refusing an oversized body may close the connection before the browser has
    // finished sending, which the browser reports as a network error, not as the 413.
    if (file.size > BIG_FILE_BYTES) err.message += ` This file is large (${formatBytes(file.size)}): the service may have refused it for its size.`;
    showError(err, "The upload failed");
  });
  xhr.addEventListener("timeout", () => {
    if (mine !== run) return;
    xhr = null;
    showError(new ShownError("The upload timed out. Try again."), "The upload failed");
  });
  xhr.send(form);
}

async function poll(mine, url, started, failures) {
  let body;
  try {
    body = await apiJson(url);
  } catch (err) {
    if (mine !== run) return;
    failures += 1;
    if (failures >= MAX_POLL_FAILURES || (err.status && err.status < 500)) {
      showError(err, "Lost track of the job");
      return;
    }
    setStatus(`Could not read the job's status (${err.message}); retrying, attempt ${failures + 1} of ${MAX_POLL_FAILURES}…`);
    pollTimer = setTimeout(() => poll(mine, url, started, failures), POLL_SLOW_MS);
    return;
  }
  if (mine !== run) return;
  const waited = Math.round((Date.now() - started) / 1000);
  if (body.status === "queued" || body.status === "running") {
    setStatus(
      body.status === "queued"
        ? `Queued: waiting for a free worker… (${waited} s)`
        : `Running: checking the image and computing the answer… (${waited} s)`
    );
    const delay = Date.now() - started < POLL_FAST_FOR_MS ? POLL_FAST_MS : POLL_SLOW_MS;
    pollTimer = setTimeout(() => poll(mine, url, started, 0), delay);
  } else if (body.status === "done" && body.result) {
    showResult(body.result);
  } else if (body.status === "rejected") {
    showRejection(body.rejection || { code: null, message: "no reason given", checks: {} });
  } else if (body.status === "failed") {
    showError(
      new ShownError(`The service could not process this image: ${body.error || "no reason given"}.`),
      "Processing failed"
    );
  } else {
    showError(new ShownError(`The service answered with an unknown status "${body.status}".`));
  }
}

function showResult(res) {
  const p = Number(res.probability_pneumonia);
  const t = typeof res.threshold === "number" ? res.threshold : null;
  const badge = $("result-label");
  badge.textContent = labelText(res.label);
  badge.className = labelClass(res.label);
  const words =
    t === null
      ? `Probability of pneumonia: ${percent(p)}.`
      : `Probability of pneumonia: ${percent(p)}. The threshold is ${percent(t)}: at or above it the answer is PNEUMONIA, below it NORMAL.`;
  $("result-words").textContent =
    res.label === "UNCERTAIN"
      ? `Probability of pneumonia: ${percent(p)}. This is in the range where the model cannot reliably tell NORMAL from PNEUMONIA, so it gives no answer: have a radiologist read this X-ray.`
      : words;
  $("result-bar").replaceChildren(probabilityBar(p, t));
  $("model-name").textContent = (res.model && res.model.name) || "unknown";
  $("model-version").textContent = (res.model && res.model.version) || "unknown";
  const viewer = $("viewer");
  if (res.heatmap_url) {
    viewer.replaceChildren(
      heatmapViewer({
        heatmapUrl: res.heatmap_url,
        baseUrl: objectUrl,
        idPrefix: "result",
        baseAlt: "Your image without the heatmap",
        onHeatmapError: () => showError(new ShownError("The heatmap image could not be loaded."), "Heatmap missing"),
      })
    );
  } else {
    viewer.replaceChildren(document.createTextNode("No heatmap is available for this answer."));
  }
  $("result").hidden = false;
  $("again").hidden = false;
  setStatus(`Done: ${res.label}, probability of pneumonia ${percent(p)}.`);
}

function showRejection(rj) {
  const code = rj.code || "";
  $("rejection-title").textContent = CODE_TITLES[code] || code || "refused";
  $("rejection-sentence").textContent = CODE_SENTENCES[code] || "The input check refused this file.";
  $("rejection-message").textContent = rj.message || "no reason given";
  const checks = rj.checks || {};
  if (Object.keys(checks).length) {
    $("rejection-checks").replaceChildren(checksTable(checks, "The checks behind this answer (failed checks are marked)"));
  }
  if (objectUrl) {
    const thumb = $("rejection-thumb");
    thumb.addEventListener("error", () => (thumb.hidden = true), { once: true });
    thumb.src = objectUrl;
    thumb.hidden = false;
  }
  $("rejection").hidden = false;
  $("again").hidden = false;
  setStatus(`Not analysed: ${CODE_TITLES[code] || code || "refused"}.`);
}

function pickFirst(files) {
  if (!files || files.length === 0) return;
  start(files[0]);
}

function init() {
  const input = $("file");
  const drop = $("drop");
  drop.addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    pickFirst(input.files);
    input.value = ""; // choosing the same file again starts a new check
  });
  for (const ev of ["dragenter", "dragover"]) {
    drop.addEventListener(ev, (e) => {
      e.preventDefault();
      drop.classList.add("dragging");
    });
  }
  for (const ev of ["dragleave", "dragend"]) drop.addEventListener(ev, () => drop.classList.remove("dragging"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("dragging");
    pickFirst(e.dataTransfer && e.dataTransfer.files);
  });
  // A file dropped beside the zone must not make the browser navigate away to it.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  $("again").addEventListener("click", () => {
    reset();
    drop.focus();
  });
}

init();
