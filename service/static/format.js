// Numbers and times as people read them.

/** A score or threshold: whole numbers with separators from 100 up, else 3 significant digits. */
export function num(x) {
  if (x === null || x === undefined || !Number.isFinite(x)) return "–";
  if (Math.abs(x) >= 100) return Math.round(x).toLocaleString("en-US");
  return Number(x.toPrecision(3)).toString();
}

export function percent(x) {
  return x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)} %`;
}

/** An ISO time as the local wall-clock time (with the date when it is not today). */
export function clock(iso) {
  const t = new Date(iso);
  const time = t.toLocaleTimeString("en-GB", { hour12: false });
  return t.toDateString() === new Date().toDateString() ? time : `${t.toLocaleDateString("en-GB")} ${time}`;
}

/** A "nice" number at or above x (1, 2, 2.5 or 5 times a power of ten), for slider ranges. */
export function niceCeil(x) {
  if (!(x > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(x));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= x) return m * p;
  return 10 * p;
}

/** An element with text content. */
export function el(tag, text, className) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = text;
  if (className) e.className = className;
  return e;
}
