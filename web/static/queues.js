/* Queue browser: selection and confirmation of bulk actions, filter rows, capped match counts and
   per-status counts. Text from the server is only ever inserted with textContent. */
(function () {
  "use strict";
  var Sooner = window.Sooner || {};

  function getJSON(url) {
    if (Sooner.getJSON) { return Sooner.getJSON(url); }
    return fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json", "X-Requested-With": "fetch" } })
      .then(function (r) { return r.json().then(function (j) { if (!r.ok) { throw new Error(j.error || r.status); } return j; }); });
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  }

  function number(n) { return Number(n).toLocaleString("en-US"); }

  /* -- bulk selection ------------------------------------------------------ */
  function setupBulk(form) {
    var all = document.getElementById("q-all");
    var label = document.getElementById("q-selected");
    var apply = document.getElementById("q-apply");
    var action = form.querySelector('select[name="action"]');
    var status = form.querySelector('input[name="status"]');
    var single = apply && apply.hasAttribute("data-single");
    function picks() { return Array.prototype.slice.call(form.querySelectorAll("input.q-pick")); }
    function chosen() { return single ? 1 : picks().filter(function (box) { return box.checked; }).length; }
    function refresh() {
      var n = chosen();
      if (label) { label.textContent = n + " selected"; }
      if (apply) { apply.disabled = n === 0; }
      if (all) { all.checked = n > 0 && n === picks().length; all.indeterminate = n > 0 && n < picks().length; }
      if (status && action) { status.hidden = action.value !== "set_status"; }
    }
    if (all) {
      all.addEventListener("change", function () {
        picks().forEach(function (box) { box.checked = all.checked; });
        refresh();
      });
    }
    form.addEventListener("change", refresh);
    form.addEventListener("submit", function (event) {
      var n = chosen();
      var what = action ? action.options[action.selectedIndex].text : "Change";
      if (action && action.value === "set_status" && status && !status.value.trim()) {
        event.preventDefault();
        status.focus();
        return;
      }
      var target = action && action.value === "set_status" ? " to \u201c" + status.value.trim() + "\u201d" : "";
      var text = what + target + " for " + n + " entr" + (n === 1 ? "y" : "ies") + "?" +
        (action && action.value === "delete" ? " This cannot be undone." : "");
      if (n === 0 || !window.confirm(text)) { event.preventDefault(); return; }
      var confirmed = form.querySelector('input[name="confirm"]') || el("input");
      confirmed.type = "hidden"; confirmed.name = "confirm"; confirmed.value = "yes";
      form.appendChild(confirmed);
    });
    refresh();
  }

  /* -- filter rows ------------------------------------------------------------- */
  function setupFilters(form) {
    var rows = document.getElementById("q-rows");
    var add = document.getElementById("q-add-row");
    if (!rows || !add) { return; }
    add.hidden = false;
    // The blank row after the filters is for browsers without scripts; here "+ filter" adds one.
    Array.prototype.forEach.call(rows.querySelectorAll(".q-row.q-blank"), function (row) { row.remove(); });
    // A row without a field is not sent, so the address does not fill with f=&op=eq&v=.
    form.addEventListener("submit", function () {
      Array.prototype.forEach.call(rows.querySelectorAll(".q-row"), function (row) {
        if (row.querySelector('select[name="f"]').value) { return; }
        Array.prototype.forEach.call(row.querySelectorAll("select, input"), function (field) { field.disabled = true; });
      });
    });
    add.addEventListener("click", function () {
      var last = rows.querySelector(".q-row:last-child");
      var copy = last.cloneNode(true);
      copy.querySelector('select[name="f"]').value = "";
      copy.querySelector('input[name="v"]').value = "";
      rows.appendChild(copy);
      copy.querySelector('select[name="f"]').focus();
    });
    rows.addEventListener("click", function (event) {
      if (!event.target.classList.contains("q-remove")) { return; }
      var row = event.target.closest(".q-row");
      if (rows.querySelectorAll(".q-row").length > 1) { row.remove(); } else {
        row.querySelector('select[name="f"]').value = "";
        row.querySelector('input[name="v"]').value = "";
      }
    });
  }

  /* -- counts ---------------------------------------------------------------------- */
  function fillMatching(node) {
    getJSON(node.getAttribute("data-count-url")).then(function (reply) {
      node.textContent = (reply.more ? "more than " + number(reply.cap) : number(reply.count)) + " matching";
    }).catch(function (error) {
      node.textContent = "not counted";
      node.title = error.message;
    });
  }

  function fillStats(rows) {
    var row = rows.shift();
    if (!row) { return; }
    var cell = row.querySelector(".q-by-status");
    if (!cell || !cell.querySelector(".q-pending-stats")) { fillStats(rows); return; }
    getJSON(row.getAttribute("data-stats-url")).then(function (reply) {
      cell.textContent = "";
      var link = row.querySelector("td.name a");
      Object.keys(reply.by_status).sort().forEach(function (status) {
        var chip = el("a", "q-chip");
        chip.href = link.getAttribute("href") + "?status=" + encodeURIComponent(status);
        chip.appendChild(el("span", "badge st-" + status.replace(/[^\w-]/g, "_"), status));
        chip.appendChild(document.createTextNode(" " + number(reply.by_status[status])));
        cell.appendChild(chip);
      });
    }).catch(function (error) {
      cell.textContent = "not counted";
      cell.title = error.message;
    }).then(function () { fillStats(rows); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var bulk = document.getElementById("q-bulk");
    if (bulk && bulk.querySelector('select[name="action"]')) { setupBulk(bulk); }
    var filters = document.getElementById("q-filters");
    if (filters) { setupFilters(filters); }
    var matching = document.getElementById("q-matching");
    if (matching) { fillMatching(matching); }
    fillStats(Array.prototype.slice.call(document.querySelectorAll("tr[data-stats-url]")));
  });
})();
