// The new fine-tune form (uses ui.js).
"use strict";

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

document.addEventListener("DOMContentLoaded", () => document.querySelectorAll("form[data-new-run]").forEach(setUpNewRun));
