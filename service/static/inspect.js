// The inspect panel: images in, the server's verdicts out, one image on screen at a time.

import { explain, inspect } from "./api.js";
import { num } from "./format.js";
import { bitmapOfFile } from "./images.js";
import { Legend } from "./legend.js";
import { clearErrors, fail, say } from "./messages.js";
import { Picker } from "./picker.js";
import { showList, showRegions, showTimings, showVerdict, verdictWord } from "./result.js";
import { ThresholdControl } from "./threshold.js";
import { Viewer } from "./viewer.js";

const countDefects = (results) => results.filter((r) => r.is_anomalous).length;

export class InspectPanel {
  /** ``onInspected(category, results)`` after each new (recorded) inspection. */
  constructor(onInspected) {
    this.onInspected = onInspected;
    this.viewer = new Viewer();
    this.legend = new Legend();
    this.threshold = new ThresholdControl("threshold", "image", (t) => this.rethreshold({ threshold: t }));
    this.pixelThreshold = new ThresholdControl("pixel-threshold", "pixel",
      (t) => this.rethreshold({ pixelThreshold: t }));
    this.category = null;
    this.reset();
    this.asked = 0; // the latest request wins: older answers are dropped
    new Picker((files) => this.inspect(files));
    const opacity = document.getElementById("opacity");
    opacity.addEventListener("input", () => {
      document.getElementById("opacity-value").textContent = `${opacity.value} %`;
      this.viewer.setOpacity(Number(opacity.value) / 100);
    });
    this.viewer.opacity = Number(opacity.value) / 100;
  }

  reset() {
    Object.assign(this, { files: [], bitmaps: [], results: [], selected: 0, whatIf: null, whatIfPixel: null });
    document.getElementById("result").hidden = true;
    document.getElementById("result-list").hidden = true;
    this.viewer.clear();
  }

  setCategory(name) {
    if (name !== this.category) this.reset();
    this.category = name;
  }

  async inspect(files) {
    if (!this.category) return fail("Choose a category first: the server lists none that serve.");
    const asked = ++this.asked;
    const names = files.map((f) => f.name || "pasted image").join(", ");
    clearErrors();
    say(`Inspecting ${names} as ${this.category}…`);
    let results;
    try {
      results = await inspect(this.category, files);
    } catch (err) {
      if (asked === this.asked) {
        say("");
        fail(explain(err, `Inspecting ${names}`));
      }
      return;
    }
    if (asked !== this.asked) return;
    const bitmaps = await Promise.all(files.map(bitmapOfFile));
    Object.assign(this, { files, bitmaps, results, whatIf: null, whatIfPixel: null, calibrated: results[0].threshold });
    const topScore = Math.max(...results.map((r) => r.score)); // the map's maximum when the score is it
    this.threshold.configure(this.calibrated, topScore);
    this.pixelThreshold.configure(results[0].pixel_threshold, topScore);
    await this.select(0);
    say(`Inspected ${results.length} image${results.length > 1 ? "s" : ""} as ${this.category}: `
      + `${countDefects(results)} defect${countDefects(results) === 1 ? "" : "s"}.`);
    this.onInspected(this.category, results);
  }

  async select(index) {
    const r = this.results[index];
    this.selected = index;
    document.getElementById("result").hidden = false;
    await this.viewer.show({ bitmap: this.bitmaps[index], name: r.filename || `image ${index + 1}`,
      width: r.width, height: r.height, map: r.map, mask: r.mask, regions: r.regions });
    this.showWords();
  }

  showWords() {
    const r = this.results[this.selected];
    showVerdict(r, this.whatIf !== null);
    showRegions(r.regions);
    showTimings(r.timings_ms);
    showList(this.results, this.selected, (i) => this.select(i));
    this.legend.show({ max: r.heatmap_max, imageThreshold: this.calibrated, pixelThreshold: r.pixel_threshold,
      whatIf: this.whatIf });
  }

  /** Ask again with a what-if image or pixel threshold (null: the calibrated one; the other what-if
   * stays), not recorded by the server. */
  async rethreshold(change) {
    if (!this.files.length) return;
    const asked = ++this.asked;
    const wanted = { threshold: this.whatIf, pixelThreshold: this.whatIfPixel, ...change };
    try {
      const answer = await inspect(this.category, this.files, { ...wanted, outputs: "mask", record: false });
      if (asked !== this.asked) return;
      this.results = answer.map((r, i) => ({ ...r, map: this.results[i].map })); // the map does not change
    } catch (err) {
      if (asked === this.asked) fail(explain(err, "Asking again with the what-if threshold"));
      return;
    }
    clearErrors();
    Object.assign(this, { whatIf: wanted.threshold, whatIfPixel: wanted.pixelThreshold });
    this.threshold.show(this.whatIf);
    this.pixelThreshold.show(this.whatIfPixel);
    const r = this.results[this.selected];
    await this.viewer.setMask(r.mask, r.regions);
    this.showWords();
    const level = this.whatIf === null ? "the calibrated threshold" : `what-if threshold ${num(this.whatIf)}`;
    const mask = this.whatIfPixel === null ? "" : ` (mask at what-if pixel threshold ${num(this.whatIfPixel)})`;
    say(`At ${level}${mask}: ${r.filename || "this image"} is ${verdictWord(r)}, ${r.regions.length} region`
      + `${r.regions.length === 1 ? "" : "s"}; the stored thresholds are unchanged.`);
  }
}
