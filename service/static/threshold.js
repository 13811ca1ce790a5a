// The what-if image threshold: a slider that re-asks the server (``?threshold=``, ``record=false``)
// for the images on screen. It never changes the stored threshold, and the page says so.

import { niceCeil, num } from "./format.js";

export class ThresholdControl {
  /** ``onChange(threshold)``: a what-if value, or null for the calibrated threshold. */
  constructor(onChange) {
    this.slider = document.getElementById("threshold");
    this.output = document.getElementById("threshold-value");
    this.note = document.getElementById("threshold-note");
    this.calibrated = null;
    this.pixel = null;
    this.slider.addEventListener("input", () => this.show(Number(this.slider.value)));
    this.slider.addEventListener("change", () => onChange(Number(this.slider.value)));
    document.getElementById("threshold-reset").addEventListener("click", () => {
      this.slider.value = String(this.calibrated);
      onChange(null);
    });
  }

  /** A new set of images: the range covers twice the calibrated threshold and every score. */
  configure(calibrated, pixel, maxScore) {
    const max = niceCeil(Math.max(2 * calibrated, 1.25 * maxScore));
    Object.assign(this.slider, { min: String(max / 500), max: String(max), step: String(max / 500) });
    this.slider.value = String(calibrated);
    this.calibrated = calibrated;
    this.pixel = pixel;
    this.show(null);
  }

  show(whatIf) {
    const value = whatIf ?? this.calibrated;
    this.output.textContent = whatIf === null ? `${num(value)} (calibrated)` : `${num(value)} (what-if)`;
    this.slider.setAttribute("aria-valuetext", this.output.textContent);
    this.note.textContent = `The stored threshold is unchanged (calibrated: ${num(this.calibrated)}): moving the `
      + "slider asks the server again for these images with this threshold, for this view only (not kept in "
      + `Recent). The mask and regions follow the calibrated pixel threshold (${num(this.pixel)}), which the `
      + "slider does not move.";
  }
}
