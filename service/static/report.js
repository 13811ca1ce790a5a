// The category report: what the live artifact is and how it was fitted (GET /categories/{name}),
// with the held-out good scores the threshold came from drawn on one scale.

import { call, explain } from "./api.js";
import { clock, el, num, percent } from "./format.js";
import { fail } from "./messages.js";
import { scoreScale } from "./scale.js";

export class ReportPanel {
  constructor() {
    this.body = document.getElementById("report-body");
    this.asked = 0;
  }

  /** Fetch and show the report; ``score``: the last score inspected, marked on the scale. */
  async load(category, score = null) {
    const asked = ++this.asked;
    if (!category) return this.body.replaceChildren(el("p", "No category serves yet."));
    let detail;
    try {
      detail = await call(`/categories/${encodeURIComponent(category)}`);
    } catch (err) {
      if (asked === this.asked) fail(explain(err, `Loading the report of ${category}`));
      return;
    }
    if (asked === this.asked) this.show(detail, score);
  }

  show(detail, score) {
    const m = detail.manifest;
    const list = el("dl", null, "facts");
    for (const [term, value] of facts(detail)) list.append(el("dt", term), el("dd", value));
    const parts = [list];
    if (m) {
      parts.push(el("h3", "Held-out good scores and the threshold"),
        scoreScale(m.holdout_scores, m.thresholds.image, score),
        el("p", "The artifact carries no fit-time plots (ROC curve, score histogram): `factory-inspect "
          + "evaluate` draws them on a test set. Above: the held-out good parts' scores the threshold was "
          + "calibrated on, and the last score inspected here.", "note"));
    }
    this.body.replaceChildren(...parts);
  }
}

function facts(d) {
  const rows = [["State", d.error ? `${d.state}: ${d.error}` : d.state],
    ["Artifact", d.artifact_id ? `${d.artifact_id}, loaded ${clock(d.loaded_at)}` : "none"]];
  const m = d.manifest;
  if (!m) return rows;
  const seconds = Object.values(m.fit_seconds).reduce((a, b) => a + b, 0);
  const blocks = Object.entries(m.blocks).map(([k, on]) => `${k} ${on ? "on" : "off"}`).join(", ");
  const skipped = m.skipped_images.length ? `, ${m.skipped_images.length} skipped (did not decode)` : "";
  rows.push(["Fitted", `${clock(m.created_at)}, in ${num(seconds)} s`],
    ["Backbone", `${m.backbone_arch} (${m.backbone_weights} weights), input ${m.image_size} px`],
    ["Blocks", blocks], ["Scoring", scoring(m.scoring)],
    ["Thresholds", `image ${num(m.thresholds.image)}, pixel ${num(m.thresholds.pixel)} (${m.thresholds.method})`],
    ["Training", `${m.training_images} good images${skipped}; memory bank ${num(m.bank_size)} vectors`],
    ["Labelled defects", m.labelled_defects ? `${m.labelled_defects} used; ${validation(m.validation)}`
      : "none: the thresholds come from the held-out good parts"]);
  if (m.defect_head) rows.push(["Defect head", defectHead(m.defect_head)]);
  if (d.drift) rows.push(["Drift", `${d.drift.status}: ${d.drift.hint}`]);
  return rows;
}

function scoring(s) {
  if (!s) return "not recorded";
  const note = s.warning ? `. Warning: ${s.warning}` : s.fallback ? `. ${s.fallback}` : "";
  return `${s.chosen ?? "the branches as configured"} (${s.mode})${note}`;
}

function defectHead(h) {
  if (h.skipped) return `off: ${h.skipped}`;
  const shots = h.shots ? Object.entries(h.shots.per_type).map(([t, n]) => `${n} ${t}`).join(", ") : "";
  const what = h.weight > 0 ? `on, weight ${num(h.weight)}: the map is boosted where the head sees a defect`
    : "off: on defects it did not train on, it did not beat the map without it";
  return `${what}${shots ? `; learned from ${shots}` : ""}`;
}

function validation(v) {
  if (!v) return "no validation figures";
  return `image AUROC ${percent(v.image_auroc)}, pixel AUROC ${percent(v.pixel_auroc)}, AU-PRO ${percent(v.au_pro)}`;
}
