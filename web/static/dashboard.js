/* Dashboard: re-render the live sections from each "dashboard" snapshot (DOM API + textContent only). */
(function () {
  "use strict";
  var S = window.Sooner;
  var el = S.el;

  function runUrl(id) { return S.root() + "/runs/" + encodeURIComponent(id); }

  function link(href, text, className) { var a = el("a", className, text); a.href = href; return a; }

  function timeNode(iso, mode) {
    var t = el("time");
    if (iso) { t.setAttribute("datetime", iso); t.setAttribute(mode || "data-ago", ""); }
    return t;
  }

  function badge(status) { return el("span", "badge st-" + String(status).replace(/[^a-z_]/g, ""), String(status).replace(/_/g, " ")); }

  function progressNode(run) {
    var box = el("div", "progress"), bar = document.createElement("progress");
    bar.max = 100;
    bar.value = run.percent === null || run.percent === undefined ? 0 : run.percent;
    if (run.percent === null || run.percent === undefined) { bar.setAttribute("data-empty", ""); box.hidden = true; }
    box.appendChild(bar);
    var text = "";
    if (run.percent !== null && run.percent !== undefined && run.progress) {
      text = run.progress.current + " / " + (run.progress.max === undefined ? 100 : run.progress.max) + " (" + Math.round(run.percent) + "%)";
    }
    box.appendChild(el("span", "progress-text", text));
    return box;
  }

  function renderRunning(runs) {
    var list = document.getElementById("running");
    var items = runs.map(function (run) {
      var li = el("li", "run-item");
      li.setAttribute("data-run", run.id);
      li.appendChild(link(runUrl(run.id), run.ref || run.job, "job"));
      var meta = el("span", "meta", "on " + (run.worker || "?") + " · started ");
      meta.appendChild(timeNode(run.started_at));
      li.appendChild(meta);
      li.appendChild(progressNode(run));
      return li;
    });
    if (!items.length) { items = [el("li", "empty", "Nothing running.")]; }
    list.replaceChildren.apply(list, items);
    document.getElementById("running-count").textContent = String(runs.length);
  }

  /* Between snapshots the server sends "run" for the runs the last one showed running: their progress. */
  function updateRunning(run) {
    if (!run || run.status !== "running") { return; }
    var items = document.querySelectorAll("#running li[data-run]");
    for (var i = 0; i < items.length; i++) {
      var old = items[i].querySelector(".progress");
      if (items[i].getAttribute("data-run") === run.id && old) { items[i].replaceChild(progressNode(run), old); }
    }
  }

  function renderRecent(runs) {
    var body = document.getElementById("recent");
    var rows = runs.map(function (run) {
      var tr = el("tr"), td;
      td = el("td"); td.appendChild(link(runUrl(run.id), run.ref || run.job)); tr.appendChild(td);
      td = el("td"); td.appendChild(badge(run.status)); tr.appendChild(td);
      td = el("td", "hide-sm"); td.appendChild(timeNode(run.queued_at)); tr.appendChild(td);
      if (run.waiting) {  // a queued run: when it should start, and why it waits
        td = el("td"); var eta = el("span", "eta", run.waiting.eta_text); eta.title = run.waiting.message;
        td.appendChild(eta); tr.appendChild(td);
      } else { tr.appendChild(el("td", null, S.duration(run.duration_s))); }
      return tr;
    });
    if (!rows.length) { var tr = el("tr", "empty"), td = el("td", null, "No runs yet."); td.colSpan = 4; tr.appendChild(td); rows = [tr]; }
    body.replaceChildren.apply(body, rows);
  }

  function renderWorkers(workers) {
    var list = document.getElementById("workers");
    var items = workers.map(function (w) {
      var li = el("li");
      li.appendChild(el("span", "health h-" + String(w.health).replace(/[^a-z]/g, ""), w.health));
      li.appendChild(document.createTextNode(" "));
      li.appendChild(el("strong", null, w.name));
      li.appendChild(el("span", "meta", " " + (w.host || "") + " · " + w.running + "/" + (w.capacity || "?") + " busy"));
      return li;
    });
    if (!items.length) { items = [el("li", "empty", "No worker has registered. Start one: sooner worker -n NAME")]; }
    list.replaceChildren.apply(list, items);
  }

  function renderDeploy(deploy) {
    var box = document.getElementById("deploy");
    if (!deploy) { return; }
    var p1 = el("p", "deploy-line"), p2 = el("p", "meta", deploy.message || "");
    p1.appendChild(el("span", "mono", (deploy.commit || "").slice(0, 8)));
    p1.appendChild(document.createTextNode(" by "));
    var author = el("span", "author", deploy.author_name || deploy.author || "?");
    author.title = deploy.author || "";
    p1.appendChild(author);
    p1.appendChild(document.createTextNode(" · "));
    p1.appendChild(timeNode(deploy.time));
    box.replaceChildren(p1, p2);
  }

  function render(snapshot) {
    renderRunning(snapshot.running || []);
    var queued = (snapshot.queued || []).length;
    document.getElementById("queued-count").textContent = queued >= 20 ? "20+" : String(queued);
    renderRecent(snapshot.recent || []);
    renderWorkers(snapshot.workers || []);
    renderDeploy(snapshot.deploy);
    S.refreshTimes(document.getElementById("dashboard"));
  }

  var socket = S.connectLive(function (sock) { sock.emit("join_dashboard", {}); });
  if (socket) { socket.on("dashboard", render); socket.on("run", updateRunning); }
})();
