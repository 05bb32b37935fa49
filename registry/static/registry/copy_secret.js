// The new API key's panel (admin/registry/apikey/secret.html): "Copy" puts the secret on the
// clipboard. navigator.clipboard exists only in secure contexts (https, localhost); elsewhere,
// and where it is refused, the input is selected and copied the old way.
"use strict";
document.addEventListener("click", async (event) => {
  const button = event.target.closest("[data-copy-target]");
  if (!button) return;
  const input = document.getElementById(button.dataset.copyTarget);
  const status = document.getElementById(button.dataset.copyStatus);
  let copied = false;
  try {
    await navigator.clipboard.writeText(input.value);
    copied = true;
  } catch (error) {
    input.focus();
    input.select();
    try {
      copied = document.execCommand("copy");
    } catch (fallbackError) {
      copied = false;
    }
  }
  if (status) status.textContent = copied ? "Copied." : "Select the key and copy it (Ctrl+C).";
});
document.addEventListener("focusin", (event) => {
  if (event.target.matches && event.target.matches("input[readonly][data-select-on-focus]")) event.target.select();
});
