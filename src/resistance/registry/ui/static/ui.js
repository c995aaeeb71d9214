// "Copy link" buttons: the one script of the dashboard; pages work without it
// (the link is in a read-only field to select and copy by hand).
document.addEventListener("click", async (event) => {
  const button = event.target.closest("button.copy");
  if (!button) return;
  const field = document.getElementById(button.dataset.copy);
  const status = button.parentElement.querySelector(".copied");
  try {
    await navigator.clipboard.writeText(field.value);
    if (status) status.textContent = "Copied.";
  } catch (err) {
    field.select();
    if (status) status.textContent = "Selected: press Ctrl+C to copy.";
  }
});
