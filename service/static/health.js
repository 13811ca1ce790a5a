// Health: whether the server is ready (GET /readyz, read on 503 too) and the state of each
// category (GET /categories): ready, failed (with why) or loading.

import { call } from "./api.js";
import { el } from "./format.js";

async function readiness() {
  const response = await fetch("/readyz");
  return response.json(); // 200 ready, 503 not ready: the same body
}

export class HealthPanel {
  /** ``onCategories(categories)`` with every refresh's list of {name, state, ...}. */
  constructor(onCategories) {
    this.summary = document.getElementById("health-summary");
    this.list = document.getElementById("health-list");
    this.onCategories = onCategories;
  }

  async refresh() {
    let ready;
    let categories;
    try {
      [ready, { categories }] = await Promise.all([readiness(), call("/categories")]);
    } catch {
      this.summary.textContent = "Server unreachable: health unknown.";
      this.summary.className = "health-bad";
      return;
    }
    const serving = categories.filter((c) => c.state === "ready").length;
    const state = ready.status === "ready" ? "Ready" : ready.loading_finished ? "Not ready" : "Loading";
    this.summary.textContent = `${state}: ${serving} of ${categories.length} categories serving.`;
    this.summary.className = ready.status === "ready" ? "health-ok" : "health-bad";
    this.list.replaceChildren(...categories.map((c) => {
      const text = `${c.name}: ${c.state}${c.error ? ` (${c.error})` : ""}`;
      return el("li", text, `state-${c.state}`);
    }));
    this.onCategories(categories);
  }
}
