// airlock's web UI: the little the pages need a script for. Every change goes to /api with the
// page's CSRF token; whatever the server says is shown as text (textContent), never as markup.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]')?.content || "";

// An /api error body in OpenAI's shape, with every problem where the server listed them.
function errorOf(xhrOrBody) {
  let body = xhrOrBody;
  if (xhrOrBody instanceof XMLHttpRequest) {
    try { body = JSON.parse(xhrOrBody.responseText); } catch { body = null; }
  }
  const error = (body && body.error) || {};
  return {
    summary: error.summary || error.message || "the request failed",
    problems: Array.isArray(error.problems) ? error.problems : [],
  };
}

function showProblems(list, problems) {
  list.replaceChildren(...problems.map((p) => {
    const item = document.createElement("li");
    item.textContent = p;
    return item;
  }));
}

// Dataset upload: the raw file to POST /api/datasets?name=..., with a progress bar (XHR, because
// fetch reports no upload progress), and every bad line listed before anything is stored.
function setUpUpload(form) {
  const file = form.querySelector('input[type="file"]');
  const name = form.querySelector('input[name="name"]');
  const bar = form.querySelector("[data-progress]");
  const status = form.querySelector("[data-status]");
  const problems = form.querySelector("[data-problems]");
  const drop = form.querySelector("[data-drop]");

  file.addEventListener("change", () => {
    if (file.files[0] && !name.value) name.value = file.files[0].name.replace(/\.(jsonl|json)$/i, "");
  });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files.length) {
      file.files = e.dataTransfer.files;
      file.dispatchEvent(new Event("change"));
    }
  });

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const chosen = file.files[0];
    if (!chosen) return;
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/datasets?name=" + encodeURIComponent(name.value.trim()));
    xhr.setRequestHeader("Content-Type", "application/x-ndjson");
    xhr.setRequestHeader("X-CSRF-Token", csrf());
    bar.hidden = false;
    bar.value = 0;
    status.className = "";
    status.textContent = "Uploading " + chosen.name + "…";
    showProblems(problems, []);
    xhr.upload.addEventListener("progress", (p) => {
      if (p.lengthComputable) bar.value = Math.round((100 * p.loaded) / p.total);
    });
    xhr.addEventListener("load", () => {
      if (xhr.status === 201) {
        const stored = JSON.parse(xhr.responseText);
        status.className = "ok";
        status.textContent = "Stored " + stored.records + " records as " + stored.name + ".";
        window.location.assign("/datasets/" + stored.digest);  // sha256:hex, nothing to escape
        return;
      }
      const error = errorOf(xhr);
      status.className = "error";
      status.textContent = "Not stored: " + error.summary;
      showProblems(problems, error.problems);
    });
    xhr.addEventListener("error", () => {
      status.className = "error";
      status.textContent = "Not stored: the upload was cut off (is the appliance reachable?)";
    });
    xhr.send(chosen);
  });
}

// A call to /api with the session's cookie and CSRF token; resolves to the parsed body, or
// rejects with the server's own words.
async function api(method, path, body) {
  const headers = { "X-CSRF-Token": csrf() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const answer = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const parsed = await answer.json().catch(() => null);
  if (!answer.ok) {
    const error = errorOf(parsed);
    throw Object.assign(new Error(error.summary), { problems: error.problems });
  }
  return parsed;
}

// Buttons that make one change (data-api="METHOD /api/path") and forms that set a run's priority.
function setUpActions(root) {
  root.querySelectorAll("button[data-api]").forEach((button) => {
    button.addEventListener("click", async () => {
      if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
      const [method, path] = button.dataset.api.split(" ");
      const status = button.closest(".actions")?.querySelector("[data-action-status]");
      button.disabled = true;
      if (status) { status.className = "note"; status.textContent = "Working…"; }
      try {
        await api(method, path, button.dataset.body ? JSON.parse(button.dataset.body) : undefined);
        window.location.reload();
      } catch (error) {
        button.disabled = false;
        if (status) { status.className = "error"; status.textContent = error.message; }
      }
    });
  });
  root.querySelectorAll("form[data-priority]").forEach((form) => {
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const status = form.closest(".actions")?.querySelector("[data-action-status]");
      try {
        await api("PUT", "/api/runs/" + form.dataset.priority + "/priority", { priority: form.priority.value });
        window.location.reload();
      } catch (error) {
        if (status) { status.className = "error"; status.textContent = error.message; }
      }
    });
  });
}

// Switching an alias to another promoted adapter (verified, loaded and tried before it moves).
function setUpSwitches(root) {
  root.querySelectorAll("form[data-switch]").forEach((form) => {
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const status = form.closest(".actions")?.querySelector("[data-action-status]");
      if (status) { status.className = "note"; status.textContent = "Verifying, loading and trying the adapter…"; }
      try {
        await api("PUT", "/api/aliases/" + encodeURIComponent(form.dataset.switch), { model_id: form.model_id.value });
        window.location.reload();
      } catch (error) {
        if (status) { status.className = "error"; status.textContent = error.message; }
      }
    });
  });
}

// The playground: the same chat to the alias and to the base model, both streamed from /v1.
async function streamChat(request, out) {
  out.textContent = "";
  out.classList.remove("error");
  const answer = await fetch("/v1/chat/completions", {
    method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf() },
    body: JSON.stringify({ ...request, stream: true }),
  });
  if (!answer.ok) {
    out.classList.add("error");
    out.textContent = errorOf(await answer.json().catch(() => null)).summary;
    return;
  }
  const reader = answer.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) !== -1) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const chunk = JSON.parse(line.slice(6));
        if (chunk.error) { out.classList.add("error"); out.textContent += chunk.error.message; continue; }
        out.textContent += chunk.choices?.[0]?.delta?.content || "";
      }
    }
  }
}

function playgroundRequest(form, model) {
  const messages = [];
  if (form.system.value.trim()) messages.push({ role: "system", content: form.system.value.trim() });
  messages.push({ role: "user", content: form.prompt.value });
  return { model, messages, temperature: Number(form.temperature.value), max_tokens: Number(form.max_tokens.value) };
}

function codeFor(request) {
  const url = window.location.origin + "/v1";
  const body = JSON.stringify(request);
  const curl = "curl " + url + "/chat/completions \\\n  -H \"Authorization: Bearer $AIRLOCK_API_KEY\" \\\n" +
    "  -H \"Content-Type: application/json\" \\\n  -d '" + body.replace(/'/g, "'\\''") + "'";
  const python = "import os\nfrom openai import OpenAI\n\nclient = OpenAI(base_url=" + JSON.stringify(url) +
    ", api_key=os.environ[\"AIRLOCK_API_KEY\"])\nreply = client.chat.completions.create(\n    model=" +
    JSON.stringify(request.model) + ",\n    messages=" + JSON.stringify(request.messages) + ",\n    temperature=" +
    request.temperature + ",\n    max_tokens=" + request.max_tokens + ",\n)\nprint(reply.choices[0].message.content)";
  return { curl, python };
}

function setUpPlayground(form) {
  const tuned = document.querySelector('[data-answer="tuned"]');
  const base = document.querySelector('[data-answer="base"]');
  const tunedName = document.querySelector('[data-name="tuned"]');
  const code = document.querySelector("[data-code]");
  const name = () => { tunedName.textContent = form.alias.value; };
  form.alias.addEventListener("change", name);
  name();
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (!form.reportValidity()) return;
    streamChat(playgroundRequest(form, form.alias.value), tuned);
    if (form.dataset.base) streamChat(playgroundRequest(form, form.dataset.base), base);
  });
  form.querySelector("[data-show-code]").addEventListener("click", () => {
    const shown = codeFor(playgroundRequest(form, form.alias.value));
    code.querySelector("[data-code-curl]").textContent = shown.curl;
    code.querySelector("[data-code-python]").textContent = shown.python;
    code.hidden = false;
  });
}

// Charts (uPlot, served by the appliance). One chart per metric; x is the step.
function lineChart(target, series) {
  const width = Math.max(target.clientWidth || 0, 320);
  return new uPlot({
    width, height: 220,
    scales: { x: { time: false } },
    axes: [{ label: "step" }, { size: 64 }],
    series: [{ label: "step" }, ...series.map((s) => ({ label: s.label, stroke: s.color, width: 2, spanGaps: true }))],
  }, [[], ...series.map(() => [])], target);
}

const COLORS = ["#0b5cad", "#c05a00", "#1d6b34", "#7a3ea1", "#a4141b", "#00707a"];

// A running (or finished) run's page: every event of the run from the start, then live, over
// server-sent events; each step lands on the charts as it arrives.
function setUpLiveRun(section) {
  const charts = {
    loss: lineChart(section.querySelector('[data-chart="loss"]'),
      [{ label: "loss", color: COLORS[0] }, { label: "eval loss", color: COLORS[1] }]),
    learning_rate: lineChart(section.querySelector('[data-chart="learning_rate"]'), [{ label: "learning rate", color: COLORS[2] }]),
    tokens_per_second: lineChart(section.querySelector('[data-chart="tokens_per_second"]'), [{ label: "tokens/s", color: COLORS[3] }]),
  };
  const steps = [], loss = [], evalLoss = [], lr = [], tps = [];
  const text = section.querySelector("[data-progress-text]");
  const stateLabel = document.querySelector("[data-run-status]");
  const stage = section.dataset.stage;
  let pending = false;
  const redraw = () => {
    pending = false;
    charts.loss.setData([steps, loss, evalLoss]);
    charts.learning_rate.setData([steps, lr]);
    charts.tokens_per_second.setData([steps, tps]);
  };
  const later = () => { if (!pending) { pending = true; requestAnimationFrame(redraw); } };
  const at = (step) => {
    let i = steps.indexOf(step);
    if (i === -1) { steps.push(step); loss.push(null); evalLoss.push(null); lr.push(null); tps.push(null); i = steps.length - 1; }
    return i;
  };
  const source = new EventSource("/api/runs/" + section.dataset.liveRun + "/events");
  source.addEventListener("step", (e) => {
    const d = JSON.parse(e.data);
    if (d.stage !== stage) return;
    const i = at(d.step);
    loss[i] = d.loss; lr[i] = d.learning_rate; tps[i] = d.tokens_per_second;
    const left = d.step ? (d.total_steps - d.step) * d.elapsed_s / d.step : 0;
    text.textContent = "Step " + d.step + " of " + d.total_steps + " · loss " + d.loss.toFixed(4) +
      " · " + Math.round(d.tokens_per_second) + " tokens/s · about " + Math.ceil(left) + " s left";
    text.dataset.step = d.step;
    later();
  });
  source.addEventListener("eval", (e) => {
    const d = JSON.parse(e.data);
    if (d.stage !== stage) return;
    evalLoss[at(d.step)] = d.eval_loss;
    later();
  });
  source.addEventListener("status", (e) => { if (stateLabel) stateLabel.textContent = JSON.parse(e.data).status; });
  source.addEventListener("end", (e) => {
    source.close();
    if (stateLabel) stateLabel.textContent = JSON.parse(e.data).status;
    if (steps.length) text.textContent = text.textContent.replace(/ · about \d+ s left$/, "") + " · finished";
    // The run ended while the page was open: its stages, outputs and checkpoints changed too.
    if (section.dataset.finished === "false") window.location.reload();
  });
}

// Several runs' recorded curves on one chart per metric.
function setUpCompare(holder) {
  const curves = JSON.parse(holder.dataset.curves);
  const ids = Object.keys(curves);
  for (const metric of ["loss", "eval_loss"]) {
    const target = holder.querySelector('[data-chart="' + metric + '"]');
    const steps = [...new Set(ids.flatMap((id) => (curves[id][metric] || []).map((p) => p[0])))].sort((a, b) => a - b);
    const chart = lineChart(target, ids.map((id, n) => ({ label: id, color: COLORS[n % COLORS.length] })));
    chart.setData([steps, ...ids.map((id) => {
      const values = new Map((curves[id][metric] || []).map((p) => [p[0], p[1]]));
      return steps.map((s) => (values.has(s) ? values.get(s) : null));
    })]);
  }
}

// The new fine-tune form: the workflow spec it amounts to, shown as YAML with its CLI command,
// checked field by field before it is queued through POST /api/runs.
function specOf(form) {
  const v = (name) => form.elements[name].value.trim();
  const train = { method: v("method") };
  form.querySelectorAll("[data-knob]").forEach((input) => {
    const value = input.type === "number" ? Number(input.value) : input.value;
    if (String(value) !== String(defaultOf(input))) train[input.name] = value;
  });
  const validation = v("validation");
  if (validation === "split") train.validation_split = Number(v("validation_split"));
  else if (validation.startsWith("set:")) train.validation_set = validation.slice(4);
  const spec = { name: v("name"), base_model: v("base_model"), dataset: v("dataset"), priority: v("priority"),
    stages: [{ name: "finetune", uses: "finetune.lora", with: train }] };
  if (train.method === "qlora") spec.resources = { gpus: 1 };
  if (v("eval_set")) {
    const least = Number(v("min_exact_match"));
    spec.stages.push({ name: "evaluate", uses: "evaluate.compare", needs: ["finetune"],
      with: { eval_set: v("eval_set"), min_exact_match: least } });
    spec.stages.push({ name: "promote", uses: "gate.promote", needs: ["evaluate"], with: { min_exact_match: least } });
    if (v("alias")) spec.stages.push({ name: "serve", uses: "serve.vllm", needs: ["promote"], with: { alias: v("alias") } });
  }
  return spec;
}

// A knob's default, as the form was served (only knobs set otherwise go into the spec).
function defaultOf(input) {
  if (input.tagName === "SELECT") return [...input.options].find((o) => o.defaultSelected)?.value;
  return input.type === "number" ? Number(input.defaultValue) : input.defaultValue;
}

function yamlOf(value, indent = "") {
  if (Array.isArray(value)) {
    return value.map((item) => {
      const body = yamlOf(item, indent + "  ");
      return indent + "- " + body.trimStart();
    }).join("\n");
  }
  if (value && typeof value === "object") {
    return Object.entries(value).map(([k, item]) => {
      if (item && typeof item === "object" && !Array.isArray(item) && Object.keys(item).every((x) => typeof item[x] !== "object")) {
        return indent + k + ": {" + Object.entries(item).map(([a, b]) => a + ": " + scalar(b)).join(", ") + "}";
      }
      if (Array.isArray(item) && item.every((x) => typeof x !== "object")) return indent + k + ": [" + item.map(scalar).join(", ") + "]";
      if (item && typeof item === "object") return indent + k + ":\n" + yamlOf(item, indent + "  ");
      return indent + k + ": " + scalar(item);
    }).join("\n");
  }
  return indent + scalar(value);
}

function scalar(value) {
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  return /^[A-Za-z0-9._\/-]+$/.test(value) && !/^(true|false|null|yes|no|on|off|[0-9.eE+-]+)$/i.test(value)
    ? value : JSON.stringify(value);
}

function checkFields(form) {
  const problems = [];
  form.querySelectorAll("[data-error-for]").forEach((slot) => { slot.textContent = ""; });
  form.querySelectorAll("input, select").forEach((field) => {
    field.removeAttribute("aria-invalid");
    if (!field.checkValidity()) {
      field.setAttribute("aria-invalid", "true");
      const message = field.name + ": " + field.validationMessage;
      const slot = form.querySelector('[data-error-for="' + field.name + '"]');
      if (slot) slot.textContent = field.validationMessage;
      problems.push(message);
    }
  });
  if (form.elements.alias.value.trim() && !form.elements.eval_set.value) {
    problems.push("alias: serving needs an evaluation set, since only a candidate that passed the gate is served");
    form.elements.alias.setAttribute("aria-invalid", "true");
  }
  return problems;
}

function setUpNewRun(form) {
  const yaml = document.querySelector("[data-yaml]");
  const command = document.querySelector("[data-command]");
  const problems = form.querySelector("[data-problems]");
  const status = form.querySelector("[data-status]");
  const show = () => {
    const spec = specOf(form);
    yaml.textContent = yamlOf(spec) + "\n";
    command.textContent = "airlock workflow run " + (spec.name || "fine-tune") + ".yaml --wait";
  };
  const split = form.elements.validation_split;
  const showSplit = () => {
    split.closest("[data-split]").hidden = form.elements.validation.value !== "split";
  };
  form.addEventListener("input", (e) => {
    e.target.removeAttribute?.("aria-invalid");
    const slot = form.querySelector('[data-error-for="' + e.target.name + '"]');
    if (slot) slot.textContent = "";
    show();
  });
  form.addEventListener("change", () => { showSplit(); show(); });
  showSplit();
  show();
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const found = checkFields(form);
    showProblems(problems, found);
    if (found.length) { status.className = "error"; status.textContent = "Not queued: fix the fields marked above."; return; }
    status.className = "";
    status.textContent = "Checking and queueing…";
    try {
      const queued = await api("POST", "/api/runs", { spec: specOf(form) });
      window.location.assign("/runs/" + encodeURIComponent(queued.run_id));
    } catch (error) {
      status.className = "error";
      status.textContent = "Not queued: " + error.message;
      showProblems(problems, error.problems || []);
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("form[data-new-run]").forEach(setUpNewRun);
  document.querySelectorAll("form[data-upload]").forEach(setUpUpload);
  setUpActions(document);
  setUpSwitches(document);
  document.querySelectorAll("form[data-playground]").forEach(setUpPlayground);
  document.querySelectorAll("[data-live-run]").forEach(setUpLiveRun);
  document.querySelectorAll("[data-compare-charts]").forEach(setUpCompare);
});
