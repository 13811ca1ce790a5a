// Every request of the page, with its key: the API key (asked once on a 401, kept in
// sessionStorage only), or for what changes the model (confirmations, updates, rollbacks) the
// reload key, which is the API key unless the server has a separate one.

import { ApiFailure } from "./explain.js";

export { explain } from "./explain.js";

const STORAGE = { api: "factory-inspect.api-key", reload: "factory-inspect.reload-key" };
const ASK = {
  api: { title: "API key", first: "This server asks for an API key.",
    refused: "The server refused that API key. Enter the right one." },
  reload: { title: "Reload key",
    first: "Confirming parts, updating the model and rolling it back need the reload key.",
    refused: "The server refused that key for changing the model. Enter the reload key." },
};
let asking = null; // the open key dialog's promise: concurrent 401s share one question

export function storedKey() {
  return sessionStorage.getItem(STORAGE.api);
}

/** The key a request sends: for what changes the model the reload key when one was given,
 * else the API key. */
function keyFor(kind) {
  return (kind === "reload" && sessionStorage.getItem(STORAGE.reload)) || storedKey();
}

export function forgetKey() {
  Object.values(STORAGE).forEach((name) => sessionStorage.removeItem(name));
  document.getElementById("forget-key").hidden = true;
}

export const KEY_GIVEN = "factory-inspect:key-given"; // a window event: requests refused before may retry

function keepKey(kind, key) {
  sessionStorage.setItem(STORAGE[kind], key);
  document.getElementById("forget-key").hidden = false;
  window.dispatchEvent(new Event(KEY_GIVEN));
}

function askKey(kind, refused) {
  asking ??= new Promise((resolve) => {
    const dialog = document.getElementById("key-dialog");
    const input = document.getElementById("api-key");
    const words = ASK[kind];
    document.getElementById("key-title").textContent = words.title;
    document.querySelector("label[for=api-key]").textContent = words.title;
    document.getElementById("key-reason").textContent = refused ? words.refused : words.first;
    input.value = "";
    dialog.addEventListener("close", () => {
      asking = null;
      resolve(dialog.returnValue === "ok" && input.value.trim() ? input.value.trim() : null);
    }, { once: true });
    dialog.showModal();
    input.focus();
  });
  return asking;
}

async function failureOf(response) {
  let body = {};
  try {
    body = await response.json();
  } catch {
    body = {};
  }
  return new ApiFailure(response.status, body.code || `http_${response.status}`,
    body.error || response.statusText || "no message", body.request_id || response.headers.get("X-Request-ID"));
}

/** fetch + JSON, with the bearer key when one is kept; a 401 asks for a key and retries.
 * ``kind``: "api", or "reload" for what changes the model. */
export async function call(path, init = {}, kind = "api") {
  for (;;) {
    const key = keyFor(kind);
    const headers = new Headers(init.headers || {});
    if (key) headers.set("Authorization", `Bearer ${key}`);
    let response;
    try {
      response = await fetch(path, { ...init, headers });
    } catch (err) {
      throw new ApiFailure(0, "unreachable", String(err.message || err), null);
    }
    if (response.status === 401) {
      // A refused key is forgotten; the API key refused for a change asks for the reload key.
      const sent = kind === "reload" && key !== sessionStorage.getItem(STORAGE.reload) ? null : key;
      if (sent && keyFor(kind) === sent) {
        if (kind === "api") forgetKey();
        else sessionStorage.removeItem(STORAGE.reload);
      }
      const given = await askKey(kind, Boolean(sent));
      if (given) {
        keepKey(kind, given);
        continue;
      }
    }
    if (!response.ok) throw await failureOf(response);
    return response.json();
  }
}

/** POST the files to /inspect/{category}; always answers a list of ImageResult. */
export async function inspect(category, files,
  { threshold = null, pixelThreshold = null, outputs = "map,mask", record = true } = {}) {
  const form = new FormData();
  const field = files.length > 1 ? "files" : "file";
  for (const f of files) form.append(field, f, f.name || "pasted.png");
  const query = new URLSearchParams({ outputs });
  if (threshold !== null) query.set("threshold", String(threshold));
  if (pixelThreshold !== null) query.set("pixel_threshold", String(pixelThreshold));
  if (!record) query.set("record", "false");
  const answer = await call(`/inspect/${encodeURIComponent(category)}?${query}`, { method: "POST", body: form });
  return files.length > 1 ? answer.results : [answer];
}

export function hasKey() {
  return Object.values(STORAGE).some((name) => sessionStorage.getItem(name) !== null);
}
