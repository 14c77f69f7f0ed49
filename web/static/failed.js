// The Failed page: a "select all" box for the bulk buttons (the page works without it).
(function () {
  "use strict";
  document.addEventListener("DOMContentLoaded", function () {
    var all = document.getElementById("select-all");
    if (!all) { return; }
    var boxes = document.querySelectorAll('#failed-runs input[name="run"]');
    all.hidden = boxes.length === 0;
    all.addEventListener("change", function () {
      boxes.forEach(function (box) { box.checked = all.checked; });
    });
  });
})();
