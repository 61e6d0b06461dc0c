// The reviewer page: API key in sessionStorage only, the queue of unlabelled uploads (newest
// first) with the model's answer and heatmap, labels by click or key, and the study counts.
import {
  CODE_SENTENCES,
  CODE_TITLES,
  ShownError,
  apiJson,
  describeHttpError,
  el,
  formatBytes,
  formatTime,
  heatmapViewer,
  labelClass,
  labelText,
  networkError,
  percent,
  probabilityBar,
} from "/static/common.js";

const KEY_STORE = "pneumoscope.reviewerKey";
const PAGE_SIZE = 100;

const $ = (id) => document.getElementById(id);

let apiKey = null;
const blobUrls = new Map(); // upload id -> object URL of its preview (revoked on removal)
let observer = null;

// ----------------------------------------------------------------------------- messages

function showError(err, title) {
  $("error-title").textContent = title;
  $("error-text").textContent = err instanceof ShownError ? err.message : `Unexpected error: ${err && err.message ? err.message : err}`;
  $("error").hidden = false;
}

function hideError() {
  $("error").hidden = true;
}

function isKeyError(err) {
  return err instanceof ShownError && (err.status === 401 || err.status === 403);
}

function keyRefused(err) {
  forgetKey(false);
  showError(
    new ShownError(
      `The service refused this API key (${err.status === 401 ? "no key sent" : "wrong key"}). ` +
        "Check the key and enter it again. If it is right, the service may have no API_KEY set. " +
        `(HTTP ${err.status})`,
      { status: err.status }
    ),
    "Wrong API key"
  );
  $("key-state").textContent = "No key in use.";
  $("api-key").focus();
}

// ----------------------------------------------------------------------------- key

function readStoredKey() {
  try {
    return sessionStorage.getItem(KEY_STORE);
  } catch (e) {
    return null; // storage disabled: the key is asked for on every visit
  }
}

function forgetKey(announce = true) {
  apiKey = null;
  try {
    sessionStorage.removeItem(KEY_STORE);
  } catch (e) {
    /* storage disabled: nothing was stored */
  }
  clearQueue();
  $("stats-card").hidden = true;
  $("queue-card").hidden = true;
  if (announce) $("key-state").textContent = "Key forgotten.";
}

async function useKey(candidate) {
  hideError();
  $("key-state").textContent = "Checking the key…";
  let stats;
  try {
    stats = await apiJson("/v1/uploads/stats", { key: candidate });
  } catch (err) {
    if (isKeyError(err)) keyRefused(err);
    else {
      $("key-state").textContent = "The key could not be checked.";
      showError(err, "Could not reach the reviewer API");
    }
    return;
  }
  apiKey = candidate;
  try {
    sessionStorage.setItem(KEY_STORE, candidate);
  } catch (e) {
    /* storage disabled: the key lives in this page only */
  }
  $("api-key").value = "";
  $("key-state").textContent = "Key accepted. It is kept in this tab only.";
  renderStats(stats);
  await loadQueue();
}

// ----------------------------------------------------------------------------- stats

function renderStats(s) {
  const by = s.by_label || {};
  const parts = ["NORMAL", "PNEUMONIA"].map((k) => `${k} ${by[k] || 0}`).join(", ");
  const stats = $("stats");
  stats.replaceChildren(
    el("strong", { class: "big", id: "ready-count", text: String(s.reviewed) }),
    ` reviewed upload${s.reviewed === 1 ? " is" : "s are"} ready for the next study (${parts}). `,
    `${s.unlabelled} of ${s.total} upload${s.total === 1 ? "" : "s"} still to review.`
  );
  $("stats-card").hidden = false;
}

async function refreshStats() {
  try {
    renderStats(await apiJson("/v1/uploads/stats", { key: apiKey }));
  } catch (err) {
    if (isKeyError(err)) keyRefused(err);
    else showError(err, "Could not update the counts");
  }
}

// ----------------------------------------------------------------------------- queue

function clearQueue() {
  if (observer) observer.disconnect();
  for (const url of blobUrls.values()) URL.revokeObjectURL(url);
  blobUrls.clear();
  $("queue").replaceChildren();
}

function isRejected(u) {
  return Boolean(u.prediction && u.prediction.status === "rejected");
}

async function loadQueue() {
  hideError();
  $("queue-status").textContent = "Loading the queue…";
  let list;
  try {
    list = await apiJson(`/v1/uploads?unlabelled=true&limit=${PAGE_SIZE}`, { key: apiKey });
  } catch (err) {
    $("queue-status").textContent = "";
    if (isKeyError(err)) keyRefused(err);
    else showError(err, "Could not load the queue");
    return;
  }
  clearQueue();
  const showRejected = $("show-rejected").checked;
  const items = list.items.filter((u) => showRejected || !isRejected(u));
  observer = new IntersectionObserver(onVisible, { rootMargin: "400px 0px" });
  for (const u of items) {
    const li = renderItem(u);
    $("queue").append(li);
    observer.observe(li);
  }
  $("queue-card").hidden = false;
  updateCount();
  const hidden = list.items.length - items.length;
  const parts = [`${items.length} upload${items.length === 1 ? "" : "s"} to label`];
  if (hidden) parts.push(`${hidden} rejected by the input check hidden`);
  if (list.unlabelled > list.items.length) parts.push(`showing the newest ${list.items.length} of ${list.unlabelled}`);
  $("queue-status").textContent = `${parts.join("; ")}.`;
}

function updateCount() {
  const n = $("queue").children.length;
  $("queue-count").textContent = `(${n} shown)`;
  if (n === 0) {
    $("queue").replaceChildren();
    $("queue-status").textContent = "Nothing to label: every upload in view has a label.";
  }
}

function answerBlock(u) {
  const p = u.prediction;
  if (!p) return el("p", { class: "answer muted", text: "No model answer for this upload." });
  if (p.status === "done" && p.result) {
    const r = p.result;
    const t = typeof r.threshold === "number" ? r.threshold : null;
    return el(
      "div",
      { class: "answer" },
      el(
        "p",
        {},
        "Model: ",
        el("span", { class: labelClass(r.label), text: labelText(r.label) }),
        ` probability of pneumonia ${percent(r.probability_pneumonia)}`,
        t === null ? "" : ` (threshold ${percent(t)})`
      ),
      probabilityBar(r.probability_pneumonia, t),
      el("p", { class: "muted small", text: `${(r.model && r.model.name) || "unknown model"}, version ${(r.model && r.model.version) || "unknown"}` })
    );
  }
  if (p.status === "rejected") {
    const rj = p.rejection || {};
    return el(
      "div",
      { class: "answer warn-box" },
      el("p", {}, el("strong", { text: `Input check: ${CODE_TITLES[rj.code] || rj.code || "rejected"}. ` }), CODE_SENTENCES[rj.code] || ""),
      el("p", { class: "small", text: rj.message || "" })
    );
  }
  if (p.status === "failed") return el("p", { class: "answer warn-box", text: `The model failed on it: ${p.error || "no reason given"}.` });
  return el("p", { class: "answer muted", text: `The model has not answered yet (${p.status}). Press Refresh later.` });
}

function renderItem(u) {
  const titleId = `t-${u.id}`;
  const answerId = `a-${u.id}`;
  const meta = [
    `uploaded ${formatTime(u.created_at)}`,
    (u.content_type || "").replace(/^image\//, "").replace("application/", "").toUpperCase(),
    u.width && u.height ? `${u.width}×${u.height} px` : null,
    formatBytes(u.size_bytes),
    u.modality ? `modality ${u.modality}` : null,
    u.body_part_examined ? `body part ${u.body_part_examined}` : null,
    u.view_position ? `view ${u.view_position}` : null,
  ].filter(Boolean);
  const normal = el("button", { type: "button", class: "label-btn btn-normal", "data-label": "NORMAL" }, "NORMAL ", el("kbd", { text: "N" }));
  const pneumonia = el("button", { type: "button", class: "label-btn btn-pneumonia", "data-label": "PNEUMONIA" }, "PNEUMONIA ", el("kbd", { text: "P" }));
  const answer = answerBlock(u);
  answer.id = answerId;
  const li = el(
    "li",
    { class: "item", tabindex: 0, "data-upload-id": u.id, "aria-labelledby": titleId, "aria-describedby": answerId },
    el("div", { class: "item-media", "data-state": "waiting" }, el("p", { class: "muted small", text: "Preview loads when in view…" })),
    el(
      "div",
      { class: "item-body" },
      el("h3", { id: titleId, class: "item-title", text: u.original_name || "(unnamed upload)" }),
      el("p", { class: "meta muted small", text: meta.join(" · ") }),
      answer,
      el("div", { class: "actions", role: "group", "aria-label": `Label ${u.original_name || "this upload"}` }, normal, pneumonia)
    )
  );
  li.upload = u;
  for (const b of [normal, pneumonia]) b.addEventListener("click", () => labelItem(li, b.dataset.label));
  return li;
}

/** Build the item's picture once it scrolls near the view: preview (with the key) + heatmap. */
function onVisible(entries) {
  for (const entry of entries) {
    if (!entry.isIntersecting) continue;
    observer.unobserve(entry.target);
    loadMedia(entry.target);
  }
}

async function fetchPreview(uploadId) {
  let resp;
  try {
    resp = await fetch(`/v1/uploads/${uploadId}/image.png`, { headers: { "X-API-Key": apiKey }, cache: "no-store" });
  } catch (e) {
    throw networkError();
  }
  if (!resp.ok) {
    let body = null;
    try {
      body = await resp.json();
    } catch (e) {
      body = null;
    }
    throw describeHttpError(resp.status, body);
  }
  return URL.createObjectURL(await resp.blob());
}

async function loadMedia(li) {
  const u = li.upload;
  const media = li.querySelector(".item-media");
  media.dataset.state = "loading";
  let preview = null;
  let previewProblem = null;
  try {
    preview = await fetchPreview(u.id);
    blobUrls.set(u.id, preview);
  } catch (err) {
    if (isKeyError(err)) {
      keyRefused(err);
      return;
    }
    previewProblem = err.message;
  }
  if (!li.isConnected) {
    if (preview) URL.revokeObjectURL(preview);
    return;
  }
  const p = u.prediction;
  const heatmapUrl = p && p.status === "done" && p.result ? p.result.heatmap_url : null;
  const parts = [];
  if (heatmapUrl) {
    const viewer = heatmapViewer({ heatmapUrl, baseUrl: preview, idPrefix: `h-${u.id}`, baseAlt: `${u.original_name} without the heatmap` });
    li.viewer = viewer;
    parts.push(viewer);
  } else if (preview) {
    parts.push(el("img", { class: "plain-img", src: preview, alt: `${u.original_name}: the uploaded image` }));
  }
  if (previewProblem) parts.push(el("p", { class: "small warn-text", text: `No plain preview: ${previewProblem}` }));
  if (!parts.length) parts.push(el("p", { class: "muted small", text: "Nothing to show for this upload." }));
  media.replaceChildren(...parts);
  media.dataset.state = "loaded";
}

async function labelItem(li, label) {
  if (li.dataset.busy || !apiKey) return;
  li.dataset.busy = "1";
  const u = li.upload;
  const name = u.original_name || "this upload";
  const buttons = li.querySelectorAll(".label-btn");
  for (const b of buttons) b.disabled = true;
  $("queue-status").textContent = `Saving ${label} for ${name}…`;
  try {
    await apiJson(`/v1/uploads/${u.id}/label`, { method: "PUT", key: apiKey, json: { label } });
  } catch (err) {
    delete li.dataset.busy;
    for (const b of buttons) b.disabled = false;
    $("queue-status").textContent = `${label} was not saved for ${name}.`;
    if (isKeyError(err)) keyRefused(err);
    else showError(err, "The label was not saved");
    return;
  }
  hideError();
  const next = li.nextElementSibling || li.previousElementSibling;
  const url = blobUrls.get(u.id);
  if (url) URL.revokeObjectURL(url);
  blobUrls.delete(u.id);
  li.remove();
  updateCount();
  const left = $("queue").children.length;
  if (left) $("queue-status").textContent = `Labelled ${name} as ${label}. ${left} left in view.`;
  else $("queue-status").textContent = `Labelled ${name} as ${label}. Nothing left to label in view; press Refresh to check for new uploads.`;
  if (next && next.isConnected) next.focus();
  else $("queue-h").focus();
  await refreshStats();
}

function onQueueKey(e) {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const li = e.target.closest && e.target.closest("li.item");
  if (!li) return;
  const onItem = e.target === li;
  const typing = e.target.tagName === "INPUT" && !["checkbox", "range"].includes(e.target.type);
  if (typing) return;
  const k = e.key.length === 1 ? e.key.toLowerCase() : e.key;
  if (k === "n" || k === "p") {
    e.preventDefault();
    labelItem(li, k === "n" ? "NORMAL" : "PNEUMONIA");
  } else if (k === "j" || (k === "ArrowDown" && onItem)) {
    e.preventDefault();
    if (li.nextElementSibling) li.nextElementSibling.focus();
  } else if (k === "k" || (k === "ArrowUp" && onItem)) {
    e.preventDefault();
    if (li.previousElementSibling) li.previousElementSibling.focus();
  } else if (k === "h") {
    e.preventDefault();
    if (li.viewer) li.viewer.toggleHeatmap();
  }
}

function init() {
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const v = $("api-key").value.trim();
    if (v) useKey(v);
  });
  $("forget-key").addEventListener("click", () => {
    hideError();
    forgetKey(true);
    $("api-key").focus();
  });
  $("refresh").addEventListener("click", async () => {
    if (!apiKey) return;
    await refreshStats();
    if (apiKey) await loadQueue();
  });
  $("show-rejected").addEventListener("change", () => apiKey && loadQueue());
  $("queue").addEventListener("keydown", onQueueKey);
  const stored = readStoredKey();
  if (stored) useKey(stored);
  else $("key-state").textContent = "Enter the reviewer API key to see the queue.";
}

init();
