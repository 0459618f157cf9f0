// The admin's keys page: create a key through POST /api/keys and show its secret once, with a
// copy button. api() and showProblems() are ui.js's; revoking is ui.js's data-api buttons. What
// the server sends is shown as text (textContent), never as markup.
"use strict";

// The form as POST /api/keys takes it: models a list of aliases (null: every model), expires
// as typed (the server parses durations and dates), limits as numbers.
function keyRequestOf(form) {
  const value = (name) => form.elements[name].value.trim();
  const models = value("models").split(",").map((m) => m.trim()).filter(Boolean);
  const limit = (name) => (value(name) === "" ? 0 : Number(value(name)));
  return {
    name: value("name"),
    holder: value("holder") || null,
    role: form.elements.role.value,
    models: models.length ? models : null,
    expires: value("expires") || null,
    rpm: limit("rpm"),
    tpm: limit("tpm"),
    max_tokens: limit("max_tokens"),
  };
}

function showSecret(box, created) {
  box.querySelector("[data-secret-id]").textContent = created.id;
  box.querySelector("[data-secret-name]").textContent = created.name;
  box.querySelector("[data-secret-role]").textContent = created.role;
  box.querySelector("[data-secret-value]").textContent = created.key;
  box.querySelector("[data-copy-status]").textContent = "";
  box.hidden = false;
  box.focus();  // a screen reader reads the warning first
}

function setUpCopy(box) {
  const secret = box.querySelector("[data-secret-value]");
  const status = box.querySelector("[data-copy-status]");
  box.querySelector("[data-copy]").addEventListener("click", async () => {
    try {
      // A browser offers the clipboard only to a secure context: https, or this host as localhost.
      if (!navigator.clipboard) throw new Error("no clipboard");
      await navigator.clipboard.writeText(secret.textContent);
      status.className = "ok";
      status.textContent = "Copied to the clipboard.";
    } catch {
      window.getSelection().selectAllChildren(secret);
      status.className = "error";
      status.textContent = "This browser does not let the page copy (it does over https or on localhost): " +
        "the secret is selected, copy it with Ctrl+C.";
    }
  });
}

function setUpCreateKey(form) {
  const status = form.querySelector("[data-status]");
  const problems = form.querySelector("[data-problems]");
  const submit = form.querySelector('button[type="submit"]');
  const box = document.querySelector("[data-secret]");
  setUpCopy(box);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    submit.disabled = true;
    box.hidden = true;  // the secret of an earlier key stays on screen no longer than needed
    box.querySelector("[data-secret-value]").textContent = "";
    status.className = "";
    status.textContent = "Creating the key…";
    showProblems(problems, []);
    try {
      const created = await api("POST", "/api/keys", keyRequestOf(form));
      form.reset();
      status.className = "ok";
      status.textContent = "Created key " + created.id + "; the list below shows it once the page is reloaded, " +
        "without its secret.";
      showSecret(box, created);
    } catch (error) {
      status.className = "error";
      status.textContent = "Not created: " + error.message;
      showProblems(problems, error.problems || []);
    } finally {
      submit.disabled = false;
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("form[data-create-key]").forEach(setUpCreateKey);
});
