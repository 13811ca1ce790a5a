// Getting images into the page: the file input (keyboard: Tab to it, Enter or Space), a drop
// zone, and Ctrl+V with an image on the clipboard. Every way ends in ``onFiles(files)``.

export class Picker {
  constructor(onFiles) {
    const input = document.getElementById("files");
    const drop = document.getElementById("drop");
    input.addEventListener("change", () => {
      if (input.files.length) onFiles([...input.files]);
      input.value = ""; // choosing the same file again is a new inspection
    });
    drop.addEventListener("dragover", (event) => {
      event.preventDefault();
      drop.classList.add("dragging");
    });
    drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
    drop.addEventListener("drop", (event) => {
      event.preventDefault();
      drop.classList.remove("dragging");
      const files = [...event.dataTransfer.files];
      if (files.length) onFiles(files);
    });
    document.addEventListener("paste", (event) => {
      const files = [...event.clipboardData.files];
      if (!files.length) return;
      event.preventDefault();
      onFiles(files.map((f, i) => (f.name ? f : new File([f], `pasted-${i + 1}.png`, { type: f.type }))));
    });
  }
}
