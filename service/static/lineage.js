// The category's versions (GET .../versions), the live one first: what each update added to the
// version it came from (confirmed goods and defects, the scoring it chose, its notes), and a
// rollback to that version (POST .../rollback) when the live one came from an update.

import { call, explain } from "./api.js";
import { clock, el } from "./format.js";
import { clearErrors, fail, say } from "./messages.js";

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

function added(v) {
  if (!v.parent) {
    return `Fitted on ${plural(v.added_goods, "good image")}, ${plural(v.added_defects, "labelled defect")}; `
      + `${v.held_out} held out; scoring ${v.scoring ?? "as configured"}.`;
  }
  const scoring = v.parent_scoring && v.parent_scoring !== v.scoring
    ? `scoring changed from ${v.parent_scoring} to ${v.scoring}` : `scoring ${v.scoring ?? "as before"} (unchanged)`;
  return `Updated from ${v.parent}: added ${plural(v.added_goods, "confirmed good")} and `
    + `${plural(v.added_defects, "confirmed defect")}; ${v.held_out} held out; ${scoring}.`;
}

function version(v, live) {
  const item = el("li", null, live ? "version live" : "version");
  item.append(el("strong", v.artifact_id, "version-id"), live ? " (live)" : "", ` · made ${clock(v.created_at)}`,
    el("br"), added(v));
  if (v.notes.length) {
    const notes = el("ul", null, "version-notes");
    notes.append(...v.notes.map((n) => el("li", n)));
    item.append(notes);
  }
  return item;
}

export class LineagePanel {
  /** ``onRolledBack(category)`` after a rollback swapped the parent in. */
  constructor(onRolledBack) {
    this.body = document.getElementById("lineage-body");
    this.onRolledBack = onRolledBack;
    this.asked = 0;
  }

  async load(category) {
    const asked = ++this.asked;
    if (!category) return this.body.replaceChildren();
    let versions;
    try {
      versions = await call(`/categories/${encodeURIComponent(category)}/versions`);
    } catch (err) {
      if (asked !== this.asked) return;
      this.body.replaceChildren(el("p", explain(err), "note")); // e.g. no version loaded: the report says why
      return;
    }
    if (asked === this.asked) this.show(category, versions);
  }

  show(category, versions) {
    const list = el("ol", null, "lineage");
    list.setAttribute("aria-label", `Versions of ${category}, the live one first`);
    list.append(...versions.map((v, i) => version(v, i === 0)));
    const live = versions[0];
    const parts = [list];
    if (live && live.parent) {
      const back = el("button", `Roll back to ${live.parent}`, "rollback");
      back.type = "button";
      back.addEventListener("click", () => this.rollback(category, back));
      parts.push(back, el("p", `Serves ${live.parent} again instead of ${live.artifact_id}; what `
        + `${live.artifact_id} learned is then no longer used.`, "note"));
    } else if (live) {
      parts.push(el("p", "The live version was fitted, not updated: there is no earlier version to roll back to.",
        "note"));
    }
    this.body.replaceChildren(...parts);
  }

  async rollback(category, button) {
    button.disabled = true;
    let answer;
    try {
      answer = await call(`/categories/${encodeURIComponent(category)}/rollback`, { method: "POST" }, "reload");
    } catch (err) {
      button.disabled = false;
      fail(explain(err, `Rolling ${category} back`));
      return;
    }
    clearErrors();
    say(`Rolled ${category} back from ${answer.left}: version ${answer.artifact_id} is live again.`);
    this.onRolledBack(category);
  }
}
