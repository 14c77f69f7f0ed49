/* ANSI SGR colours to DOM nodes. Text is only ever set with textContent / text nodes;
   escape sequences become CSS classes (or CSSOM colours for 256/true-colour), never HTML. */
(function () {
  "use strict";
  var Sooner = window.Sooner = window.Sooner || {};

  // SGR (group 1), other CSI sequences, OSC strings (e.g. hyperlinks) and 2-character escapes.
  var ESCAPES = /\x1b\[([0-9;:]*)m|\x1b\[[0-9;?<>=!]*[ -\/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[()#][0-9A-Za-z]|\x1b[@-Z\\-_]/g;
  var CONTROL = /[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f]/g;

  function newState() { return { fg: null, bg: null, bold: false, dim: false, italic: false, underline: false, strike: false, inverse: false }; }

  function color256(n) {
    if (n < 16) { return { index: n }; }
    if (n < 232) {
      n -= 16;
      var steps = [0, 95, 135, 175, 215, 255];
      return { rgb: [steps[Math.floor(n / 36)], steps[Math.floor(n / 6) % 6], steps[n % 6]] };
    }
    var g = 8 + (n - 232) * 10;
    return { rgb: [g, g, g] };
  }

  function clampByte(v) { v = parseInt(v, 10); return isNaN(v) ? 0 : Math.max(0, Math.min(255, v)); }

  function applyCodes(state, params) {
    var codes = params === "" ? [0] : params.split(/[;:]/).map(function (c) { return c === "" ? 0 : parseInt(c, 10); });
    for (var i = 0; i < codes.length; i++) {
      var c = codes[i];
      if (c === 0) { var fresh = newState(); for (var k in fresh) { state[k] = fresh[k]; } }
      else if (c === 1) { state.bold = true; }
      else if (c === 2) { state.dim = true; }
      else if (c === 3) { state.italic = true; }
      else if (c === 4) { state.underline = true; }
      else if (c === 7) { state.inverse = true; }
      else if (c === 9) { state.strike = true; }
      else if (c === 22) { state.bold = false; state.dim = false; }
      else if (c === 23) { state.italic = false; }
      else if (c === 24) { state.underline = false; }
      else if (c === 27) { state.inverse = false; }
      else if (c === 29) { state.strike = false; }
      else if (c >= 30 && c <= 37) { state.fg = { index: c - 30 }; }
      else if (c === 39) { state.fg = null; }
      else if (c >= 40 && c <= 47) { state.bg = { index: c - 40 }; }
      else if (c === 49) { state.bg = null; }
      else if (c >= 90 && c <= 97) { state.fg = { index: c - 90 + 8 }; }
      else if (c >= 100 && c <= 107) { state.bg = { index: c - 100 + 8 }; }
      else if (c === 38 || c === 48) {
        var target = c === 38 ? "fg" : "bg", value = null;
        if (codes[i + 1] === 5 && i + 2 < codes.length) { value = color256(Math.max(0, Math.min(255, codes[i + 2] | 0))); i += 2; }
        else if (codes[i + 1] === 2 && i + 4 < codes.length) { value = { rgb: [clampByte(codes[i + 2]), clampByte(codes[i + 3]), clampByte(codes[i + 4])] }; i += 4; }
        state[target] = value;
      }
    }
  }

  function styled(state) {
    return state.fg || state.bg || state.bold || state.dim || state.italic || state.underline || state.strike || state.inverse;
  }

  function segmentNode(text, state) {
    if (!styled(state)) { return document.createTextNode(text); }
    var span = document.createElement("span");
    var fg = state.inverse ? state.bg : state.fg, bg = state.inverse ? state.fg : state.bg;
    var classes = [];
    if (state.bold) { classes.push("ansi-bold"); }
    if (state.dim) { classes.push("ansi-dim"); }
    if (state.italic) { classes.push("ansi-italic"); }
    if (state.underline) { classes.push("ansi-underline"); }
    if (state.strike) { classes.push("ansi-strike"); }
    if (fg && fg.index !== undefined) { classes.push("ansi-fg-" + fg.index); }
    if (bg && bg.index !== undefined) { classes.push("ansi-bg-" + bg.index); }
    if (state.inverse && !fg) { classes.push("ansi-fg-0"); }
    if (state.inverse && !bg) { classes.push("ansi-bg-7"); }
    span.className = classes.join(" ");
    // CSSOM assignments of numbers-only rgb() strings: not HTML, and allowed by the CSP.
    if (fg && fg.rgb) { span.style.color = "rgb(" + fg.rgb.join(",") + ")"; }
    if (bg && bg.rgb) { span.style.backgroundColor = "rgb(" + bg.rgb.join(",") + ")"; }
    span.textContent = text;
    return span;
  }

  /* Lone carriage returns overwrite the line, as in a terminal (progress spinners). */
  function applyCarriageReturns(text) {
    if (text.indexOf("\r") < 0) { return text; }
    return text.replace(/\r\n/g, "\n").split("\n").map(function (line) {
      var trimmed = line.replace(/\r+$/, "");
      var at = trimmed.lastIndexOf("\r");
      return at < 0 ? trimmed : trimmed.slice(at + 1);
    }).join("\n");
  }

  /* Append `text` to `parent`, carrying colour state in `state` (from Sooner.ansi.state()). */
  function render(parent, text, state) {
    text = applyCarriageReturns(text);
    ESCAPES.lastIndex = 0;
    var last = 0, match;
    while ((match = ESCAPES.exec(text)) !== null) {
      if (match.index > last) { parent.appendChild(segmentNode(text.slice(last, match.index).replace(CONTROL, ""), state)); }
      if (match[1] !== undefined) { applyCodes(state, match[1]); }
      last = ESCAPES.lastIndex;
    }
    if (last < text.length) { parent.appendChild(segmentNode(text.slice(last).replace(CONTROL, ""), state)); }
  }

  Sooner.ansi = { state: newState, render: render };
})();
