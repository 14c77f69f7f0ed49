/* Job page: preview the next fire times while the schedule is typed (validated server-side). */
(function () {
  "use strict";
  var S = window.Sooner;
  var schedule = document.getElementById("schedule");
  var timezone = document.getElementById("timezone");
  var box = document.getElementById("schedule-preview");
  if (!schedule || !box) { return; }
  var url = box.getAttribute("data-url");
  var timer = null, sequence = 0;

  function show(answer) {
    var nodes = [];
    if (!answer.ok) {
      nodes.push(S.el("p", "field-error", answer.error));
    } else {
      nodes.push(S.el("p", "desc", answer.description));
      if (answer.fires_text && answer.fires_text.length) {
        var list = S.el("ol", "fires");
        answer.fires_text.forEach(function (text) { list.appendChild(S.el("li", null, text)); });
        nodes.push(list);
      }
    }
    box.replaceChildren.apply(box, nodes);
    box.setAttribute("data-state", answer.ok ? "ok" : "error");
  }

  function update() {
    var mine = ++sequence;
    var query = "?schedule=" + encodeURIComponent(schedule.value) + "&tz=" + encodeURIComponent(timezone.value);
    box.setAttribute("data-state", "loading");
    S.getJSON(url + query).then(function (answer) {
      if (mine === sequence) { show(answer); }  // ignore answers to older keystrokes
    }).catch(function (error) { if (mine === sequence) { show({ ok: false, error: error.message }); } });
  }

  function later() { clearTimeout(timer); timer = setTimeout(update, 150); }
  schedule.addEventListener("input", later);
  timezone.addEventListener("input", later);
  timezone.addEventListener("change", later);
})();
