// A one-name-per-line list field (registry/admin/fields.py): each known-name button adds its name
// on a line of its own, once. Without this script the buttons only show what may be typed.
"use strict";
document.addEventListener("click", (event) => {
  const button = event.target.closest(".vp-list-add");
  if (!button) return;
  const box = button.closest(".vp-list-suggestions");
  const textarea = box && document.getElementById(box.dataset.for);
  if (!textarea) return;
  const names = textarea.value.split("\n").map((line) => line.trim()).filter(Boolean);
  if (!names.includes(button.dataset.name)) names.push(button.dataset.name);
  textarea.value = names.join("\n");
  textarea.dispatchEvent(new Event("change", { bubbles: true }));
});
