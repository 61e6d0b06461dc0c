// Shared by the upload and review pages: API error wording, the gate's codes in words,
// the checks table and the heatmap viewer. No framework, no build step.

// One plain sentence per rejection/error code, shown above the service's own message.
export const CODE_SENTENCES = {
  not_xray: "This does not look like an X-ray at all (for example a photo, a drawing or a screenshot).",
  not_chest_xray: "This looks like something other than a chest X-ray (for example a hand or knee X-ray, or another kind of scan).",
  low_quality: "This may be a chest X-ray, but the image quality is too poor to read reliably.",
  not_an_image: "The file is not an image this service can read. Use a JPEG, PNG or DICOM file.",
  unsupported_format: "This file format or image layout is not supported. Use a JPEG, PNG or DICOM file.",
  too_large: "The file is too large for this service.",
  broker_unavailable: "The service is busy or its job queue is unavailable. Try again in a few seconds.",
  database_unavailable: "The service's database is unavailable. Try again in a few seconds.",
  unauthorized: "This needs an API key.",
  forbidden: "The service refused this API key.",
};

export const CODE_TITLES = {
  not_xray: "not an X-ray",
  not_chest_xray: "not a chest X-ray",
  low_quality: "image quality too low",
  not_an_image: "not an image",
  unsupported_format: "unsupported format",
  too_large: "file too large",
};

// Check names from the gate in words; unknown names are shown as they are.
const CHECK_NAMES = {
  bytes: "File size (bytes)",
  format: "File format",
  pixels: "Pixels (width × height)",
  decodable: "Could be decoded",
  analysable: "Could be analysed",
  colour_fraction: "Share of coloured pixels",
  white_fraction: "Share of white background",
  edge_density: "Sharp-edge density",
  fine_detail: "Fine detail",
  chest_score: "Chest-shape score",
  min_side: "Shortest side (px)",
  sharpness: "Sharpness",
  clipped_white: "Share of pure-white pixels",
  clipped_black: "Share of pure-black pixels",
  contrast: "Contrast",
  dicom_modality: "DICOM modality",
  dicom_body_part: "DICOM body part",
};

const KIND_SYMBOLS = { max: "≤", min: "≥", eq: "=" };

/** An error with the words to show; `status` is the HTTP status (0 = no answer). */
export class ShownError extends Error {
  constructor(message, { status = 0, code = null } = {}) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** The service's {"error": {code, message}} body, or null when the body is something else. */
export function errorBody(body) {
  if (body && typeof body === "object" && body.error && typeof body.error === "object") {
    return { code: body.error.code || null, message: String(body.error.message || "") };
  }
  return null;
}

/** Words for a failed response: a sentence per code or status, plus the service's message. */
export function describeHttpError(status, body) {
  const err = errorBody(body);
  const code = err ? err.code : null;
  let lead = (code && CODE_SENTENCES[code]) || null;
  if (!lead) {
    if (status === 413) lead = CODE_SENTENCES.too_large;
    else if (status === 415 || status === 422) lead = CODE_SENTENCES.not_an_image;
    else if (status === 503) lead = "The service is busy or unavailable. Try again in a few seconds.";
    else if (status === 401 || status === 403) lead = CODE_SENTENCES.forbidden;
    else if (status >= 500) lead = "The service had an internal error.";
    else lead = "The request failed.";
  }
  const detail = err && err.message ? ` The service says: “${err.message}”.` : "";
  return new ShownError(`${lead}${detail} (HTTP ${status}${code ? ", " + code : ""})`, { status, code });
}

/** fetch() returning parsed JSON, or throwing a ShownError with words for the page. */
export async function apiJson(path, { method = "GET", key = null, json = undefined } = {}) {
  const headers = { Accept: "application/json" };
  if (key) headers["X-API-Key"] = key;
  if (json !== undefined) headers["Content-Type"] = "application/json";
  let resp;
  try {
    resp = await fetch(path, {
      method,
      headers,
      body: json === undefined ? undefined : JSON.stringify(json),
      cache: "no-store",
      credentials: "same-origin",
    });
  } catch (e) {
    throw networkError();
  }
  let body = null;
  try {
    body = await resp.json();
  } catch (e) {
    body = null;
  }
  if (!resp.ok) throw describeHttpError(resp.status, body);
  if (body === null) throw new ShownError(`The service sent an unreadable answer [HTTP ${resp.status}].`, { status: resp.status });
  return body;
}

export function networkError() {
  return new ShownError(
    "Could not reach the service (network error). Check that it is running and that you are online, then try again."
  );
}

/** Create an element: el("p", {class: "x", text: "hi"}, child...). Text is never parsed as HTML. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function formatValue(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (typeof v === "number") {
    if (Number.isInteger(v)) return v.toLocaleString("en");
    const a = Math.abs(v);
    if (a !== 0 && (a < 0.001 || a >= 1e6)) return v.toExponential(2);
    return String(Number(v.toPrecision(3)));
  }
  return String(v);
}

function formatThreshold(c) {
  const t = c.threshold;
  if (c.kind === "in") return `one of ${String(t).split("|").join(", ")}`;
  const sym = KIND_SYMBOLS[c.kind] || c.kind || "";
  return `${sym} ${formatValue(t)}`.trim();
}

/** The gate's checks as a table: check, value, threshold, pass/fail (failed rows marked). */
export function checksTable(checks, captionText) {
  const tbody = el("tbody");
  for (const [name, c] of Object.entries(checks || {})) {
    if (!c || typeof c !== "object") continue;
    const passed = Boolean(c.passed);
    const row = el(
      "tr",
      { class: passed ? "pass" : "fail" },
      el("th", { scope: "row" }, el("span", { text: CHECK_NAMES[name] || name }), el("code", { class: "check-id", text: name })),
      el("td", { class: "num", text: formatValue(c.value) }),
      el("td", { class: "num", text: formatThreshold(c) }),
      el("td", { class: "verdict-cell" }, el("span", { class: passed ? "tag tag-pass" : "tag tag-fail", text: passed ? "pass" : "fail" }))
    );
    tbody.append(row);
  }
  const head = el(
    "thead",
    {},
    el("tr", {}, ...["Check", "Value", "Threshold", "Result"].map((h) => el("th", { scope: "col", text: h })))
  );
  return el("table", { class: "checks" }, el("caption", { text: captionText }), head, tbody);
}

// The model's answer as a badge. UNCERTAIN means the probability fell inside the winner's
// refer band: the model does not guess, the X-ray goes to a radiologist.
const LABEL_CLASSES = { NORMAL: "badge-normal", PNEUMONIA: "badge-pneumonia", UNCERTAIN: "badge-uncertain" };
const LABEL_TEXTS = { UNCERTAIN: "Uncertain — refer to a radiologist" };

/** Badge class for a model label (unknown labels get the plain grey badge). */
export function labelClass(label) {
  return `badge ${LABEL_CLASSES[label] || ""}`.trim();
}

/** Badge words for a model label: the label itself, except UNCERTAIN, which says what to do. */
export function labelText(label) {
  return LABEL_TEXTS[label] || label;
}

/** "0.487" -> "48.7%". */
export function percent(p) {
  return `${(p * 100).toFixed(1)}%`;
}

/** The probability bar: a fill up to p and a mark at the threshold, both with words. */
export function probabilityBar(p, threshold) {
  const bar = el("div", { class: "bar", role: "img" });
  const fill = el("div", { class: "bar-fill" });
  fill.style.width = `${Math.max(0, Math.min(1, p)) * 100}%`;
  bar.append(fill);
  let words = `Probability of pneumonia ${percent(p)}`;
  if (typeof threshold === "number") {
    const mark = el("div", { class: "bar-threshold" }, el("span", { class: "bar-threshold-label", text: `threshold ${percent(threshold)}` }));
    mark.style.left = `${Math.max(0, Math.min(1, threshold)) * 100}%`;
    bar.append(mark);
    words += `; the threshold is ${percent(threshold)}`;
  }
  bar.setAttribute("aria-label", words);
  return bar;
}

/**
 * The heatmap viewer: the overlay PNG over a plain image (when there is one), with a toggle
 * and an opacity slider. The overlay decides the box's size; the plain image is stretched to
 * the same box (both come from the same picture, so the shapes agree).
 */
export function heatmapViewer({ heatmapUrl, baseUrl = null, idPrefix, baseAlt, onHeatmapLoad = null, onHeatmapError = null }) {
  const stack = el("div", { class: "stack" });
  const base = baseUrl ? el("img", { class: "base-img", src: baseUrl, alt: baseAlt || "the uploaded image" }) : null;
  if (base) stack.append(base);
  const heat = el("img", {
    class: "heat-img",
    id: `${idPrefix}-heatmap`,
    src: heatmapUrl,
    alt: "The X-ray with the Grad-CAM heatmap drawn over it",
  });
  if (onHeatmapLoad) heat.addEventListener("load", onHeatmapLoad);
  if (onHeatmapError) heat.addEventListener("error", onHeatmapError);
  stack.append(heat);

  const toggle = el("input", { type: "checkbox", id: `${idPrefix}-toggle`, checked: true, class: "heat-toggle" });
  const range = el("input", { type: "range", id: `${idPrefix}-opacity`, min: 0, max: 100, step: 5, value: 100, class: "heat-opacity" });
  const out = el("output", { for: `${idPrefix}-opacity`, id: `${idPrefix}-opacity-out`, text: "100%" });
  const apply = () => {
    const v = Number(range.value);
    out.textContent = `${v}%`;
    range.setAttribute("aria-valuetext", `${v}%`);
    heat.style.opacity = toggle.checked ? String(v / 100) : "0";
    range.disabled = !toggle.checked;
  };
  toggle.addEventListener("change", apply);
  range.addEventListener("input", apply);

  const controls = el("div", { class: "viewer-controls" });
  const noPlain = () =>
    controls.replaceChildren(
      el("p", {
        class: "help",
        text: "The heatmap image already shows the X-ray underneath; a separate plain preview is not available here.",
      })
    );
  let hasBase = Boolean(base);
  if (base) {
    controls.append(
      el("label", { class: "inline" }, toggle, " Show heatmap"),
      el("span", { class: "range-group" }, el("label", { for: range.id, text: "Heatmap opacity" }), range, out)
    );
    // e.g. a DICOM file named .png: the browser cannot draw it, the heatmap alone remains.
    base.addEventListener("error", () => {
      hasBase = false;
      base.remove();
      toggle.checked = true;
      range.value = "100";
      apply();
      noPlain();
    });
  } else {
    noPlain();
  }
  apply();
  const root = el("div", { class: "viewer" }, stack, controls);
  root.toggleHeatmap = () => {
    if (!hasBase) return;
    toggle.checked = !toggle.checked;
    apply();
  };
  return root;
}

/** ISO time from the API (naive = UTC) as a short local date and time. */
export function formatTime(iso) {
  if (!iso) return "";
  const s = /[zZ]|[+-]\d\d:?\d\d$/.test(iso) ? iso : `${iso}Z`;
  const d = new Date(s);
  if (Number.isNaN(d.getTime())) return iso;
  return d.toLocaleString("en-GB", { dateStyle: "medium", timeStyle: "short" });
}

export function formatBytes(n) {
  if (typeof n !== "number") return "";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(0)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}
