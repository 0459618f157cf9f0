// The playground (uses ui.js).
"use strict";

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

document.addEventListener("DOMContentLoaded", () => document.querySelectorAll("form[data-playground]").forEach(setUpPlayground));
