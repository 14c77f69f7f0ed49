/* Jobs list: enable/disable without leaving the page, and filter rows as you type. */
(function () {
  "use strict";
  var S = window.Sooner;

  document.querySelectorAll("form.toggle-form").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var button = form.querySelector("button.switch"), action = form.querySelector('input[name="action"]');
      button.disabled = true;
      S.post(form.getAttribute("action"), new FormData(form)).then(function (answer) {
        var on = !!answer.enabled;
        button.setAttribute("aria-checked", on ? "true" : "false");
        action.value = on ? "disable" : "enable";
        var row = form.closest("tr");
        row.classList.remove("is-new");
        var badge = row.querySelector(".badge.new");
        if (badge) { badge.remove(); }
      }).catch(function (error) { alert("Could not change the job: " + error.message); })
        .then(function () { button.disabled = false; });
    });
  });

  var search = document.getElementById("job-search");
  if (search) {
    search.addEventListener("input", function () {
      var needle = search.value.trim().toLowerCase();
      document.querySelectorAll("#jobs-table tbody tr[data-name]").forEach(function (row) {
        row.hidden = needle !== "" && row.getAttribute("data-name").toLowerCase().indexOf(needle) < 0;
      });
    });
  }
})();
