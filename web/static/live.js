/* One Socket.IO connection per page (vendored client, same origin, session cookie auth). */
(function () {
  "use strict";
  var Sooner = window.Sooner = window.Sooner || {};

  Sooner.connectLive = function (onConnect) {
    var indicator = document.getElementById("live");
    function show(state) { if (indicator) { indicator.setAttribute("data-state", state); indicator.title = "Live updates: " + state; } }
    if (typeof io === "undefined") { show("offline"); return null; }
    var socket = io({ path: Sooner.root() + "/socket.io", transports: ["websocket", "polling"], reconnectionDelayMax: 5000 });
    socket.on("connect", function () { show("live"); onConnect(socket); });
    socket.on("disconnect", function () { show("offline"); });
    socket.on("connect_error", function () { show("offline"); });
    return socket;
  };
})();
