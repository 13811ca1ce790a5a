// The colour scale of the anomaly map: the viridis bar, its value range and where the
// thresholds fall on it.

import { el, num } from "./format.js";
import { paintScale } from "./viridis.js";

export class Legend {
  constructor() {
    this.bar = document.getElementById("legend");
    this.ticks = document.getElementById("legend-ticks");
    this.caption = document.getElementById("legend-caption");
    paintScale(this.bar);
  }

  /** ``max``: top of the range (the server's heatmap_max); the thresholds as marks on the bar. */
  show({ max, imageThreshold, pixelThreshold, whatIf = null }) {
    const marks = [[0, "0", "tick start"], [max, `${num(max)}+`, "tick end"],
      [pixelThreshold, `mask ${num(pixelThreshold)}`, "tick row-2"],
      [imageThreshold, `threshold ${num(imageThreshold)}`, "tick row-3"]];
    if (whatIf !== null && whatIf <= max) marks.push([whatIf, `what-if ${num(whatIf)}`, "tick row-4 what-if"]);
    this.ticks.replaceChildren(...marks.map(([value, label, className]) => {
      const tick = el("span", label, className);
      tick.style.left = `${(100 * Math.min(value, max)) / max}%`;
      return tick;
    }));
    const range = `from 0 to ${num(max)} (2 x the calibrated image threshold; higher values take the top colour)`;
    this.bar.setAttribute("aria-label", `Colour scale of the anomaly map, viridis, ${range}`);
    this.caption.textContent = `Anomaly map colours: viridis (colour-blind safe, dark = low, yellow = high), ${range}. `
      + `White outline: the mask, where the map is above the pixel threshold ${num(pixelThreshold)}.`;
  }
}
