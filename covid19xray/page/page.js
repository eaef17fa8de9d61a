// The page: sends the chosen films to /api/predict and shows what comes back. Every name and
// message is set as text (textContent), never as HTML: a file may be named like markup.
"use strict";

let record = null;
let csvHeader = null;
const csvRows = [];
let csvUrl = null;
let recordReady = null;

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function percent(p) { return (100 * p).toFixed(1) + "%"; }

function interval(metric) {
  if (!metric) return "not reported";
  const value = Number(metric.value).toFixed(3);
  if (!metric.ci95 || metric.ci95[0] === null) return value;
  return `${value} (95% CI ${Number(metric.ci95[0]).toFixed(3)} to ${Number(metric.ci95[1]).toFixed(3)})`;
}

function verdictText(result) {
  const check = record && record.input_check;
  const d = result.input_distance === null ? "" : Number(result.input_distance).toFixed(2);
  switch (result.input_check) {
    case "ok":
      return `Input check: ok, like the training films (distance ${d} ≤ ${check ? check.unlike_training_above : "?"})`;
    case "unlike_training":
      return `Input check: unlike the training films, trust this answer less (distance ${d} > ${check ? check.unlike_training_above : "?"})`;
    case "rejected":
      return `Input check: rejected, not classified: it looks like no frontal chest X-ray the model knows (distance ${d} > ${check ? check.rejected_above : "?"})`;
    default:
      return "No input check in this model: classified unchecked";
  }
}

function figure(src, caption) {
  const fig = el("figure");
  const img = el("img");
  img.src = src;
  img.alt = caption;
  fig.append(img, el("figcaption", null, caption));
  return fig;
}

function showResult(result) {
  const card = el("article", "film");
  card.append(el("h3", null, result.file));
  if (result.error) {
    card.append(el("p", "error", "Cannot be used: " + result.error));
    return card;
  }
  if (result.warning) card.append(el("p", "note", "Warning: " + result.warning));
  const images = el("div", "images");
  if (result.film) images.append(figure(result.film, "the film"));
  if (result.gradcam) images.append(figure(result.gradcam, "Grad-CAM: where the evidence for " + result.prediction + " is"));
  card.append(images);
  const verdict = el("p", "verdict-" + (result.input_check || "none"), verdictText(result));
  verdict.dataset.verdict = result.input_check || "none";
  card.append(verdict);
  if (result.probabilities) {
    card.append(el("p", "prediction", "Prediction: " + result.prediction));
    for (const [name, p] of Object.entries(result.probabilities)) {
      const bar = el("div", "bar");
      const track = el("div", "track");
      const fill = el("div", "fill");
      fill.style.width = percent(p);
      track.append(fill);
      bar.append(el("span", "name", name), track, el("span", "value", percent(p)));
      card.append(bar);
    }
    card.append(el("p", "note", record && record.recalibration
      ? "Probabilities " + record.recalibration + "."
      : "Probabilities as trained (the model carries no recalibration)."));
  }
  return card;
}

function addRows(results) {
  const summary = document.getElementById("summary");
  summary.hidden = false;
  const head = document.querySelector("#table thead");
  const names = record ? record.class_names : [];
  if (!head.firstChild) {
    const row = el("tr");
    for (const title of ["file", "prediction", ...names.map(n => "p " + n), "input check", "distance", "error"]) {
      row.append(el("th", null, title));
    }
    head.append(row);
  }
  const body = document.querySelector("#table tbody");
  for (const r of results) {
    const row = el("tr");
    row.append(el("td", "file", r.file), el("td", null, r.prediction || ""));
    for (const n of names) {
      row.append(el("td", null, r.probabilities ? Number(r.probabilities[n]).toFixed(4) : ""));
    }
    row.append(el("td", null, r.input_check || ""),
      el("td", null, r.input_distance === null ? "" : Number(r.input_distance).toFixed(2)),
      el("td", "error", r.error || ""));
    body.append(row);
  }
}

function addCsv(text) {
  // predict's CSV: the header once, then every request's rows
  const end = text.indexOf("\r\n");
  if (csvHeader === null) csvHeader = text.slice(0, end + 2);
  csvRows.push(text.slice(end + 2));
  if (csvUrl) URL.revokeObjectURL(csvUrl);
  csvUrl = URL.createObjectURL(new Blob([csvHeader, ...csvRows], { type: "text/csv" }));
  document.getElementById("csv").href = csvUrl;
}

async function send(files) {
  if (!files.length) return;
  await recordReady;
  const status = document.getElementById("status");
  status.textContent = `Classifying ${files.length} film(s)…`;
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  let answer;
  try {
    const response = await fetch("/api/predict", { method: "POST", body: form });
    answer = await response.json();
    if (!response.ok) throw new Error(answer.error || response.statusText);
  } catch (err) {
    status.textContent = "Refused: " + err.message;
    status.className = "error";
    return;
  }
  const results = document.getElementById("results");
  for (const result of answer.results) results.append(showResult(result));
  addRows(answer.results);
  addCsv(answer.csv);
  status.className = "";
  status.textContent = `Done: ${answer.results.length} film(s).`;
}

function definition(list, term, value, className) {
  list.append(el("dt", null, term), el("dd", className, value));
}

function evaluation(list, title, e) {
  const counts = e.counts ? Object.entries(e.counts).map(([k, v]) => `${v} ${k}`).join(", ") : "";
  definition(list, title, counts);
  const positive = e.positive_class ? ` (${e.positive_class})` : "";
  definition(list, "  accuracy", interval(e.accuracy));
  definition(list, "  sensitivity" + positive, interval(e.sensitivity));
  definition(list, "  specificity" + positive, interval(e.specificity));
  definition(list, "  ROC AUC", interval(e.auc));
  const c = e.calibration || {};
  definition(list, "  calibration", `Brier ${interval(c.brier)}; intercept ${interval(c.intercept)}; slope ${interval(c.slope)}`);
}

function showRecord(r) {
  const body = document.getElementById("record-body");
  body.textContent = "";
  const list = el("dl");
  definition(list, "model", `${r.model} (SHA-256 ${r.sha256.slice(0, 12)}…)`);
  definition(list, "classes", r.class_names.join(", "));
  definition(list, "recalibration", r.recalibration || "none: the probabilities are as trained");
  if (r.input_check) {
    definition(list, "input check", `fitted on ${r.input_check.fitted_on} training films; unlike the training films above ${r.input_check.unlike_training_above}, rejected above ${r.input_check.rejected_above}`);
  }
  const t = r.training;
  if (t) {
    const train = t.train_counts ? Object.entries(t.train_counts).map(([k, v]) => `${v} ${k}`).join(", ") : "not reported";
    definition(list, "trained on", `${train} (${r.report}; split: ${t.split || "not reported"})`);
    evaluation(list, "test split", t.test);
    for (const e of t.external) evaluation(list, "external test: " + e.folder, e);
  }
  if (r.audit) {
    definition(list, "shortcut audit", r.audit.verdict || "no verdict", r.audit.shortcut ? "missing" : null);
  }
  body.append(list);
  for (const text of [...r.missing, ...r.notes]) body.append(el("p", "missing", text));
}

async function loadRecord() {
  try {
    const response = await fetch("/api/model");
    record = await response.json();
    showRecord(record);
  } catch (err) {
    document.getElementById("record-body").textContent = "The record cannot be loaded: " + err.message;
  }
}

function setUp() {
  const input = document.getElementById("files");
  const drop = document.getElementById("drop");
  input.addEventListener("change", () => { send([...input.files]); input.value = ""; });
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    send([...event.dataTransfer.files]);
  });
  recordReady = loadRecord();
}

document.addEventListener("DOMContentLoaded", setUp);
