// The page's wiring: health and categories, the inspect panel, recent (with its confirmations),
// teaching the model, and the category report with its versions.

import { KEY_GIVEN, forgetKey, hasKey } from "./api.js";
import { Feedback } from "./feedback.js";
import { el } from "./format.js";
import { HealthPanel } from "./health.js";
import { InspectPanel } from "./inspect.js";
import { LineagePanel } from "./lineage.js";
import { DefectDialog } from "./mark.js";
import { say } from "./messages.js";
import { RecentPanel } from "./recent.js";
import { ReportPanel } from "./report.js";
import { UpdatePanel } from "./update.js";

const HEALTH_EVERY_MS = 10000;

const select = document.getElementById("category");
const report = new ReportPanel();
const lineage = new LineagePanel(modelChanged);
const update = new UpdatePanel(modelChanged);
const defects = new DefectDialog();
const feedback = new Feedback((item) => defects.ask(item), (count) => update.setPending(count));
const recent = new RecentPanel((item) => feedback.actions(item));
const panel = new InspectPanel((category, results) => {
  recent.load(category);
  feedback.load(); // others may have confirmed parts meanwhile
  report.load(category, results[results.length - 1].score); // drift moved too
});
let listed = "";

function choose(name) {
  panel.setCategory(name);
  feedback.setCategory(name);
  update.setCategory(name);
  recent.load(name);
  report.load(name);
  lineage.load(name);
}

/** After an update or a rollback: another version may be live, and fewer confirmations wait. */
function modelChanged(category) {
  if (category !== select.value) return;
  report.load(category);
  lineage.load(category);
  feedback.load();
}

function listCategories(categories) {
  const signature = JSON.stringify(categories.map((c) => [c.name, c.state]));
  if (signature === listed) return;
  listed = signature;
  const current = select.value;
  select.replaceChildren(...categories.map((c) => {
    const option = el("option", c.state === "ready" ? c.name : `${c.name} (${c.state})`);
    option.value = c.name;
    return option;
  }));
  const names = categories.map((c) => c.name);
  const chosen = names.includes(current) ? current
    : (categories.find((c) => c.state === "ready") || categories[0] || { name: "" }).name;
  select.value = chosen;
  if (chosen !== current) choose(chosen || null);
  if (!document.body.dataset.categoriesListed) performance.mark("factory-inspect:categories-listed"); // benchmarks/page.py
  document.body.dataset.categoriesListed = "true";
}

select.addEventListener("change", () => choose(select.value));
const forget = document.getElementById("forget-key");
forget.hidden = !hasKey();
forget.addEventListener("click", () => {
  forgetKey();
  say("API key forgotten: the page asks again when the server needs it.");
});

window.addEventListener(KEY_GIVEN, () => recent.load(select.value || null)); // e.g. refused before a key was given

const health = new HealthPanel(listCategories);
health.refresh();
setInterval(() => health.refresh(), HEALTH_EVERY_MS);
