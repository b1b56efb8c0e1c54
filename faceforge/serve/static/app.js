// faceforge face search page: talks to the same server's /v1 API with the key the user enters.
// The key lives in sessionStorage (this tab only); every text from the server is inserted as text, never HTML.
// The gallery view is gallery.js; it hears "faceforge-key" (the key was checked) and "faceforge-enrolled".
"use strict";

const $ = (id) => document.getElementById(id);
let apiKey = sessionStorage.getItem("faceforge-key") || "";
let keyInfo = null; // GET /v1/key of the current key: name, scopes, may.{search,enrol,admin}; null without one

function setStatus(el, text, isError) {
  el.textContent = text;
  el.classList.toggle("error", Boolean(isError));
}

async function api(path, options) {
  const opts = Object.assign({ headers: {} }, options || {});
  opts.headers = Object.assign({}, opts.headers, { Authorization: "Bearer " + apiKey });
  const resp = await fetch(path, opts);
  const type = resp.headers.get("content-type") || "";
  const body = type.includes("application/json") ? await resp.json() : await resp.blob();
  if (!resp.ok) {
    const msg = body && body.error ? body.error.message : "HTTP " + resp.status;
    throw new Error(msg + " (" + resp.status + ")");
  }
  return body;
}

async function loadFmrs() {
  // the calibrated rates need no key, so the list is filled when the page opens
  const sel = $("search-fmr");
  try {
    const resp = await fetch("/v1/fmrs");
    if (!resp.ok) throw new Error("HTTP " + resp.status);
    const info = await resp.json();
    sel.replaceChildren();
    for (const fmr of info.fmrs) {
      const opt = document.createElement("option");
      opt.value = String(fmr);
      opt.textContent = fmr.toExponential(0);
      if (fmr === info.default_fmr) opt.selected = true;
      sel.appendChild(opt);
    }
  } catch (err) {
    setStatus($("search-status"), "could not read the false-match rates: " + err.message, true);
  }
}

async function checkKey() {
  keyInfo = null;
  if (!apiKey) {
    setStatus($("key-status"), "no key yet: enrolling, searching and the gallery need one", false);
  } else {
    try {
      keyInfo = await api("/v1/key");
      setStatus($("key-status"), "key accepted: '" + keyInfo.name + "' with scopes " + keyInfo.scopes.join(", ") +
        "; model " + keyInfo.model_kind, false);
    } catch (err) {
      setStatus($("key-status"), err.message, true);
    }
  }
  document.dispatchEvent(new CustomEvent("faceforge-key"));
}

$("save-key").addEventListener("click", () => {
  apiKey = $("api-key").value.trim();
  sessionStorage.setItem("faceforge-key", apiKey);
  checkKey();
});

$("enrol-submit").addEventListener("click", async () => {
  const status = $("enrol-status");
  const files = $("enrol-photos").files;
  const name = $("enrol-name").value.trim();
  if (!name || files.length === 0) {
    setStatus(status, "give a name and at least one photo", true);
    return;
  }
  const form = new FormData();
  form.append("name", name);
  for (const f of files) form.append("photos", f, f.name);
  setStatus(status, "enrolling...", false);
  try {
    const out = await api("/v1/identities", { method: "POST", body: form });
    setStatus(status, "enrolled " + out.identity.name + " (id " + out.identity.id + ") with " +
      out.face_ids.length + " face(s)", false);
    $("enrol-photos").value = "";
    document.dispatchEvent(new CustomEvent("faceforge-enrolled"));
  } catch (err) {
    setStatus(status, err.message, true);
  }
});

async function cropUrl(faceId) {
  try {
    const blob = await api("/v1/faces/" + faceId + "/crop");
    return URL.createObjectURL(blob);
  } catch (err) {
    return null;
  }
}

async function showResults(out) {
  const box = $("results");
  box.replaceChildren();
  out.faces.forEach(async (face, i) => {
    const div = document.createElement("div");
    div.className = "face";
    div.id = "face-" + i;
    const img = document.createElement("img");
    img.alt = "face " + (i + 1);
    if (face.crop) img.src = face.crop;
    div.appendChild(img);
    const right = document.createElement("div");
    const dec = document.createElement("div");
    dec.id = "decision-" + i;
    if (face.decision) {
      dec.className = "decision match";
      dec.textContent = "Match: " + face.decision.name + " (score " + face.decision.score.toFixed(3) + ")";
    } else {
      dec.className = "decision nomatch";
      dec.textContent = "No match at threshold " + out.decision_rule.threshold.toFixed(3);
    }
    right.appendChild(dec);
    const table = document.createElement("table");
    table.className = "matches";
    const head = table.insertRow();
    for (const h of ["", "name", "score", "decision"]) {
      const th = document.createElement("th");
      th.textContent = h;
      head.appendChild(th);
    }
    for (const m of face.matches) {
      const row = table.insertRow();
      row.className = "match-row";
      const c0 = row.insertCell();
      const mi = document.createElement("img");
      mi.alt = m.name;
      c0.appendChild(mi);
      cropUrl(m.face_id).then((url) => { if (url) mi.src = url; });
      row.insertCell().textContent = m.name;
      row.insertCell().textContent = m.score.toFixed(3);
      row.insertCell().textContent = m.match ? "match" : "no match";
    }
    right.appendChild(table);
    div.appendChild(right);
    box.appendChild(div);
  });
}

$("search-submit").addEventListener("click", async () => {
  const status = $("search-status");
  const file = $("search-photo").files[0];
  if (!file) {
    setStatus(status, "choose a photo", true);
    return;
  }
  const form = new FormData();
  form.append("photo", file, file.name);
  form.append("crops", "true");
  const fmr = $("search-fmr").value;
  if (fmr) form.append("fmr", fmr);
  setStatus(status, "searching...", false);
  try {
    const out = await api("/v1/search", { method: "POST", body: form });
    setStatus(status, out.faces.length + " face(s) found", false);
    await showResults(out);
  } catch (err) {
    $("results").replaceChildren();
    setStatus(status, err.message, true);
  }
});

loadFmrs();
$("api-key").value = apiKey;
document.addEventListener("DOMContentLoaded", checkKey); // after gallery.js is listening
