// The defect dialog: a recent inspection's image, larger, where the operator may drag a box
// around the defect (kept in the original image's pixels, which the server expects), and an
// optional defect type. Both are optional: "Send as defect" without them confirms the part.

const clamp = (v) => Math.min(1, Math.max(0, v));

export class DefectDialog {
  constructor() {
    this.dialog = document.getElementById("defect-dialog");
    this.area = document.getElementById("defect-area");
    this.image = document.getElementById("defect-image");
    this.frame = document.getElementById("defect-box");
    this.words = document.getElementById("defect-box-text");
    this.type = document.getElementById("defect-type");
    this.item = null;
    this.from = null; // where a drag started, as fractions of the image
    document.getElementById("defect-clear").addEventListener("click", () => this.setBox(null));
    this.area.addEventListener("pointerdown", (e) => this.start(e));
    this.area.addEventListener("pointermove", (e) => this.from && this.drag(e));
    this.area.addEventListener("pointerup", (e) => this.stop(e));
    this.area.addEventListener("pointercancel", () => (this.from = null));
  }

  /** Ask about ``item`` (a recent item: thumbnail, filename, width, height); resolves to
   * ``{box: [x0, y0, x1, y1] | null, defectType}`` or null when cancelled. */
  ask(item) {
    this.item = item;
    this.sized = Boolean(item.width && item.height);
    const name = item.filename || "unnamed image";
    this.image.src = `data:image/jpeg;base64,${item.thumbnail}`;
    this.image.alt = `${name}: drag on it to box the defect`;
    document.getElementById("defect-what").textContent = this.sized
      ? `${name}, ${item.width} x ${item.height} px. Drag on the image to box the defect (optional).`
      : `${name}: its size was not recorded, so no box can be drawn; it is confirmed as a whole.`;
    this.area.classList.toggle("drawable", this.sized);
    this.type.value = "";
    this.setBox(null);
    this.dialog.returnValue = "";
    return new Promise((resolve) => {
      this.dialog.addEventListener("close", () => resolve(this.dialog.returnValue === "send"
        ? { box: this.box, defectType: this.type.value.trim() } : null), { once: true });
      this.dialog.showModal();
    });
  }

  /** Where the pointer is, as fractions of the shown image (clamped to it). */
  at(event) {
    const r = this.image.getBoundingClientRect();
    return [clamp((event.clientX - r.left) / r.width), clamp((event.clientY - r.top) / r.height)];
  }

  start(event) {
    if (!this.sized || event.button !== 0) return;
    event.preventDefault();
    this.area.setPointerCapture(event.pointerId);
    this.from = this.at(event);
    this.drag(event);
  }

  stop(event) {
    if (!this.from) return;
    this.drag(event);
    this.from = null;
  }

  /** The box from the drag's start to the pointer, in the original image's pixels. */
  drag(event) {
    const [a, b] = [this.from, this.at(event)];
    const { width, height } = this.item;
    const box = [Math.min(a[0], b[0]) * width, Math.min(a[1], b[1]) * height,
      Math.max(a[0], b[0]) * width, Math.max(a[1], b[1]) * height].map(Math.round);
    this.setBox(box[2] > box[0] && box[3] > box[1] ? box : null);
  }

  setBox(box) {
    this.box = box;
    this.frame.hidden = box === null;
    if (box === null) {
      this.words.textContent = "No box: the whole image is confirmed as defective.";
      return;
    }
    const { width, height } = this.item;
    const [x0, y0, x1, y1] = box;
    const pct = (v, of) => `${(100 * v) / of}%`;
    Object.assign(this.frame.style, { left: pct(x0, width), top: pct(y0, height),
      width: pct(x1 - x0, width), height: pct(y1 - y0, height) });
    this.words.textContent = `Box: x ${x0} to ${x1}, y ${y0} to ${y1} (${x1 - x0} x ${y1 - y0} px of the `
      + `${width} x ${height} px image).`;
  }
}
