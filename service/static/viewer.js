// The image view: the input, the anomaly map coloured with viridis at the chosen opacity, the
// mask outline (white, dark halo) and one box per defect region.

import { el, num } from "./format.js";
import { bitmapOfBase64, canvasOfPixels, outlineOf, pixelsOf } from "./images.js";
import { colourMap } from "./viridis.js";

export class Viewer {
  constructor() {
    this.canvas = document.getElementById("view");
    this.boxes = document.getElementById("boxes");
    this.caption = document.getElementById("view-caption");
    this.opacity = 0.55;
    this.clear();
  }

  clear() {
    Object.assign(this, { base: null, heat: null, outline: null, regions: [], name: "", width: 0, height: 0 });
    this.boxes.replaceChildren();
  }

  /** A new image: its bitmap (null: the browser cannot show it), name, size (the server's
   * width and height), gray map and mask (base64 PNG) and regions. */
  async show({ bitmap, name, width, height, map, mask, regions }) {
    Object.assign(this, { base: bitmap, name, width, height });
    this.heat = map ? canvasOfPixels(colourMap(pixelsOf(await bitmapOfBase64(map), width, height))) : null;
    await this.setMask(mask, regions);
  }

  /** The mask and regions of another answer for the same image (the what-if threshold). */
  async setMask(mask, regions) {
    const ring = Math.max(1, Math.round(this.width / 300));
    this.outline = mask ? outlineOf(pixelsOf(await bitmapOfBase64(mask), this.width, this.height), ring) : null;
    this.regions = regions;
    this.drawBoxes();
    this.draw();
  }

  setOpacity(opacity) {
    this.opacity = opacity;
    this.draw();
  }

  draw() {
    const { canvas, width, height } = this;
    canvas.width = width;
    canvas.height = height;
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#808080";
    ctx.fillRect(0, 0, width, height);
    if (this.base) ctx.drawImage(this.base, 0, 0, width, height);
    if (this.heat) {
      ctx.globalAlpha = this.opacity;
      ctx.drawImage(this.heat, 0, 0);
      ctx.globalAlpha = 1;
    }
    if (this.outline) {
      ctx.shadowColor = "rgba(0, 0, 0, 0.95)";
      ctx.shadowBlur = Math.max(2, width / 200);
      ctx.drawImage(this.outline, 0, 0);
      ctx.shadowBlur = 0;
    }
    this.describe();
  }

  drawBoxes() {
    const pct = (v, of) => `${(100 * v) / of}%`;
    const boxes = this.regions.map((r, i) => {
      const box = el("div", null, "region-box");
      Object.assign(box.style, { left: pct(r.x, this.width), top: pct(r.y, this.height),
        width: pct(r.width, this.width), height: pct(r.height, this.height) });
      box.title = `Region ${i + 1}: ${r.width} x ${r.height} px, peak ${num(r.peak)}`;
      box.append(el("span", String(i + 1), "region-label"));
      return box;
    });
    this.boxes.replaceChildren(...boxes);
  }

  describe() {
    const n = this.regions.length;
    const parts = [
      this.base ? `${this.name}` : `${this.name} (the browser cannot show this format: the map is on gray)`,
      this.heat ? `anomaly map at ${Math.round(100 * this.opacity)} % opacity` : "no anomaly map",
      this.outline ? "mask outlined in white" : "empty mask",
      `${n} defect region${n === 1 ? "" : "s"} boxed`,
    ];
    const text = parts.join("; ");
    this.canvas.setAttribute("aria-label", text);
    this.caption.textContent = `${text}.`;
  }
}
