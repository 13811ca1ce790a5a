// Updating the model from the waiting confirmations: the button, the running update's stage and
// time (GET .../update every second while it runs) and its result, the new version or why not.

import { call, explain } from "./api.js";
import { clearErrors, fail, say } from "./messages.js";

const POLL_MS = 1000;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function seconds(job) {
  const end = job.finished_at ?? Date.now() / 1000;
  return `${Math.max(0, end - job.started_at).toFixed(0)} s`;
}

function describe(job) {
  const learns = `${job.confirmations} confirmation${job.confirmations === 1 ? "" : "s"}`;
  if (job.state === "running") return `Updating: ${job.stage} · ${seconds(job)} · learning ${learns}.`;
  if (job.state === "done") {
    return `Update done in ${seconds(job)}: version ${job.artifact_id} is live; it learned ${learns} `
      + `(the version before: ${job.parent}).`;
  }
  return `Update failed after ${seconds(job)}: ${job.error}. Version ${job.parent} keeps serving.`;
}

export class UpdatePanel {
  /** ``onFinished(category, job)`` when an update this page saw running is done or failed. */
  constructor(onFinished) {
    this.onFinished = onFinished;
    this.button = document.getElementById("update-model");
    this.progress = document.getElementById("update-progress");
    this.state = document.getElementById("update-state");
    this.button.addEventListener("click", () => this.start());
    Object.assign(this, { category: null, pending: 0, running: false, asked: 0 });
  }

  setPending(count) {
    this.pending = count;
    this.enable();
  }

  enable() {
    this.button.disabled = !this.category || this.running || this.pending === 0;
  }

  /** Another category: its latest update (404 no_update: none since the server started). */
  async setCategory(name) {
    const asked = ++this.asked;
    Object.assign(this, { category: name, running: false });
    this.show(null);
    if (!name) return;
    let job;
    try {
      job = await call(`/categories/${encodeURIComponent(name)}/update`);
    } catch (err) {
      if (asked === this.asked && err.code !== "no_update") fail(explain(err, `Reading the update of ${name}`));
      return;
    }
    if (asked === this.asked) await this.follow(job, asked);
  }

  async start() {
    const { category, asked } = this;
    this.running = true;
    this.enable();
    let job;
    try {
      job = await call(`/categories/${encodeURIComponent(category)}/update`, { method: "POST" }, "reload");
    } catch (err) {
      this.running = false;
      this.enable();
      fail(explain(err, `Updating the model of ${category}`));
      if (err.code === "update_running" && asked === this.asked) await this.setCategory(category); // follow it
      return;
    }
    clearErrors();
    say(`Updating the model of ${category} from ${job.confirmations} confirmations…`);
    if (asked === this.asked) await this.follow(job, asked);
  }

  /** Show ``job`` and, while it runs, poll it; the end is announced when this page saw it run. */
  async follow(job, asked) {
    const { category } = this;
    const sawRunning = job.state === "running";
    while (job.state === "running") {
      this.running = true;
      this.show(job);
      await sleep(POLL_MS);
      try {
        job = await call(`/categories/${encodeURIComponent(category)}/update`);
      } catch (err) { // keeps polling: the server may be busy
        if (asked === this.asked) fail(explain(err, `Following the update of ${category}`));
      }
      if (asked !== this.asked) return; // another category was chosen
    }
    this.running = false;
    this.show(job);
    if (!sawRunning) return;
    if (job.state === "done") say(describe(job));
    else fail(`Updating the model of ${category}: ${describe(job)}`);
    this.onFinished(category, job);
  }

  show(job) {
    this.progress.hidden = !job || job.state !== "running";
    this.state.dataset.state = job ? job.state : "";
    this.state.textContent = job ? describe(job) : "";
    this.enable();
  }
}
