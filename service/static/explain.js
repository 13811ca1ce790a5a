// API failures and the sentences an operator reads for them (server's message, status, code
// and request id kept, for whoever reads the log).

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
  model_unavailable: "This category has no model loaded, so nothing can be confirmed or updated now.",
  overloaded: "The server is busy: try again in a moment.",
  deadline_exceeded: "The server took too long to answer.",
  unauthorized: "The API key is missing or was refused.",
  forbidden: "Changing the model is allowed only on the server's own machine, or with the reload key.",
  internal_error: "The server failed; its log has the request id below.",
  unreachable: "The server cannot be reached.",
  // Teaching the model from the line
  duplicate: "This image is confirmed already: it waits for the next update, or the model has learned it.",
  unknown_request: "The server no longer keeps this inspection's image: inspect the part again, then confirm it.",
  image_size_mismatch: "This image's size differs from the images the model was trained on (another camera or setup?).",
  invalid_box: "The box does not fit the image: draw it again inside the image.",
  invalid_label: "A part can be confirmed as good or as defective only.",
  empty_mask: "The marked area is empty: mark the defect, or send no mark.",
  validation_error: "The server could not use what was sent (for example the defect type: letters, digits, _ . -).",
  feedback_full: "Too many confirmations are waiting: update the model first, then confirm more.",
  feedback_disabled: "This server keeps no confirmations (no folder for them is configured).",
  feedback_unwritable: "The server cannot write the confirmations to its disk; nothing was stored.",
  insufficient_storage: "The server's disk is full; nothing was stored.",
  update_running: "An update of this model is running: wait until it is done.",
  reload_running: "The model is being reloaded: try again in a moment.",
  nothing_to_learn: "No confirmations are waiting: mark recent inspections as good or defect first.",
  update_unavailable: "The server could not start the update.",
  no_update: "No update has run since the server started.",
  no_parent: "This version was not made by an update: there is no earlier version to return to.",
};

/** A readable sentence for a failure, with the server's own message, status, code and request id. */
export function explain(failure, what) {
  const lead = EXPLAIN[failure.code] || "The request failed.";
  const id = failure.requestId ? `, request ${failure.requestId}` : "";
  const status = failure.status ? `HTTP ${failure.status} ` : "";
  return `${what ? what + ": " : ""}${lead} Server: “${failure.message}” (${status}${failure.code}${id}).`;
}
