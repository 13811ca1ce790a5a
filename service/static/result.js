// The words and tables of one inspected image: verdict, score against the threshold, regions,
// stage timings; and the list of images when several were inspected at once.

import { el, num } from "./format.js";

export function verdictWord(result) {
  return result.is_anomalous ? "DEFECT" : "GOOD";
}

export function showVerdict(result, whatIf) {
  const verdict = document.getElementById("verdict");
  verdict.replaceChildren(el("span", result.is_anomalous ? "✖" : "✔", "verdict-icon"), ` ${verdictWord(result)}`);
  verdict.className = `verdict ${result.is_anomalous ? "defect" : "good"}`;
  const which = whatIf ? "what-if threshold" : "calibrated threshold";
  document.getElementById("score-line").textContent =
    `Score ${num(result.score)} ${result.is_anomalous ? ">" : "≤"} ${which} ${num(result.threshold)} · `
    + `normalised ${result.normalized_score.toFixed(2)} (0.5 = the threshold) · ${result.filename || "image"}`
    + `, ${result.width} x ${result.height} px`;
}

function fillRows(tableId, rows) {
  const body = document.querySelector(`#${tableId} tbody`);
  body.replaceChildren(...rows.map((cells) => {
    const tr = el("tr");
    cells.forEach((c) => tr.append(el("td", c)));
    return tr;
  }));
}

export function showRegions(regions) {
  const rows = regions.map((r, i) => [i + 1, r.x, r.y, r.width, r.height, r.area, num(r.peak)].map(String));
  fillRows("regions", rows.length ? rows : [["–", "no region: the mask is empty", "", "", "", "", ""]]);
}

export function showTimings(timings) {
  fillRows("timings", Object.entries(timings).map(([stage, ms]) => [stage, ms.toFixed(1)]));
}

/** One button per image (only when there are several); ``onSelect(index)``. */
export function showList(results, selected, onSelect) {
  const list = document.getElementById("result-list");
  list.hidden = results.length < 2;
  list.replaceChildren(...results.map((r, i) => {
    const button = el("button", `${r.is_anomalous ? "✖" : "✔"} ${verdictWord(r)} · ${num(r.score)} · `
      + `${r.filename || `image ${i + 1}`}`, r.is_anomalous ? "defect" : "good");
    button.type = "button";
    button.setAttribute("aria-pressed", String(i === selected));
    button.addEventListener("click", () => onSelect(i));
    const item = el("li");
    item.append(button);
    return item;
  }));
}
