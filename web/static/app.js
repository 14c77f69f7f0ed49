/* Shared helpers for every page: CSRF-aware fetch, relative times, small form conveniences.
   Data from the server is only ever inserted with textContent, never as HTML. */
(function () {
  "use strict";
  var Sooner = window.Sooner = window.Sooner || {};

  /* The URL prefix when served under a path behind a proxy (X-Forwarded-Prefix), else "". */
  Sooner.root = function () {
    var meta = document.querySelector('meta[name="script-root"]');
    return meta ? meta.getAttribute("content") : "";
  };

  Sooner.csrf = function () {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  };

  /* POST a form (FormData or object) and expect JSON back. */
  Sooner.post = function (url, data) {
    var body = data instanceof FormData ? data : new FormData();
    if (!(data instanceof FormData)) {
      Object.keys(data || {}).forEach(function (k) { body.append(k, data[k]); });
    }
    return fetch(url, {
      method: "POST", body: body, credentials: "same-origin",
      headers: { "X-CSRF-Token": Sooner.csrf(), "X-Requested-With": "fetch", "Accept": "application/json" }
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (json) {
        if (!r.ok) { throw new Error(json.error || ("HTTP " + r.status)); }
        return json;
      });
    });
  };

  Sooner.getJSON = function (url) {
    return fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json", "X-Requested-With": "fetch" } })
      .then(function (r) {
        return r.json().then(function (json) {
          if (!r.ok) { throw new Error(json.error || ("HTTP " + r.status)); }
          return json;
        });
      });
  };

  /* Create an element with a class and text (text via textContent: safe for any string). */
  Sooner.el = function (tag, className, text) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text !== undefined && text !== null) { node.textContent = String(text); }
    return node;
  };

  Sooner.duration = function (seconds) {
    if (seconds === null || seconds === undefined || isNaN(seconds)) { return "-"; }
    if (seconds < 60) { return seconds.toFixed(1) + "s"; }
    var s = Math.floor(seconds), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
    return h ? h + "h" + String(m).padStart(2, "0") + "m" : m + "m" + String(r).padStart(2, "0") + "s";
  };

  Sooner.ago = function (date, now) {
    var seconds = Math.max(0, Math.round(((now || Date.now()) - date.getTime()) / 1000));
    var units = [["d", 86400], ["h", 3600], ["m", 60]];
    for (var i = 0; i < units.length; i++) {
      if (seconds >= units[i][1]) { return Math.floor(seconds / units[i][1]) + units[i][0] + " ago"; }
    }
    return seconds + "s ago";
  };

  Sooner.until = function (date, now) {
    var seconds = Math.round((date.getTime() - (now || Date.now())) / 1000);
    if (seconds <= 0) { return "now"; }
    var units = [["d", 86400], ["h", 3600], ["m", 60]];
    for (var i = 0; i < units.length; i++) {
      if (seconds >= units[i][1]) { return "in " + Math.floor(seconds / units[i][1]) + units[i][0]; }
    }
    return "in " + seconds + "s";
  };

  /* <time datetime=... data-ago> shows "5m ago", <time data-until> "in 5m"; the title holds local time. */
  Sooner.refreshTimes = function (root) {
    var now = Date.now();
    (root || document).querySelectorAll("time[datetime]").forEach(function (node) {
      var value = node.getAttribute("datetime");
      if (!value) { return; }
      var date = new Date(value);
      if (isNaN(date.getTime())) { return; }
      if (node.hasAttribute("data-ago")) { node.textContent = Sooner.ago(date, now); }
      else if (node.hasAttribute("data-until")) { node.textContent = Sooner.until(date, now); }
      node.title = date.toLocaleString();
    });
  };

  document.addEventListener("DOMContentLoaded", function () {
    Sooner.refreshTimes();
    setInterval(function () { Sooner.refreshTimes(); }, 5000);
    document.querySelectorAll("select[data-autosubmit]").forEach(function (select) {
      select.addEventListener("change", function () { select.form.submit(); });
    });
  });
})();
