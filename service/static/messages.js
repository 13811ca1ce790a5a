// The page's two live regions: progress in #status (polite), failures in #errors (assertive).

const statusBox = () => document.getElementById("status");
const errorBox = () => document.getElementById("errors");

export function say(text) {
  statusBox().textContent = text;
}

export function fail(text) {
  const p = document.createElement("p");
  p.textContent = text;
  errorBox().replaceChildren(p);
}

export function clearErrors() {
  errorBox().replaceChildren();
}
