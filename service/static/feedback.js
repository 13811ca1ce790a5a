// Confirming recent inspections: on each entry of the recent panel, "good (false alarm)" or
// "defect" (with an optional box and defect type), sent with the inspection's request id; and
// how many confirmations wait for the next update.

import { call, explain } from "./api.js";
import { el } from "./format.js";
import { clearErrors, fail, say } from "./messages.js";

const waiting = (n) => `${n} confirmation${n === 1 ? " waits" : "s wait"}`;

function button(text, onClick) {
  const b = el("button", text);
  b.type = "button";
  b.addEventListener("click", onClick);
  return b;
}

export class Feedback {
  /** ``markDefect(item)`` resolves to ``{box, defectType}`` or null (cancelled);
   * ``onPending(count)`` whenever the number of waiting confirmations is known. */
  constructor(markDefect, onPending) {
    this.markDefect = markDefect;
    this.onPending = onPending;
    this.pending = document.getElementById("pending");
    this.category = null;
    this.confirmed = new Map(); // "<request id>/<index>" -> what this page confirmed it as
    this.limit = null;
    this.asked = 0;
  }

  setCategory(name) {
    this.category = name;
    this.confirmed.clear();
    return this.load();
  }

  /** The number of waiting confirmations (GET .../feedback). */
  async load() {
    const asked = ++this.asked;
    const category = this.category;
    if (!category) return this.showPending(null);
    try {
      const answer = await call(`/categories/${encodeURIComponent(category)}/feedback`);
      if (asked !== this.asked) return;
      this.limit = answer.limit;
      this.showPending(answer.pending);
    } catch (err) {
      if (asked !== this.asked) return;
      this.showPending(null);
      if (err.code !== "feedback_disabled") fail(explain(err, `Counting the confirmations of ${category}`));
      else this.pending.textContent = explain(err);
    }
  }

  showPending(count) {
    this.pending.dataset.count = count === null ? "" : String(count);
    this.pending.textContent = count === null ? ""
      : `${waiting(count)} for an update${this.limit ? ` (at most ${this.limit} are kept)` : ""}.`;
    this.onPending(count ?? 0);
  }

  /** The buttons of one recent entry (``item``: a recent item with its ``index`` and ``images``). */
  actions(item) {
    const name = item.filename || "this inspection";
    const group = el("div", null, "confirm");
    group.setAttribute("role", "group");
    group.setAttribute("aria-label", `Confirm ${name}`);
    const note = el("span", this.confirmed.get(key(item)) || "", "confirm-note");
    group.append(
      button("Good (false alarm)", () => this.send(item, "good", {}, note)),
      button("Defect…", async () => {
        const mark = await this.markDefect(item);
        if (mark) await this.send(item, "defect", mark, note);
      }),
      note);
    return group;
  }

  async send(item, label, { box = null, defectType = "" }, note) {
    const category = this.category;
    const name = item.filename || "the image";
    const form = new FormData();
    form.append("label", label);
    form.append("request_id", item.request_id);
    if (item.images > 1) form.append("index", String(item.index));
    if (defectType) form.append("defect_type", defectType);
    if (box) form.append("box", box.join(","));
    const what = label === "good" ? "good (a false alarm)" : `defect${defectType ? ` (${defectType})` : ""}`;
    let answer;
    try {
      answer = await call(`/categories/${encodeURIComponent(category)}/feedback`, { method: "POST", body: form },
        "reload");
    } catch (err) {
      fail(explain(err, `Confirming ${name} as ${what}`));
      return;
    }
    clearErrors();
    const where = box ? `, box ${box.join(", ")}` : "";
    say(`${name} confirmed as ${what}${where}: ${waiting(answer.pending)} for an update.`);
    const text = `✔ confirmed as ${label}`;
    this.confirmed.set(key(item), text);
    note.textContent = text;
    if (category === this.category) this.showPending(answer.pending);
  }
}

const key = (item) => `${item.request_id}/${item.index}`;
