// Progressive enhancement only: copy buttons. Every page works without this
// file (the values are in <details> to open and select by hand); with it, the
// hidden copy buttons appear and copy their element's text to the clipboard.
"use strict";

function announce(id, text) {
  const status = document.querySelector(`[data-copied-for="${id}"]`);
  if (status) status.textContent = text;
}

function selectText(element) {
  const details = element.closest("details");
  if (details) details.open = true;
  const range = document.createRange();
  range.selectNodeContents(element);
  const selection = window.getSelection();
  selection.removeAllRanges();
  selection.addRange(range);
}

async function copy(button) {
  const id = button.dataset.copy;
  const source = document.getElementById(id);
  if (!source) return;
  try {
    await navigator.clipboard.writeText(source.textContent);
    announce(id, "Copied to the clipboard.");
  } catch {
    // No clipboard access (an old browser, a denied permission): select the
    // text so that Ctrl+C / Cmd+C copies it.
    selectText(source);
    announce(id, "Selected: press Ctrl+C (Cmd+C on a Mac) to copy.");
  }
}

// "Show proxy key" becomes "Hide proxy key" while its <details> is open.
function relabel(details) {
  const summary = details.querySelector(":scope > summary");
  if (summary) summary.textContent = summary.textContent.replace(/^(Show|Hide)/,
    details.open ? "Hide" : "Show");
}

document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("button.copy[data-copy]")) {
    button.hidden = false;
    button.addEventListener("click", () => copy(button));
  }
  for (const details of document.querySelectorAll("details")) {
    details.addEventListener("toggle", () => relabel(details));
  }
});
