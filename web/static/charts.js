/* Monitoring charts (uPlot, vendored in vendor/uPlot.iife.min.js): helpers, and the run page's CPU/memory chart.
   Series data comes from /api/v1/.../samples as [{t: epoch seconds, cpu_percent, rss_bytes, ...}], oldest first.
   Text from the server is only ever set with textContent. */
(function () {
  "use strict";
  var Sooner = window.Sooner = window.Sooner || {};
  var Charts = Sooner.charts = {};
  var HEIGHT = 160;
  var SINGLE_SPAN_S = 30;  // a chart of one sample shows this many seconds on each side of it
  var WHOLE = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000];

  Charts.bytes = function (value) {
    if (value === null || value === undefined) { return "-"; }
    var units = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (Math.abs(value) >= 1024 && i < units.length - 1) { value /= 1024; i += 1; }
    return (i === 0 ? value.toFixed(0) : value.toFixed(value >= 100 ? 0 : 1)) + " " + units[i];
  };
  Charts.percent = function (value) {
    return value === null || value === undefined ? "-" : value.toFixed(value >= 10 ? 0 : 1) + "%";
  };
  Charts.count = function (value) {
    return value === null || value === undefined ? "-" : String(Math.round(value));
  };

  /* Columns for uPlot: [times, series1, series2 …] from lists of samples, aligned on t (null where missing). */
  Charts.align = function (lists, fields) {
    var times = {}, rows = [];
    lists.forEach(function (list) { list.forEach(function (s) { times[s.t] = true; }); });
    var xs = Object.keys(times).map(Number).sort(function (a, b) { return a - b; });
    var index = {};
    xs.forEach(function (t, i) { index[t] = i; });
    lists.forEach(function (list, k) {
      var column = xs.map(function () { return null; });
      list.forEach(function (s) {
        var v = s[fields[k]];
        column[index[s.t]] = v === undefined ? null : v;
      });
      rows.push(column);
    });
    return [xs].concat(rows);
  };

  /* Keep a series' samples of the last ``windowS`` seconds, adding those newer than the newest it has. */
  Charts.merge = function (list, fresh, now, windowS) {
    var last = list.length ? list[list.length - 1].t : -Infinity;
    fresh.forEach(function (s) { if (s.t > last) { list.push(s); } });
    var oldest = now - windowS;
    while (list.length && list[0].t < oldest) { list.shift(); }
    return list;
  };

  function widthOf(el) { return Math.max(200, Math.floor(el.clientWidth || 300)); }

  /* A chart in ``el``: series [{label, color, format, scale, bars}] (a second scale gets an axis on the right);
     options: height, ranges (per y scale), window_s (the time axis shows the last window_s seconds). */
  Charts.line = function (el, title, series, options) {
    options = options || {};
    var axes = [{}];
    var scales = { x: { time: true } };
    if (options.window_s) {  // a "last N seconds" chart: its time axis is that window, however few samples it has
      scales.x.range = function () { var now = Date.now() / 1000; return [now - options.window_s, now]; };
    } else {  // one sample (a run of a second or two): uPlot spans a lone time over 1,000 days; a minute around it
      scales.x.range = function (u, min, max) {
        var only = u.data[0].length === 1 ? u.data[0][0] : null;
        return only === null ? [min, max] : [only - SINGLE_SPAN_S, only + SINGLE_SPAN_S];
      };
    }
    var seen = {};
    series.forEach(function (s) {
      var scale = s.scale || "y";
      if (seen[scale]) { return; }
      seen[scale] = true;
      scales[scale] = { range: options.ranges && options.ranges[scale] || function (u, min, max) {
        return [0, max > 0 ? max * 1.1 : 1];
      } };
      var axis = { scale: scale, side: axes.length === 1 ? 3 : 1, size: 72, grid: { show: axes.length === 1 },
                   values: function (u, values) { return values.map(s.format); } };
      if (s.whole) { axis.incrs = WHOLE; }  // counts: no tick at 0.5
      axes.push(axis);
    });
    var opts = {
      title: title, width: widthOf(el), height: options.height || HEIGHT, scales: scales, axes: axes,
      cursor: { drag: { x: false, y: false } },
      series: [{}].concat(series.map(function (s) {
        var line = { label: s.label, stroke: s.color, fill: s.fill, width: 1.5, scale: s.scale || "y", spanGaps: true,
                     points: { show: function (u) { return u.data[0].length === 1; } },  // a lone sample: a dot
                     value: function (u, v) { return s.format(v); } };
        if (s.bars && window.uPlot.paths && window.uPlot.paths.bars) {
          line.paths = window.uPlot.paths.bars({ size: [0.7, 24] });
          line.fill = s.color;
        }
        return line;
      }))
    };
    var empty = [[]].concat(series.map(function () { return []; }));
    var chart = new window.uPlot(opts, empty, el);
    el.chart = chart;  // the uPlot instance, for scripts and tests that read its scales
    // The cell's width follows the page (flex rows wrap): follow it.
    var resize = function () {
      var width = widthOf(el);
      if (width !== chart.width) { chart.setSize({ width: width, height: options.height || HEIGHT }); }
    };
    if (window.ResizeObserver) { new window.ResizeObserver(resize).observe(el); }
    else { window.addEventListener("resize", resize); }
    return chart;
  };

  /* The run page: the run's CPU and memory over time; polls while the run is active. */
  function runChart() {
    var box = document.getElementById("run-usage");
    if (!box || !window.uPlot) { return; }
    var url = box.getAttribute("data-samples-url");
    var target = box.querySelector(".usage-chart");
    var chart = Charts.line(target, "CPU and memory of the run's processes", [
      { label: "CPU", color: "#2563eb", format: Charts.percent },
      { label: "memory", color: "#16a34a", format: Charts.bytes, scale: "mem" }
    ]);
    var samples = [];
    var emptyNote = box.querySelector(".empty");
    function show(body) {
      samples = Charts.merge(samples, body.samples || [], 0, Infinity);  // a run's whole life: nothing drops
      chart.setData(Charts.align([samples, samples], ["cpu_percent", "rss_bytes"]));
      if (emptyNote) { emptyNote.hidden = samples.length > 0; }
      target.hidden = samples.length === 0;  // empty axes say nothing the note does not
      var peak = document.getElementById("run-peak-rss");
      var cpu = document.getElementById("run-cpu-s");
      if (peak && body.peak_rss_bytes !== null && body.peak_rss_bytes !== undefined) {
        peak.textContent = Charts.bytes(body.peak_rss_bytes);
      }
      if (cpu && body.cpu_s !== null && body.cpu_s !== undefined) { cpu.textContent = body.cpu_s.toFixed(2) + " s"; }
      return ["waiting", "queued", "running"].indexOf(body.status) >= 0;
    }
    function poll() {
      var since = samples.length ? "?since=" + samples[samples.length - 1].t : "";
      fetch(url + since, { credentials: "same-origin", headers: { "Accept": "application/json" } })
        .then(function (r) { if (!r.ok) { throw new Error("HTTP " + r.status); } return r.json(); })
        .then(function (body) { if (show(body)) { setTimeout(poll, 5000); } })
        .catch(function () { setTimeout(poll, 15000); });
    }
    poll();
  }

  document.addEventListener("DOMContentLoaded", runChart);
})();
