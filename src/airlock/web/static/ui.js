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

document.addEventListener("DOMContentLoaded", () => {
  setUpActions(document);
  setUpSwitches(document);
});
