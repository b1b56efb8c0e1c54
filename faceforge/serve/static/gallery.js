// faceforge face search page, the gallery view: the enrolled people with their face crops, a page at a time
// (GET /v1/gallery, enrol scope), with rename and delete for admin keys (PATCH / DELETE /v1/identities/ID).
// Uses $, api, setStatus, cropUrl and keyInfo of app.js. Names are inserted as text, never HTML; the buttons
// only show what the key may do: the server refuses the request of a key without the admin scope anyway.
"use strict";

const galleryView = { offset: 0, total: 0, urls: [] };

function galleryLimit() {
  return Number($("gallery-size").value) || 12;
}

function mayAdmin() {
  return Boolean(keyInfo && keyInfo.may && keyInfo.may.admin);
}

function newElement(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

function newButton(text, className, onClick) {
  const b = newElement("button", className, text);
  b.type = "button";
  b.addEventListener("click", onClick);
  return b;
}

function showPager() {
  const limit = galleryLimit();
  const pages = Math.max(1, Math.ceil(galleryView.total / limit));
  const page = Math.floor(galleryView.offset / limit) + 1;
  $("gallery-page").textContent = galleryView.total
    ? "page " + page + " of " + pages + " (" + galleryView.total + " people)"
    : "";
  $("gallery-prev").disabled = galleryView.offset <= 0;
  $("gallery-next").disabled = galleryView.offset + limit >= galleryView.total;
}

function clearGallery() {
  for (const url of galleryView.urls) URL.revokeObjectURL(url);
  galleryView.urls = [];
  $("gallery-list").replaceChildren();
}

async function renamePerson(person, input) {
  const status = $("gallery-status");
  const name = input.value.trim();
  if (!name) {
    setStatus(status, "a name cannot be empty", true);
    return;
  }
  try {
    await api("/v1/identities/" + person.id, {
      method: "PATCH",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ name: name }),
    });
    await loadGallery("renamed " + person.name + " to " + name);
  } catch (err) {
    setStatus(status, err.message, true);
  }
}

async function deletePerson(person) {
  const status = $("gallery-status");
  if (!window.confirm("Delete " + person.name + " and their " + person.faces + " face(s)? This cannot be undone.")) {
    return;
  }
  try {
    const out = await api("/v1/identities/" + person.id, { method: "DELETE" });
    await loadGallery("deleted " + person.name + " (" + out.deleted_faces.length + " face(s))");
  } catch (err) {
    setStatus(status, err.message, true);
  }
}

function startRename(card, person) {
  if (card.querySelector(".rename-input")) return;
  const input = newElement("input", "rename-input");
  input.type = "text";
  input.maxLength = 200;
  input.value = person.name;
  const save = newButton("Save", "rename-save", () => renamePerson(person, input));
  const cancel = newButton("Cancel", "rename-cancel", () => {
    input.remove();
    save.remove();
    cancel.remove();
  });
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter") renamePerson(person, input);
  });
  card.append(input, save, cancel);
  input.focus();
}

function personCard(person) {
  const card = newElement("div", "person");
  card.id = "person-" + person.id;
  card.dataset.id = String(person.id);
  const crops = newElement("div", "crops");
  for (const faceId of person.crop_ids) {
    const img = newElement("img", "crop");
    img.alt = person.name + ", face " + faceId;
    crops.appendChild(img);
    cropUrl(faceId).then((url) => {
      if (!url) return;
      galleryView.urls.push(url);
      img.src = url;
    });
  }
  if (person.crop_ids.length === 0) crops.appendChild(newElement("span", "note", "no stored crop"));
  card.append(crops, newElement("div", "person-name", person.name),
    newElement("div", "person-meta", person.faces + " face(s), id " + person.id));
  if (mayAdmin()) {
    card.append(newButton("Rename", "rename", () => startRename(card, person)),
      newButton("Delete", "delete", () => deletePerson(person)));
  }
  return card;
}

async function loadGallery(done) {
  // done: what the status line says once the page is shown (the outcome of a rename or delete)
  const status = $("gallery-status");
  if (!keyInfo || !keyInfo.may.enrol) {
    clearGallery();
    galleryView.total = 0;
    showPager();
    setStatus(status, keyInfo ? "key '" + keyInfo.name + "' may not list the gallery (it needs the enrol or admin scope)"
      : "give a key with the enrol or admin scope to see the gallery", false);
    return;
  }
  const limit = galleryLimit();
  const params = new URLSearchParams({ offset: String(galleryView.offset), limit: String(limit), faces: "4" });
  const prefix = $("gallery-prefix").value.trim();
  if (prefix) params.set("prefix", prefix);
  try {
    const page = await api("/v1/gallery?" + params.toString());
    galleryView.total = page.total;
    if (page.identities.length === 0 && page.total > 0 && galleryView.offset > 0) {
      // the page emptied (a delete, or fewer people): show the last page that has people
      galleryView.offset = Math.floor((page.total - 1) / limit) * limit;
      return loadGallery(done);
    }
    clearGallery();
    for (const person of page.identities) $("gallery-list").appendChild(personCard(person));
    const empty = page.total ? "" : "nobody enrolled" + (prefix ? " with a name starting " + prefix : "");
    setStatus(status, typeof done === "string" ? done : empty, false);
  } catch (err) {
    clearGallery();
    galleryView.total = 0;
    setStatus(status, err.message, true);
  }
  showPager();
}

function firstGalleryPage() {
  galleryView.offset = 0;
  loadGallery();
}

$("gallery-show").addEventListener("click", firstGalleryPage);
$("gallery-size").addEventListener("change", firstGalleryPage);
$("gallery-prev").addEventListener("click", () => {
  galleryView.offset = Math.max(0, galleryView.offset - galleryLimit());
  loadGallery();
});
$("gallery-next").addEventListener("click", () => {
  galleryView.offset += galleryLimit();
  loadGallery();
});
document.addEventListener("faceforge-key", firstGalleryPage);
document.addEventListener("faceforge-enrolled", () => loadGallery());
