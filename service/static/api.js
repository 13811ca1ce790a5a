// Every request of the page: the API key (asked once on a 401, kept in sessionStorage only)
// and API errors turned into sentences.

const STORAGE = "factory-inspect.api-key";
let asking = null; // the open key dialog's promise: concurrent 401s share one question

export class ApiFailure extends Error {
  constructor(status, code, message, requestId) {
    super(message);
    this.status = status;
    this.code = code;
    this.requestId = requestId;
  }
}

const EXPLAIN = {
  invalid_image: "This file is not an image the server can read (PNG, JPEG, BMP or TIFF), or it is damaged.",
  unsupported_format: "This image format is not accepted: use PNG, JPEG, BMP or TIFF.",
  unsupported_media_type: "This upload is not accepted: use PNG, JPEG, BMP or TIFF images.",
  payload_too_large: "The upload is larger than the server accepts.",
  image_too_large: "The image has more pixels than the server accepts.",
  too_many_images: "Too many images at once for the server.",
  empty_file: "The file is empty.",
  unknown_category: "The server does not know this category.",
  artifact_unavailable: "This category is not serving: its model failed to load or is still loading.",
  overloaded: "The server is busy: try again in a moment.",
  deadline_exceeded: "The server took too long to answer.",
  unauthorized: "The API key is missing or was refused.",
  internal_error: "The server failed; its log has the request id below.",
  unreachable: "The server cannot be reached.",
};

/** A readable sentence for a failure, with the server's own message, status, code and request id. */
export function explain(failure, what) {
  const lead = EXPLAIN[failure.code] || "The request failed.";
  const id = failure.requestId ? `, request ${failure.requestId}` : "";
  const status = failure.status ? `HTTP ${failure.status} ` : "";
  return `${what ? what + ": " : ""}${lead} Server: “${failure.message}” (${status}${failure.code}${id}).`;
}

export function storedKey() {
  return sessionStorage.getItem(STORAGE);
}

export function forgetKey() {
  sessionStorage.removeItem(STORAGE);
  document.getElementById("forget-key").hidden = true;
}

export const KEY_GIVEN = "factory-inspect:key-given"; // a window event: requests refused before may retry

function keepKey(key) {
  sessionStorage.setItem(STORAGE, key);
  document.getElementById("forget-key").hidden = false;
  window.dispatchEvent(new Event(KEY_GIVEN));
}

function askKey(refused) {
  asking ??= new Promise((resolve) => {
    const dialog = document.getElementById("key-dialog");
    const input = document.getElementById("api-key");
    document.getElementById("key-reason").textContent = refused
      ? "The server refused that API key. Enter the right one."
      : "This server asks for an API key.";
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

/** fetch + JSON, with the bearer key when one is kept; a 401 asks for a key and retries. */
export async function call(path, init = {}) {
  for (;;) {
    const key = storedKey();
    const headers = new Headers(init.headers || {});
    if (key) headers.set("Authorization", `Bearer ${key}`);
    let response;
    try {
      response = await fetch(path, { ...init, headers });
    } catch (err) {
      throw new ApiFailure(0, "unreachable", String(err.message || err), null);
    }
    if (response.status === 401) {
      if (key && storedKey() === key) forgetKey();
      const given = await askKey(Boolean(key));
      if (given) {
        keepKey(given);
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
  return storedKey() !== null;
}
