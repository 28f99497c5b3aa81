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

Layer view (``layers=``, optional): per output token its map at every layer
(:func:`captum_jscopes.analysis.layers.layer_map`, ``scope_output(..., layers=True)``),
shown under the map as a layer x token grid, the input embeddings (layer 0) at
the bottom, each row divided by its own maximum (the residual stream grows with
depth, so rows differ in scale), and each token's hand-off layer outlined in
orange (:meth:`~captum_jscopes.analysis.layers.LayerMap.handoff`). Without
``layers`` the page is as before: the script draws the grid only when the data
hold it.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Optional, Union

import torch
from captum.attr import LLMAttributionResult

from captum_jscopes.display.layers import HANDOFF_MIN
from captum_jscopes.core.text import display_token, token_labels
from captum_jscopes.display.labels import NEWLINE_MARK

__all__ = ["render_interactive_html", "save_interactive_html", "page_data", "layer_data"]

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
  var layerCells = null; // [layer][input token] cells of the layer view, when the data hold one

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
    drawLayers(view);
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
  if (data.layers) buildLayers(data.layers);
  show(nOut > 1 ? 0 : SUM);

  // ---- the layer view: one grid, recoloured by show() through drawLayers()
  function buildLayers(layers) {
    var box = el("section", null);
    box.id = "layers";
    box.appendChild(el("h2", null, "Layer by layer"));
    box.appendChild(el("div", "note", layers.about));
    var shownLayer = el("div", null);
    shownLayer.id = "layer-shown";
    box.appendChild(shownLayer);
    var scroll = el("div", null);
    scroll.id = "layer-scroll";
    var table = el("table", null);
    table.id = "layer-grid";
    layerCells = [];
    // cells as wide as a short prompt allows (a long one scrolls sideways); layer numbers
    // every 5th layer (and the first and last), as in the PNG
    var cellWidth = Math.max(13, Math.min(44, Math.floor(640 / data.input.length)));
    var named = function (l) { return l === 0 || l === layers.n_layers || (layers.n_layers <= 12 || l % 5 === 0); };
    // the deepest layer on top, the input embeddings (layer 0) at the bottom, under
    // them the token labels: the same orientation as the PNG (display/layers.py)
    for (var l = layers.n_layers; l >= 0; l--) {
      var tr = el("tr", null);
      tr.dataset.layer = String(l);
      tr.appendChild(el("th", "layer-name", l === 0 ? "emb" : (named(l) ? String(l) : "")));
      var cells = data.input.map(function (token, i) {
        var td = el("td", "cell");
        td.dataset.index = String(i);
        td.style.width = td.style.minWidth = cellWidth + "px";
        tr.appendChild(td);
        return td;
      });
      layerCells[l] = cells;
      table.appendChild(tr);
    }
    var labels = el("tr", null);
    labels.appendChild(el("th", null));
    data.input.forEach(function (token, i) {
      var th = el("th", "col-token", token.text);
      th.title = "#" + i + " " + JSON.stringify(token.tip);
      labels.appendChild(th);
    });
    table.appendChild(labels);
    scroll.appendChild(table);
    box.appendChild(scroll);
    box.appendChild(el("div", "note", layers.legend));
    // after the map's own scale and top tokens, before the metadata
    document.body.insertBefore(box, document.querySelector("details"));
  }
  function drawLayers(view) {
    if (!layerCells) return;
    var grid = view === SUM ? data.layers.summed : data.layers.views[view];
    layerCells.forEach(function (cells, l) {
      cells.forEach(function (td, i) {
        var v = grid.rows[l][i];
        td.dataset.value = String(v);
        td.style.backgroundColor = "rgba(31, 119, 180, " + Math.min(1, Math.max(0, v)).toFixed(3) + ")";
        td.classList.toggle("handoff", grid.handoff[i] === l && l > 0);
        td.title = (l === 0 ? "input embeddings" : "after layer " + l) + " · #" + i + " " +
          JSON.stringify(data.input[i].tip) + ": " + fmt(v) + " of the row's maximum (score " +
          fmt(v * grid.peaks[l]) + ")" + (grid.handoff[i] === l && l > 0 ? " · hand-off layer" : "");
      });
    });
    document.getElementById("layer-shown").textContent = view === SUM
      ? "Layer view of the sum over all " + nOut + " output tokens"
      : "Layer view of output token " + (view + 1) + ": " + JSON.stringify(data.output[view].text);
  }
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
h2 { font-size: 1.05em; margin: 1em 0 0.3em 0; }
.note { color: #555; font-size: 0.9em; margin: 0.2em 0; }
#layer-scroll { overflow-x: auto; max-width: 100%; }
#layer-shown { font-weight: bold; margin: 0.4em 0 0 0; }
#layer-grid { border-collapse: collapse; margin: 0.4em 0; }
#layer-grid td.cell { width: 13px; min-width: 13px; height: 10px; padding: 0; border: 0; }
#layer-grid td.handoff { box-shadow: inset 0 -3px 0 #ff7f0e; }
#layer-grid th.layer-name { font-size: 10px; font-weight: normal; color: #555; text-align: right;
  padding: 0 4px 0 0; line-height: 10px; }
#layer-grid th.col-token { writing-mode: vertical-rl; white-space: pre; font-size: 11px; font-weight: normal;
  padding: 3px 0 0 0; vertical-align: top; max-height: 9em; overflow: hidden; }
"""

# No network: a Content-Security-Policy that allows only this page's own inline
# script and style (and the empty data: icon, so the browser asks for no favicon).
_CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"


def page_data(result: Any, title: Optional[str] = None, layers: Any = None) -> dict:
    """What the page shows, as JSON-ready data: ``title``, ``about``, ``input``
    (per input token: ``text`` as shown on the map, ``tip`` as named in its
    tooltip, ``raw`` tokenizer piece, ``newline``), ``output`` (per output token: ``text``, ``prob`` or None),
    ``scores`` (one row of input scores per output token), ``summed`` (the sum
    of the rows) and ``metadata``; with ``layers`` also ``layers``
    (:func:`layer_data`).

    Args:
        result: a :class:`~captum_jscopes.ScopeResult` or any Captum
            ``LLMAttributionResult``; without ``token_attr`` the page has one
            view, the whole output (its tokens joined), whose map is ``seq_attr``.
        title: the page's heading; default from the metadata's scope and model.
        layers: optional (P, L + 1, n) tensor or array: per output token (P rows,
            as in ``token_attr``) its map at every layer, row 0 over the input
            embeddings, columns aligned with ``result.input_tokens``. Default
            None: no layer view (the data are as without it).
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
    data = {
        "title": str(title),
        "about": about,
        "input": inputs,
        "output": [{"text": t.replace("\n", NEWLINE_MARK), "prob": p} for t, p in zip(outputs, probs)],
        "scores": rows.tolist(),
        "summed": rows.sum(0).tolist(),
        "metadata": metadata,
    }
    if layers is not None:
        data["layers"] = layer_data(layers, n_outputs=rows.shape[0], n_inputs=rows.shape[1])
    return data


#: decimals of the layer view's row-normalised values (values in [0, 1]; keeps the page small)
LAYER_DECIMALS = 4


def layer_data(layers: Any, n_outputs: int, n_inputs: int) -> dict:
    """The layer view's data: ``n_layers`` (L), ``views`` (per output token) and
    ``summed`` (their sum), each ``{"rows": (L + 1) lists of n values, each row
    divided by its maximum; "peaks": (L + 1) row maxima (the raw scale);
    "handoff": n hand-off layers}``, and the texts ``about`` and ``legend``.

    Args:
        layers: (P, L + 1, n) tensor or array, >= 0 (P = ``n_outputs``, n = ``n_inputs``).
    Raises:
        ValueError: a wrong shape, NaN / inf or a negative score.
    """
    grid = torch.as_tensor(layers.detach().cpu() if isinstance(layers, torch.Tensor) else layers).double()
    if grid.dim() != 3 or tuple(grid.shape[::2]) != (n_outputs, n_inputs) or grid.shape[1] < 2:
        raise ValueError(
            f"layers has shape {tuple(grid.shape)}, expected ({n_outputs}, L + 1, {n_inputs}): "
            "per output token, per layer (0 = input embeddings), one column per input token"
        )
    if not bool(grid.isfinite().all()) or bool((grid < 0).any()):
        raise ValueError("the layer scores must be finite and >= 0")
    return {
        "n_layers": int(grid.shape[1] - 1),
        "views": [_layer_view(g) for g in grid],
        "summed": _layer_view(grid.sum(0)),
        "about": "The map at every layer: row l scores each input token at the residual stream after "
                 "decoder layer l (emb = the input embeddings, the map above). Each row is divided by its "
                 "own maximum: the residual stream grows with depth, so rows differ in scale; compare tokens "
                 "within a row. A first-order (gradient) picture.",
        "legend": "Orange underline: the token's hand-off layer, from which up its share of the row stays below "
                  f"half its peak (tokens reaching {HANDOFF_MIN:.0%} of a row's maximum). Hover a cell for its value.",
    }


def _layer_view(scores: torch.Tensor) -> dict:
    """One (L + 1, n) grid: rows / their maxima, the maxima, the hand-off layers."""
    from captum_jscopes.analysis.layers import handoff_layers  # the one definition of the hand-off layer

    peaks = scores.amax(-1)
    rows = scores / peaks.clamp_min(torch.finfo(torch.float64).tiny)[:, None]
    handoff = handoff_layers(scores)
    # a token that never carries much has a noisy hand-off layer: none shown (as in the PNG)
    handoff = torch.where(rows.amax(0) >= HANDOFF_MIN, handoff, torch.zeros_like(handoff))
    return {
        "rows": rows.round(decimals=LAYER_DECIMALS).tolist(),
        "peaks": peaks.tolist(),
        "handoff": handoff.tolist(),
    }


def _readable(result: Any) -> tuple[list[str], list[str], list[str], list[str]]:
    """Per input token its readable text, its label on the map, its label in the
    tooltip, and per output token its text. A ScopeResult knows its readable
    text (:mod:`captum_jscopes.core.text`: the pieces of one character are grouped,
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


def render_interactive_html(result: Any, title: Optional[str] = None, layers: Any = None) -> str:
    """The interactive page of ``result`` as one self-contained HTML string (see
    the module docstring; the data are :func:`page_data`'s, ``layers`` the
    optional (P, L + 1, n) layer maps of its layer view)."""
    data = page_data(result, title, layers)
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


def save_interactive_html(result: Any, path: PathLike, title: Optional[str] = None, layers: Any = None) -> Path:
    """Write :func:`render_interactive_html` to ``path`` (UTF-8; parent folders
    are created). Returns the path.

    Args:
        result, title: as in :func:`page_data`.
        layers: optional (P, L + 1, n) tensor / array, per output token its map
            at every layer (row 0 = the input embeddings), columns aligned with
            ``result.input_tokens``: the page then shows, under the chosen output
            token's map, its layer x token grid. Default None: no layer view.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_interactive_html(result, title, layers), encoding="utf-8")
    return path
