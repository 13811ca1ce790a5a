// The page's wiring: health and categories, the inspect panel, recent and the category report.

import { KEY_GIVEN, forgetKey, hasKey } from "./api.js";
import { el } from "./format.js";
import { HealthPanel } from "./health.js";
import { InspectPanel } from "./inspect.js";
import { say } from "./messages.js";
import { RecentPanel } from "./recent.js";
import { ReportPanel } from "./report.js";

const HEALTH_EVERY_MS = 10000;

const select = document.getElementById("category");
const recent = new RecentPanel();
const report = new ReportPanel();
const panel = new InspectPanel((category, results) => {
  recent.load(category);
  report.load(category, results[results.length - 1].score); // drift moved too
});
let listed = "";

function choose(name) {
  panel.setCategory(name);
  recent.load(name);
  report.load(name);
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
