/* Run page: render the embedded output tail, then follow the live tail over Socket.IO.
   The page remembers the last seq it has; on every (re)connect, and when the database is back
   after an outage (live.js), it asks for what came after, and ignores anything it already has,
   so lines are never missed or repeated. */
(function () {
  "use strict";
  var S = window.Sooner;
  var out = document.getElementById("output");
  if (!out) { return; }
  var runId = out.getAttribute("data-run");
  var outputUrl = out.getAttribute("data-output-url");
  var initial = JSON.parse(document.getElementById("initial").textContent);
  var loadEarlier = document.getElementById("load-earlier");
  var follow = document.getElementById("follow");
  var wrap = document.getElementById("wrap");
  var empty = document.getElementById("output-empty");
  var MAX_CHUNKS_IN_DOM = 5000;
  var lastSeq = -1, firstSeq = null;
  var states = {};

  function streamClass(stream) { return "c s-" + String(stream || "stdout").replace(/[^a-z]/g, ""); }

  function chunkNode(chunk, stateMap) {
    var stream = String(chunk.stream || "stdout");
    var span = document.createElement("span");
    span.className = streamClass(stream);
    span.setAttribute("data-seq", String(chunk.seq));
    if (!stateMap[stream]) { stateMap[stream] = S.ansi.state(); }
    S.ansi.render(span, String(chunk.text || ""), stateMap[stream]);
    return span;
  }

  function nearBottom() { return out.scrollHeight - out.scrollTop - out.clientHeight < 40; }

  function append(chunks) {
    var stick = follow.checked;
    var fragment = document.createDocumentFragment(), added = 0;
    chunks.forEach(function (chunk) {
      if (typeof chunk.seq !== "number" || chunk.seq <= lastSeq) { return; }  // already shown
      fragment.appendChild(chunkNode(chunk, states));
      lastSeq = chunk.seq;
      if (firstSeq === null) { firstSeq = chunk.seq; }
      added++;
    });
    if (!added) { return; }
    out.appendChild(fragment);
    trim();
    out.setAttribute("data-last-seq", String(lastSeq));
    empty.hidden = true;
    if (stick) { out.scrollTop = out.scrollHeight; }
  }

  function trim() {
    // Keep the DOM bounded on huge outputs; trimmed chunks come back with "load earlier".
    var extra = out.childElementCount - MAX_CHUNKS_IN_DOM;
    while (extra-- > 0 && out.firstElementChild) { out.removeChild(out.firstElementChild); }
    var first = out.querySelector(".c[data-seq]");
    if (first && Number(first.getAttribute("data-seq")) !== firstSeq) {
      firstSeq = Number(first.getAttribute("data-seq"));
      loadEarlier.hidden = false;
    }
  }

  function prepend(chunks, more) {
    var stateMap = {}, fragment = document.createDocumentFragment();
    var older = chunks.filter(function (c) { return firstSeq === null || c.seq < firstSeq; });
    older.forEach(function (chunk) { fragment.appendChild(chunkNode(chunk, stateMap)); });
    var height = out.scrollHeight;
    out.insertBefore(fragment, out.firstChild);
    out.scrollTop += out.scrollHeight - height;  // keep what the reader was looking at in place
    if (older.length) { firstSeq = older[0].seq; }
    loadEarlier.hidden = !more;
  }

  function gap(text) {
    out.appendChild(S.el("span", "gap", text));
  }

  loadEarlier.addEventListener("click", function () {
    loadEarlier.disabled = true;
    S.getJSON(outputUrl + "?before=" + encodeURIComponent(firstSeq === null ? lastSeq + 1 : firstSeq))
      .then(function (page) { prepend(page.chunks, page.more); })
      .catch(function (error) { gap("could not load earlier output: " + error.message); })
      .then(function () { loadEarlier.disabled = false; });
  });
  wrap.addEventListener("change", function () { out.classList.toggle("wrap", wrap.checked); });
  out.addEventListener("scroll", function () { follow.checked = nearBottom(); });

  /* status, progress and facts */
  var statusBox = document.getElementById("run-status");
  var progress = document.querySelector("#run-progress progress");
  var progressText = document.querySelector("#run-progress .progress-text");
  var durationBox = document.getElementById("run-duration");
  var startedAt = null, finished = false;

  function setText(id, text) { var node = document.getElementById(id); if (node) { node.textContent = text; } }

  function updateRun(run) {
    if (!run || run.id !== runId) { return; }
    var badge = S.el("span", "badge st-" + String(run.status).replace(/[^a-z_]/g, ""), String(run.status).replace(/_/g, " "));
    statusBox.replaceChildren(badge);
    statusBox.setAttribute("data-status", run.status);
    setText("run-worker", run.worker || "-");
    setText("run-exit", run.exit_code === null || run.exit_code === undefined ? "-" : String(run.exit_code));
    var note = document.getElementById("run-note");
    note.textContent = run.note || "";
    note.hidden = !run.note;
    var waiting = run.waiting, waitBox = document.getElementById("run-waiting");  // why it has not started
    if (waitBox) {
      waitBox.hidden = !waiting;
      waitBox.setAttribute("data-code", waiting ? waiting.code : "");
      setText("run-waiting-text", waiting ? waiting.message : "");
      var eta = document.getElementById("run-eta"), known = waiting && waiting.eta_s !== null && waiting.code !== "starting";
      eta.hidden = !known;
      eta.textContent = known ? "· starts in about " + S.duration(waiting.eta_s) : "";
    }
    if (run.percent !== null && run.percent !== undefined) {
      progress.parentNode.hidden = false;  // hidden until the run reports progress
      progress.value = run.percent;
      progress.removeAttribute("data-empty");
      var p = run.progress || {};
      progressText.textContent = fmt(p.current) + " / " + fmt(p.max === undefined ? 100 : p.max) + " (" + Math.round(run.percent) + "%)";
    }
    startedAt = run.started_at ? new Date(run.started_at) : null;
    var started = document.getElementById("run-started");
    if (run.started_at && started && !started.querySelector("time")) {
      var t = S.el("time");
      t.setAttribute("datetime", run.started_at);
      t.setAttribute("data-ago", "");
      started.replaceChildren(t);
      S.refreshTimes(started);
    }
    finished = ["waiting", "queued", "running"].indexOf(run.status) < 0;
    var live = document.getElementById("live");
    if (live && finished) { live.hidden = true; }  // nothing more will change
    if (finished || run.duration_s !== null) { durationBox.textContent = S.duration(run.duration_s); }
    ["cancel-form", "move-form"].forEach(function (id) {  // actions on an active run only
      var form = document.getElementById(id);
      if (form) { form.hidden = finished; }
    });
    if (run.cancel_requested && !finished) { setText("cancel", "Cancelling…"); }
  }

  function fmt(n) { return typeof n === "number" ? String(Math.round(n * 1000) / 1000) : "0"; }

  setInterval(function () {
    if (startedAt && !finished) { durationBox.textContent = S.duration((Date.now() - startedAt.getTime()) / 1000); }
  }, 1000);

  /* start: embedded tail, then live */
  append(initial.chunks || []);
  if (firstSeq === null && !initial.more) { empty.hidden = false; }
  loadEarlier.hidden = !initial.more;
  updateRun(initial.status);
  out.scrollTop = out.scrollHeight;

  var socket = S.connectLive(function (sock) {
    sock.emit("join_run", { run: runId, after_seq: lastSeq }, function (ack) {
      if (ack && ack.code === "store_unavailable") { S.storeBanner(true); return; }
      if (!ack || !ack.ok) { gap("live updates unavailable: " + ((ack && ack.error) || "unknown error")); }
    });
  });
  if (socket) {
    socket.on("output", function (message) {
      if (!message || message.run !== runId) { return; }
      if (message.skipped) { gap("… output skipped while disconnected; download the log for all of it …"); }
      append(message.chunks || []);
    });
    socket.on("run", updateRun);
  }

  /* Cancel posts the form (CSRF field included) without leaving the page; Re-run is a plain form post. */
  var cancelForm = document.getElementById("cancel-form");
  if (cancelForm) {
    cancelForm.addEventListener("submit", function (event) {
      event.preventDefault();
      S.post(cancelForm.getAttribute("action"), new FormData(cancelForm))
        .then(function (answer) { setText("cancel", answer.status === "cancelled" ? "Cancelled" : "Cancelling…"); })
        .catch(function (error) { gap("cancel failed: " + error.message); });
    });
  }
})();
