// One score axis as an SVG: the held-out good parts' scores (min to max, median, p95), the
// calibrated image threshold, and the last score inspected (an arrow at the end when beyond).

import { niceCeil, num } from "./format.js";

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 400;
const LEFT = 10;
const RIGHT = 390;

function node(tag, attrs, text) {
  const n = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
  if (text !== undefined) n.textContent = text;
  return n;
}

export function scoreScale(holdout, threshold, score) {
  const top = niceCeil(1.1 * Math.max(1.5 * threshold, holdout.max ?? 0));
  const x = (v) => LEFT + ((RIGHT - LEFT) * Math.min(v, top)) / top;
  const svg = node("svg", { viewBox: `0 0 ${WIDTH} 74`, class: "scale", role: "img" });
  const said = [`held-out good scores ${num(holdout.min)} to ${num(holdout.max)} (median ${num(holdout.p50)}, `
    + `p95 ${num(holdout.p95)}, ${num(holdout.count)} images)`, `threshold ${num(threshold)}`];
  svg.append(node("line", { x1: LEFT, x2: RIGHT, y1: 44, y2: 44, class: "axis" }),
    node("text", { x: LEFT, y: 60, class: "label" }, "0"),
    node("text", { x: RIGHT, y: 60, class: "label end" }, num(top)),
    node("rect", { x: x(holdout.min), y: 34, width: Math.max(2, x(holdout.max) - x(holdout.min)), height: 10,
      class: "goods" }),
    node("line", { x1: x(holdout.p50), x2: x(holdout.p50), y1: 30, y2: 48, class: "median" }),
    node("line", { x1: x(holdout.p95), x2: x(holdout.p95), y1: 32, y2: 46, class: "p95" }),
    node("text", { x: Math.max(x(holdout.min), LEFT + 16), y: 58, class: "label" }, "held-out goods"),
    node("line", { x1: x(threshold), x2: x(threshold), y1: 14, y2: 50, class: "threshold" }),
    node("text", { x: x(threshold) + 3, y: 12, class: "label" }, `threshold ${num(threshold)}`));
  if (score !== null && score !== undefined) {
    const beyond = score > top;
    const at = x(score);
    svg.append(node("path", { d: `M${at - 5},70 L${at + 5},70 L${at},60 Z`, class: "score" }),
      node("text", { x: beyond ? at - 8 : at + 7, y: 70, class: `label${beyond ? " end" : ""}` },
        `${beyond ? "→ " : ""}last ${num(score)}`));
    said.push(`last score ${num(score)}`);
  }
  svg.setAttribute("aria-label", `Score scale: ${said.join("; ")}.`);
  return svg;
}
