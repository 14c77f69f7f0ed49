/* One Socket.IO connection per page (vendored client, same origin, session cookie auth).
   While the server says the database is unreachable (store_status {ok: false}) a banner shows;
   when it is back the banner goes and onConnect runs again, so pages join what they follow again
   (joining is idempotent; run.js sends the last seq it has). A connection the server refused only
   for now (database down, throttled) is retried here: socket.io-client does not retry those itself. */
(function () {
  "use strict";
  var Sooner = window.Sooner = window.Sooner || {};
  var DOWN = "Database unreachable — retrying; output will continue.";

  /* banner(true) shows the "database unreachable" banner, banner(false) clears it. */
  function banner(show) {
    var node = document.getElementById("store-banner");
    if (!show) { if (node) { node.hidden = true; } return; }
    if (!node) {
      node = document.createElement("p");
      node.id = "store-banner";
      node.className = "flash flash-error";
      node.setAttribute("role", "alert");
      var main = document.getElementById("main") || document.body;
      main.insertBefore(node, main.firstChild);
    }
    node.textContent = DOWN;
    node.hidden = false;
  }
  Sooner.storeBanner = banner;

  Sooner.connectLive = function (onConnect) {
    var indicator = document.getElementById("live");
    function show(state) { if (indicator) { indicator.setAttribute("data-state", state); indicator.title = "Live updates: " + state; } }
    if (typeof io === "undefined") { show("offline"); return null; }
    var socket = io({ path: Sooner.root() + "/socket.io", transports: ["websocket", "polling"], reconnectionDelayMax: 5000 });
    var retryMs = 1000, retryTimer = null;
    socket.on("connect", function () { retryMs = 1000; show("live"); banner(false); onConnect(socket); });
    socket.on("disconnect", function () { show("offline"); });
    socket.on("connect_error", function (error) {
      show("offline");
      var data = (error && error.data) || {};
      if (data.code === "store_unavailable") { banner(true); }
      if (!socket.active && (data.retry || data.retry_after_s)) {
        var wait = data.retry_after_s ? data.retry_after_s * 1000 : retryMs;
        retryMs = Math.min(retryMs * 2, 10000);
        clearTimeout(retryTimer);
        retryTimer = setTimeout(function () { socket.connect(); }, wait);
      }
    });
    socket.on("store_status", function (status) {
      if (!status) { return; }
      if (status.ok) {
        banner(false);
        if (socket.connected) { onConnect(socket); }
      } else {
        banner(true);
      }
    });
    return socket;
  };
})();
