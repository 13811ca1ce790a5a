// The recent panel: the last inspections of the category, kept by the server (thumbnail,
// verdict, score, time), newest first, each with what the operator can do about it.

import { call, explain } from "./api.js";
import { clock, el, num } from "./format.js";
import { fail } from "./messages.js";

export class RecentPanel {
  /** ``actions(item)``: an element appended to each entry (null: none); ``item.index`` is its
   * place in its request's images and ``item.images`` how many that request had (still kept). */
  constructor(actions = () => null) {
    this.actions = actions;
    this.list = document.getElementById("recent-list");
    this.note = document.getElementById("recent-note");
    this.asked = 0;
  }

  async load(category) {
    const asked = ++this.asked;
    if (!category) {
      this.note.textContent = "";
      this.list.replaceChildren();
      return;
    }
    let answer;
    try {
      answer = await call(`/categories/${encodeURIComponent(category)}/recent`);
    } catch (err) {
      if (asked === this.asked) fail(explain(err, "Loading the recent inspections"));
      return;
    }
    if (asked === this.asked) this.show(answer);
  }

  show({ category, limit, items }) {
    this.note.textContent = limit === 0
      ? "The server keeps no recent inspections (recent_per_category is 0)."
      : `The server keeps the last ${limit} inspections of ${category} in memory; newest first.`;
    const entries = withIndex(items).map((item) => entry(item, this.actions(item)));
    this.list.replaceChildren(...(entries.length ? entries : [el("li", "No inspections yet.", "empty")]));
  }
}

/** Each item with its index in its request (the server keeps a batch's images in order; the
 * list is newest first, so a batch's last image comes first) and its request's image count. */
function withIndex(items) {
  const count = new Map();
  items.forEach((i) => count.set(i.request_id, (count.get(i.request_id) || 0) + 1));
  const seen = new Map();
  return items.map((item) => {
    const later = seen.get(item.request_id) || 0;
    seen.set(item.request_id, later + 1);
    return { ...item, images: count.get(item.request_id), index: count.get(item.request_id) - 1 - later };
  });
}

function entry(item, actions) {
  const word = item.is_anomalous ? "DEFECT" : "GOOD";
  const name = item.filename || "unnamed image";
  const li = el("li", null, `recent-item ${item.is_anomalous ? "defect" : "good"}`);
  const img = el("img");
  Object.assign(img, { src: `data:image/jpeg;base64,${item.thumbnail}`, alt: `${name}, ${word}`, width: 64, height: 64 });
  const time = el("time", clock(item.time));
  time.dateTime = item.time;
  const text = el("div", null, "recent-text");
  text.append(el("strong", `${item.is_anomalous ? "✖" : "✔"} ${word}`, "recent-verdict"),
    ` score ${num(item.score)} (threshold ${num(item.threshold)})`, el("br"), time,
    ` · ${name} · ${item.regions} region${item.regions === 1 ? "" : "s"}`);
  li.append(img, text);
  if (actions) li.append(actions);
  return li;
}
