"""The reports of a dataset run (:mod:`captum_jscopes.runs.dataset`), made from its
records: ``summary.json``, ``summary.md``, ``index.html`` and a page per prompt
under ``pages/``; and the records read back as ScopeResults."""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
from pathlib import Path
from typing import Optional, Union
from urllib.parse import quote

from captum_jscopes.core.text import display_token
from captum_jscopes.display.html import render_html
from captum_jscopes.results.result import ScopeResult
from captum_jscopes.runs.runner import read_records, write_json_atomic, write_text_atomic

__all__ = ["read_results", "page_name", "write_reports", "TOP_K", "SUMMARY_JSON", "SUMMARY_MD", "INDEX_HTML",
           "PAGES_DIR"]

TOP_K = 5
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
INDEX_HTML = "index.html"
PAGES_DIR = "pages"


# ----------------------------------------------------------------------------- reading back


def read_results(out_dir_or_file: Union[str, os.PathLike]) -> dict[str, dict[str, ScopeResult]]:
    """The results of a finished run: ``{prompt id: {scope: ScopeResult}}`` in
    prompt order, read from ``records.jsonl`` (or the given JSONL file). Prompts
    recorded with an ``"error"`` are left out (``summary.json`` lists them)."""
    return {
        record["id"]: {scope: ScopeResult.from_dict(data) for scope, data in record["results"].items()}
        for record in read_records(out_dir_or_file)
        if "error" not in record
    }


def page_name(prompt_id: str) -> str:
    """File name of a prompt's page: the id itself when it is a plain lower-case
    name (``"17"``, ``"q-3.a"``), else a readable part and a hash of the id, so
    that no id (``"a/b"``, ``"<x>"``, ``"A"`` vs ``"a"`` on a case-insensitive
    disk) can escape ``pages/`` or collide with another."""
    if re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,79}", prompt_id):
        return f"{prompt_id}.html"
    # "~" never appears in the plain names above, so the two kinds cannot collide.
    # No dots in this part: a name starting with "." would be hidden, and ".." is never formed.
    readable = re.sub(r"[^a-z0-9_-]+", "_", prompt_id.lower())[:40]
    return f"{readable}~{hashlib.sha1(prompt_id.encode('utf-8')).hexdigest()[:12]}.html"


# ----------------------------------------------------------------------------- reports


def write_reports(out_dir: Union[str, os.PathLike], records: list[dict], meta: dict, *, resumed: int = 0,
                  computed: Optional[int] = None) -> dict:
    """Write ``summary.json``, ``summary.md``, ``index.html`` and one page per
    prompt under ``pages/`` from the run's ``records`` (``read_records``: every
    record of the folder) and its ``meta`` (run.json), each file atomically;
    return the summary (see :func:`attribute_dataset`). ``resumed`` and
    ``computed`` say how many prompts of this call were found done and were
    computed (default: the records not resumed)."""
    out_dir = Path(out_dir)
    (out_dir / PAGES_DIR).mkdir(parents=True, exist_ok=True)
    entries = []
    for record in records:
        entry, results = _summary_entry(record)
        if results:
            write_text_atomic(out_dir / PAGES_DIR / entry["page"], _prompt_page(entry, results, meta))
        entries.append(entry)
    summary = _summary(entries, meta, resumed, len(entries) - resumed if computed is None else computed)
    write_json_atomic(out_dir / SUMMARY_JSON, summary)
    write_text_atomic(out_dir / SUMMARY_MD, _summary_markdown(summary))
    write_text_atomic(out_dir / INDEX_HTML, _index_page(summary))
    return summary


def _summary_entry(record: dict) -> tuple[dict, dict[str, ScopeResult]]:
    """One prompt's line of the summary, and its results by scope (empty for an error)."""
    entry = {"id": record["id"], "page": page_name(record["id"]), "text": record["text"], "target": record["target"]}
    if "error" in record:
        return {**entry, "error": record["error"], **({"invalid": True} if record.get("invalid") else {})}, {}
    results = {scope: ScopeResult.from_dict(data) for scope, data in record["results"].items()}
    first = next(iter(results.values()))  # the target and the prediction are the same for every scope
    entry.update(
        explains=first.metadata["target"],
        prob=_target_prob(first),
        prediction=first.metadata["prediction"],
        hint=first.metadata.get("target_hint"),
        seconds=sum(record["seconds"].values()),
        seconds_per_scope=record["seconds"],
        top_tokens={
            scope: [[index, display_token(token), score] for index, token, score in result.top_tokens(TOP_K)]
            for scope, result in results.items()
        },
    )
    return entry, results


def _target_prob(result: ScopeResult) -> float:
    """p(target | prompt): the product over its tokens (teacher-forced)."""
    return float(result.output_probs.double().prod())


def _summary(entries: list[dict], meta: dict, resumed: int, computed: int) -> dict:
    done = [e for e in entries if "error" not in e]
    scopes = meta["settings"]["scopes"]
    total = sum(e["seconds"] for e in done)
    return {
        "model": meta["model"],
        "dtype": meta["dtype"],
        "settings": meta["settings"],
        "n_prompts": len(entries),
        "n_errors": len(entries) - len(done),
        "n_invalid": sum(bool(e.get("invalid")) for e in entries),
        "n_hints": sum(bool(e["hint"]) for e in done),
        "computed": computed,
        "resumed": resumed,
        "seconds": {
            "total": total,
            "per_prompt": total / len(done) if done else None,
            "per_scope": {s: sum(e["seconds_per_scope"][s] for e in done) / len(done) if done else None for s in scopes},
        },
        "prompts": entries,
    }


def _tail(text: str, limit: int = 80) -> str:
    """The end of a prompt (what the next token depends on most), on one line."""
    text = " ".join(text.split())
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def _tokens_text(top: list) -> str:
    return ", ".join(repr(token) for _, token, _ in top)


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _seconds_line(summary: dict) -> str:
    seconds = summary["seconds"]
    if seconds["per_prompt"] is None:
        return "no prompt could be explained"
    per_scope = ", ".join(f"{s} {v:.3g} s" for s, v in seconds["per_scope"].items())
    return f"{seconds['per_prompt']:.3g} s per prompt ({per_scope}), {seconds['total']:.3g} s in all"


def _summary_markdown(summary: dict) -> str:
    scopes = summary["settings"]["scopes"]
    lines = [
        f"# Token attributions: {summary['n_prompts']} prompts",
        "",
        f"- model: {summary['model']} ({summary['dtype']})",
        f"- scopes: {', '.join(scopes)}; settings: `{json.dumps(summary['settings'])}`",
        f"- time: {_seconds_line(summary)}",
        f"- prompts that could not be explained: {summary['n_errors']}"
        + (f" ({summary['n_invalid']} entries of the source that are no prompt)" if summary.get("n_invalid") else ""),
    ]
    if summary["n_hints"]:
        lines.append(f"- targets that lack their leading space (see each page's hint): {summary['n_hints']}")
    lines += [
        "",
        f"Top {TOP_K} tokens per scope, best first; 'explains' is the target (or the model's prediction) "
        "and its probability. Pages: index.html.",
        "",
        "| id | prompt (end) | explains | " + " | ".join(f"{s} top tokens" for s in scopes) + " | s |",
        "|---|---|---|" + "---|" * len(scopes) + "---|",
    ]
    for e in summary["prompts"]:
        head = f"| {_md_cell(e['id'])} | {_md_cell(_tail(e['text']))} | "
        if "error" in e:
            lines.append(head + f"error: {_md_cell(e['error'])} |" + " |" * len(scopes) + " |")
            continue
        tops = " | ".join(_md_cell(_tokens_text(e["top_tokens"][s])) for s in scopes)
        lines.append(head + f"{_md_cell(repr(e['explains']))} (p = {e['prob']:.3g}) | {tops} | {e['seconds']:.3g} |")
    return "\n".join(lines) + "\n"


def _page(title: str, body: list[str]) -> str:
    """A self-contained HTML page (no script, no external asset)."""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title></head>\n"
        '<body style="font-family: sans-serif; font-size: 14px;">\n' + "\n".join(body) + "\n</body>\n</html>\n"
    )


def _prompt_page(entry: dict, results: dict[str, ScopeResult], meta: dict) -> str:
    esc = html.escape
    body = [
        f'<p><a href="../{INDEX_HTML}">← all prompts</a></p>',
        f"<h2>Prompt {esc(entry['id'])}</h2>",
        f"<p>{esc(meta['model'])}: explains {esc(repr(entry['explains']))} (p = {entry['prob']:.4g}); "
        f"the model's prediction is {esc(repr(entry['prediction']['token']))} (p = {entry['prediction']['prob']:.4g})</p>",
    ]
    if entry["hint"]:
        body.append(f"<p><b>hint:</b> {esc(entry['hint'])}</p>")
    for scope, result in results.items():
        title = f"{scope.title()} Scope · {entry['seconds_per_scope'][scope]:.3g} s"
        body.append(render_html(result, title))  # escapes every token and metadata string
    return _page(f"Prompt {entry['id']}", body)


def _index_page(summary: dict) -> str:
    esc = html.escape
    scopes = summary["settings"]["scopes"]
    cell = 'style="border-bottom: 1px solid #ddd; padding: 3px 8px; vertical-align: top;"'
    header = ["id", "prompt (end)", "explains", *(f"{s} top tokens" for s in scopes), "s"]
    rows = ["<tr>" + "".join(f"<th {cell}>{esc(h)}</th>" for h in header) + "</tr>"]
    for e in summary["prompts"]:
        href = quote(f"{PAGES_DIR}/{e['page']}")
        link = f'<a href="{esc(href)}">{esc(e["id"])}</a>'
        cells = [link if "error" not in e else esc(e["id"]), esc(_tail(e["text"]))]
        if "error" in e:
            cells += [f"error: {esc(e['error'])}", *([""] * len(scopes)), ""]
        else:
            cells.append(f"{esc(repr(e['explains']))} (p = {e['prob']:.3g})")
            cells += [esc(_tokens_text(e["top_tokens"][s])) for s in scopes]
            cells.append(f"{e['seconds']:.3g}")
        rows.append("<tr>" + "".join(f"<td {cell}>{c}</td>" for c in cells) + "</tr>")
    body = [
        f"<h2>{summary['n_prompts']} prompts · {esc(summary['model'])} · {esc(', '.join(scopes))}</h2>",
        f"<p>{esc(_seconds_line(summary))}; could not be explained: {summary['n_errors']}</p>",
        '<table style="border-collapse: collapse;">',
        *rows,
        "</table>",
    ]
    return _page(f"Token attributions: {summary['n_prompts']} prompts", body)
