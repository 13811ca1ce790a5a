// The what-if thresholds: a slider for the image threshold (the verdict) and one for the pixel
// threshold (the mask and regions). Each re-asks the server (``?threshold=`` or
// ``?pixel_threshold=``, ``record=false``) for the images on screen. Neither changes a stored
// threshold, and the page says so.

import { niceCeil, num } from "./format.js";

const WORDS = {
  image: { what: "threshold", moves: "the verdict" },
  pixel: { what: "pixel threshold", moves: "the mask and the regions" },
};

export class ThresholdControl {
  /** ``id``: the slider's element id (``-value``, ``-note``, ``-reset`` beside it); ``kind``: image or
   * pixel; ``onChange(value)``: a what-if value, or null for the calibrated one. */
  constructor(id, kind, onChange) {
    this.slider = document.getElementById(id);
    this.output = document.getElementById(`${id}-value`);
    this.note = document.getElementById(`${id}-note`);
    this.words = WORDS[kind];
    this.calibrated = null;
    this.slider.addEventListener("input", () => this.show(Number(this.slider.value)));
    this.slider.addEventListener("change", () => onChange(Number(this.slider.value)));
    document.getElementById(`${id}-reset`).addEventListener("click", () => {
      this.slider.value = String(this.calibrated);
      onChange(null);
    });
  }

  /** A new set of images: the range covers twice the calibrated value and ``top``. */
  configure(calibrated, top) {
    const max = niceCeil(Math.max(2 * calibrated, 1.25 * top));
    Object.assign(this.slider, { min: String(max / 500), max: String(max), step: String(max / 500) });
    this.slider.value = String(calibrated);
    this.calibrated = calibrated;
    this.show(null);
  }

  show(whatIf) {
    const value = whatIf ?? this.calibrated;
    this.output.textContent = whatIf === null ? `${num(value)} (calibrated)` : `${num(value)} (what-if)`;
    this.slider.setAttribute("aria-valuetext", this.output.textContent);
    this.note.textContent = `The stored ${this.words.what} is unchanged (calibrated: ${num(this.calibrated)}): `
      + `moving the slider asks the server again for these images with this value, for this view only (not kept `
      + `in Recent). It moves ${this.words.moves} only.`;
  }
}
