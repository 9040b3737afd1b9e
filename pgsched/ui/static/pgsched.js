// pgsched dashboard: the little behaviour htmx does not cover. A bulk button asks before it
// acts, naming how many runs are selected; with none selected it does nothing.
document.addEventListener("click", function (event) {
  var button = event.target.closest("button[data-confirm]");
  if (!button) return;
  var picked = document.querySelectorAll(".pick:checked").length;
  if (picked === 0 || !window.confirm(button.dataset.confirm.replace("{n}", picked))) {
    event.preventDefault();
  }
});
