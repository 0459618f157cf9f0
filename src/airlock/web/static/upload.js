// The datasets page's upload (uses ui.js).
"use strict";

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

document.addEventListener("DOMContentLoaded", () => document.querySelectorAll("form[data-upload]").forEach(setUpUpload));
