/* The workers page's live charts: runs finished per minute, queue depth, and each worker's CPU and memory over
   the last hour. One poll of /api/v1/workers/samples every 5 s asks only for samples newer than the newest shown.
   Worker names are set with textContent. */
(function () {
  "use strict";
  var Charts = window.Sooner && window.Sooner.charts;
  var WINDOW_S = 3600, POLL_MS = 5000, RETRY_MS = 15000;

  function start() {
    var box = document.getElementById("monitoring");
    if (!box || !Charts || !window.uPlot) { return; }
    var url = box.getAttribute("data-samples-url");
    var fleet = box.querySelector("#fleet-charts");
    var list = box.querySelector("#worker-charts");
    var status = box.querySelector("#monitoring-status");
    // Cells first, charts after: a chart takes its cell's width, which depends on its neighbours.
    var rateCell = cell(fleet, "chart-runs"), queueCell = cell(fleet, "chart-queue");
    var rateChart = Charts.line(rateCell, "Runs finished per minute",
                                [{ label: "runs", color: "#7c3aed", format: Charts.count, bars: true, whole: true }],
                                { window_s: WINDOW_S });
    var queueChart = Charts.line(queueCell, "Queue depth", [
      { label: "queued", color: "#ea580c", format: Charts.count, whole: true },
      { label: "running", color: "#2563eb", format: Charts.count, whole: true }], { window_s: WINDOW_S });
    var queue = [], workers = {}, newest = null;

    function cell(parent, id) {
      var div = document.createElement("div");
      div.className = "usage-chart";
      div.id = id;
      parent.appendChild(div);
      return div;
    }

    function workerCharts(name) {
      if (workers[name]) { return workers[name]; }
      var section = document.createElement("section");
      section.className = "worker-charts";
      section.setAttribute("data-worker", name);
      var heading = document.createElement("h3");
      heading.textContent = name;
      section.appendChild(heading);
      var row = document.createElement("div");
      row.className = "chart-row";
      section.appendChild(row);
      list.appendChild(section);
      var cpuCell = cell(row, ""), memoryCell = cell(row, "");
      workers[name] = {
        host: [], process: [],
        cpu: Charts.line(cpuCell, "CPU", [
          { label: "host", color: "#64748b", format: Charts.percent },
          { label: "worker process", color: "#2563eb", format: Charts.percent }], { window_s: WINDOW_S }),
        memory: Charts.line(memoryCell, "Memory", [
          { label: "host in use", color: "#64748b", format: Charts.bytes },
          { label: "worker process", color: "#16a34a", format: Charts.bytes }], { window_s: WINDOW_S })
      };
      return workers[name];
    }

    function show(body) {
      var now = body.now;
      rateChart.setData([body.runs_per_minute.map(function (m) { return m.t; }),
                         body.runs_per_minute.map(function (m) { return m.runs; })]);
      queue = Charts.merge(queue, body.queue, now, WINDOW_S);
      queueChart.setData(Charts.align([queue, queue], ["depth", "running"]));
      body.workers.forEach(function (w) {
        var charts = workerCharts(w.name);
        charts.host = Charts.merge(charts.host, w.host, now, WINDOW_S);
        charts.process = Charts.merge(charts.process, w.process, now, WINDOW_S);
        charts.cpu.setData(Charts.align([charts.host, charts.process], ["cpu_percent", "cpu_percent"]));
        charts.memory.setData(Charts.align([charts.host, charts.process], ["rss_bytes", "rss_bytes"]));
        [charts.host, charts.process, queue].forEach(function (series) {
          if (series.length && (newest === null || series[series.length - 1].t > newest)) {
            newest = series[series.length - 1].t;
          }
        });
      });
      if (queue.length && (newest === null || queue[queue.length - 1].t > newest)) { newest = queue[queue.length - 1].t; }
      status.textContent = body.runs_per_minute_capped ? "Runs per minute: more runs finished than were counted." : "";
      box.setAttribute("data-updated", String(now));
    }

    function poll() {
      // A little overlap: samples of another host may arrive a moment late; merge() drops what it has.
      var since = newest === null ? "" : "?since=" + Math.max(0, newest - 30);
      fetch(url + since, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
        .then(function (body) { show(body); setTimeout(poll, POLL_MS); })
        .catch(function (error) {
          status.textContent = "Charts could not be updated (" + error.message + "); retrying.";
          setTimeout(poll, RETRY_MS);
        });
    }
    poll();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
