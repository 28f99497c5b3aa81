"""An interactive page for a multi-token result: choose an output token and see
which input tokens drove it, or the sum over all of them.

    from captum_jscopes.display.interactive import save_interactive_html
    result = LLMScopeAttribution(SemanticScope(model, tokenizer), tokenizer).attribute(inp, target=" Paris, the city of light")
    save_interactive_html(result, "paris_interactive.html")

The page is ONE self-contained file: no network (a Content-Security-Policy
forbids every load), no external script or style. The numbers travel as JSON
inside a ``<script type="application/json">`` block, with ``<``, ``>`` and ``&``
written as ``\\u003c``, ``\\u003e``, ``\\u0026`` so that no token (``</script>``
included) can end the block; the page's script builds every piece of text with
``textContent`` and every tooltip with the ``title`` property, never
``innerHTML``, so a token is always shown as text, whatever it holds.

Colours: each output token's map shares one scale (the largest score of any
output token), so maps of different tokens compare directly; the summed view
has its own scale (sums are larger). Negative scores (Captum's signed methods)
are drawn in red, positive ones in blue.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Optional, Union

import torch
from captum.attr import LLMAttributionResult

from captum_jscopes.display.text import NEWLINE_MARK, display_token, token_labels

__all__ = ["render_interactive_html", "save_interactive_html", "page_data"]

PathLike = Union[str, Path]

#: id of the JSON block the page's script reads
DATA_ID = "jscopes-data"

# The script of the page. It reads only the JSON block, and writes text with
# textContent and tooltips with .title: no data ever passes through an HTML parser.
_SCRIPT = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("jscopes-data").textContent);
  var nOut = data.output.length;
  var SUM = -1;
  var current = null;

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function fmt(x) { return Number(x).toPrecision(4); }
  function maxAbs(rows) {
    var m = 0;
    rows.forEach(function (row) { row.forEach(function (v) { m = Math.max(m, Math.abs(v)); }); });
    return m > 0 ? m : 1;
  }
  var rowScale = maxAbs(data.scores);   // one scale for every output token's map
  var sumScale = maxAbs([data.summed]); // the summed view: its own scale
  function colour(v, scale) {
    var a = Math.min(1, Math.abs(v) / scale);
    return v < 0 ? "rgba(214, 39, 40, " + a.toFixed(3) + ")" : "rgba(31, 119, 180, " + a.toFixed(3) + ")";
  }

  document.getElementById("title").textContent = data.title;
  document.title = data.title;
  document.getElementById("about").textContent = data.about;

  // the output tokens, as buttons, and the summed view
  var outputs = document.getElementById("outputs");
  var buttons = [];
  data.output.forEach(function (token, k) {
    var b = el("button", "out-token", token.text);
    b.type = "button";
    b.dataset.row = String(k);
    b.title = "output token " + k + (token.prob === null ? "" : ", p = " + fmt(token.prob));
    b.addEventListener("click", function () { show(k); });
    outputs.appendChild(b);
    buttons.push(b);
  });
  var sumButton = el("button", "out-token sum", "\u03a3 all " + nOut + " output tokens");
  sumButton.type = "button";
  sumButton.id = "view-sum";
  sumButton.title = "the sum of the maps of every output token";
  sumButton.addEventListener("click", function () { show(SUM); });
  outputs.appendChild(sumButton);

  // the input tokens, built once; show() recolours them
  var map = document.getElementById("map");
  var spans = data.input.map(function (token, i) {
    var s = el("span", "tok", token.text);
    s.dataset.index = String(i);
    s.addEventListener("mouseenter", function () {
      document.getElementById("hover").textContent = "#" + i + " " + JSON.stringify(token.tip) + ": " + s.dataset.score;
    });
    map.appendChild(s);
    if (token.newline) map.appendChild(document.createElement("br"));
    return s;
  });

  function show(view) {
    var scores = view === SUM ? data.summed : data.scores[view];
    var scale = view === SUM ? sumScale : rowScale;
    current = view;
    spans.forEach(function (s, i) {
      var v = scores[i];
      s.dataset.score = String(v);
      s.style.backgroundColor = colour(v, scale);
      s.style.color = Math.abs(v) / scale > 0.6 ? "#fff" : "#111";
      s.title = "#" + i + " " + JSON.stringify(data.input[i].tip) + ": " + fmt(v);
    });
    buttons.forEach(function (b, k) { b.setAttribute("aria-pressed", String(k === view)); });
    sumButton.setAttribute("aria-pressed", String(view === SUM));
    var shown = document.getElementById("shown");
    if (view === SUM) {
      shown.textContent = "Sum over all " + nOut + " output tokens";
    } else {
      var token = data.output[view];
      shown.textContent = "Output token " + (view + 1) + " of " + nOut + ": " + JSON.stringify(token.text) +
        (token.prob === null ? "" : " (p = " + fmt(token.prob) + ")");
    }
    document.getElementById("scale").textContent = "colour scale: |score| from 0 to " + fmt(scale) +
      (view === SUM ? " (the summed view)" : " (shared by every output token)");
    var order = scores.map(function (v, i) { return i; });
    order.sort(function (a, b) { return scores[b] - scores[a] || a - b; });
    var top = document.getElementById("top");
    top.textContent = "";
    order.slice(0, 5).forEach(function (i) {
      top.appendChild(el("li", null, JSON.stringify(data.input[i].tip) + " (token " + i + "): " + fmt(scores[i])));
    });
    document.body.dataset.view = view === SUM ? "sum" : String(view);
  }

  // left / right arrows step through the output tokens (the summed view is last)
  document.addEventListener("keydown", function (event) {
    if (event.key !== "ArrowLeft" && event.key !== "ArrowRight") return;
    var order = buttons.map(function (b, k) { return k; }).concat([SUM]);
    var at = order.indexOf(current);
    var step = event.key === "ArrowRight" ? 1 : order.length - 1;
    show(order[(at + step) % order.length]);
  });

  document.getElementById("metadata").textContent = JSON.stringify(data.metadata, null, 2);
  show(nOut > 1 ? 0 : SUM);
})();
"""

_STYLE = """
body { font-family: sans-serif; font-size: 15px; margin: 1.5em; max-width: 64em; color: #111; }
h1 { font-size: 1.2em; margin: 0 0 0.3em 0; }
#about, #scale, #hover { color: #555; font-size: 0.9em; }
#outputs { margin: 0.8em 0; line-height: 2.2; }
.out-token { font: inherit; margin: 0 3px 3px 0; padding: 1px 6px; border: 1.5px solid #d62728;
  border-radius: 4px; background: #fff; color: #d62728; cursor: pointer; white-space: pre; }
.out-token[aria-pressed="true"] { background: #d62728; color: #fff; }
.out-token.sum { border-color: #555; color: #555; }
.out-token.sum[aria-pressed="true"] { background: #555; color: #fff; }
#shown { font-weight: bold; margin: 0.5em 0; }
#map { line-height: 2; margin: 0.5em 0; }
.tok { border-radius: 4px; padding: 1px 2px; margin: 0 1px; white-space: pre; }
#top { margin: 0.3em 0; }
pre { white-space: pre-wrap; font-size: 12px; }
"""

# No network: a Content-Security-Policy that allows only this page's own inline
# script and style (and the empty data: icon, so the browser asks for no favicon).
_CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"


def page_data(result: Any, title: Optional[str] = None) -> dict:
    """What the page shows, as JSON-ready data: ``title``, ``about``, ``input``
    (per input token: ``text`` as shown on the map, ``tip`` as named in its
    tooltip, ``raw`` tokenizer piece, ``newline``), ``output`` (per output token: ``text``, ``prob`` or None),
    ``scores`` (one row of input scores per output token), ``summed`` (the sum
    of the rows) and ``metadata``.

    Args:
        result: a :class:`~captum_jscopes.ScopeResult` or any Captum
            ``LLMAttributionResult``; without ``token_attr`` the page has one
            view, the whole output (its tokens joined), whose map is ``seq_attr``.
        title: the page's heading; default from the metadata's scope and model.
    """
    if not isinstance(result, LLMAttributionResult):
        raise TypeError(f"expected a ScopeResult or a Captum LLMAttributionResult, not {type(result).__name__}")
    metadata = dict(getattr(result, "metadata", None) or {})
    display, labels, tips, outputs = _readable(result)
    probs = result.output_probs
    probs = [None] * len(outputs) if probs is None else [float(p) for p in probs.detach().to("cpu").double()]
    if result.token_attr is not None:
        rows = result.token_attr.detach().to("cpu").double()
    else:  # only the map of the whole output: one view, the output as one piece
        rows = result.seq_attr.detach().to("cpu").double().reshape(1, -1)
        whole = None if None in probs else float(torch.tensor(probs, dtype=torch.float64).prod())
        outputs, probs = ["".join(outputs)], [whole]
    if tuple(rows.shape) != (len(outputs), len(result.input_tokens)):
        raise ValueError(
            f"token_attr has shape {tuple(rows.shape)}, expected ({len(outputs)}, {len(result.input_tokens)}): "
            "one row per output token, one column per input token"
        )
    if not bool(rows.isfinite().all()):
        raise ValueError("the scores hold NaN or inf; the page cannot colour them")
    inputs = [
        {
            "text": label.replace("\n", NEWLINE_MARK),
            "tip": tip.replace("\n", NEWLINE_MARK),
            "raw": token,
            "newline": text.endswith("\n"),
        }
        for token, text, label, tip in zip(result.input_tokens, display, labels, tips)
    ]
    if title is None:
        title = " · ".join(str(metadata[k]) for k in ("scope", "model") if metadata.get(k)) or "Token attribution"
    target = metadata.get("target")
    about = f"{metadata.get('scope', 'the').title()} Scope on the prompt's tokens; " if metadata.get("scope") else ""
    about += (
        f"explains {target!r}, {rows.shape[0]} output tokens. " if isinstance(target, str) else f"{rows.shape[0]} output tokens. "
    )
    about += "Choose an output token (or press ← →); hover over an input token for its score."
    return {
        "title": str(title),
        "about": about,
        "input": inputs,
        "output": [{"text": t.replace("\n", NEWLINE_MARK), "prob": p} for t, p in zip(outputs, probs)],
        "scores": rows.tolist(),
        "summed": rows.sum(0).tolist(),
        "metadata": metadata,
    }


def _readable(result: Any) -> tuple[list[str], list[str], list[str], list[str]]:
    """Per input token its readable text, its label on the map, its label in the
    tooltip, and per output token its text. A ScopeResult knows its readable
    text (:mod:`captum_jscopes.display.text`: the pieces of one character are grouped,
    the text on the first and a continuation mark on the others, whose tooltip
    says "' 🍣 (2/3)'"); any other Captum result is shown piece by piece."""
    display = getattr(result, "input_display", None)
    if display is None:
        display = [display_token(t) for t in result.input_tokens]
        return display, display, display, [display_token(t) for t in result.output_tokens]
    labels = token_labels(display)
    numbered = token_labels(display, numbered=True)
    return list(display), labels, numbered, list(result.output_display)


def _script_json(data: dict) -> str:
    """``data`` as JSON that cannot end or confuse the script block it sits in:
    ``<`` (so ``</script>`` and ``<!--``), ``>`` and ``&`` become \\u escapes,
    which JSON.parse reads back as the same characters."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_interactive_html(result: Any, title: Optional[str] = None) -> str:
    """The interactive page of ``result`` as one self-contained HTML string (see
    the module docstring; the data are :func:`page_data`'s)."""
    data = page_data(result, title)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">\n'
        '<link rel="icon" href="data:,">\n'
        f"<title>{html.escape(data['title'])}</title>\n"
        f"<style>{_STYLE}</style>\n</head>\n<body>\n"
        '<h1 id="title"></h1>\n<div id="about"></div>\n'
        '<div id="outputs" role="group" aria-label="output tokens"></div>\n'
        '<div id="shown"></div>\n<div id="map"></div>\n'
        '<div id="scale"></div>\n<div id="hover"></div>\n'
        "<div>Top tokens of this view:</div>\n<ol id=\"top\"></ol>\n"
        "<details><summary>metadata</summary><pre id=\"metadata\"></pre></details>\n"
        f'<script type="application/json" id="{DATA_ID}">{_script_json(data)}</script>\n'
        f"<script>{_SCRIPT}</script>\n"
        "</body>\n</html>\n"
    )


def save_interactive_html(result: Any, path: PathLike, title: Optional[str] = None) -> Path:
    """Write :func:`render_interactive_html` to ``path`` (UTF-8; parent folders
    are created). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_interactive_html(result, title), encoding="utf-8")
    return path
