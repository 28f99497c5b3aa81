"""The rules x reduction study: how much of AttnLRP's deletion lead each of its three
differences from a Jacobian Scope accounts for, under three deletion operators.

AttnLRP and a scope differ in three separable things (issue "Scopes that win both
verdicts"): the **rules** of the backward pass (``rules="lrp"``), the **reduction**
of a token's VJP to its score (``reduce="input"``: ``|g_t . x_t|`` instead of
``||g_t||``) and the **direction** (AttnLRP explains the target logit, as the
Semantic Scope does; ``semantic+lrp+input`` IS AttnLRP). For every scope ``X`` of a
faithfulness run made with its :func:`~captum_jscopes.bench.methods.scope_variants`
(``X``, ``X+lrp``, ``X+input``, ``X+lrp+input``) this module reports, per run and per
deletion operator (the run's zero embedding, and the ``--extra-ablations`` it
recorded: replacement token, attention mask):

- every method's mean AOPC and its paired difference with AttnLRP (method - AttnLRP:
  positive = AttnLRP more faithful), with the 95% t interval and the Wilcoxon p;
- the decomposition of ``X - attnlrp`` along the path ``X -> X+lrp -> X+lrp+input ->
  semantic+lrp+input (= AttnLRP)``: the rules, then the reduction, then the
  direction, each a paired difference with its interval (the steps add up to the
  whole difference, prompt by prompt);
- each method's Spearman with the leave-one-out KL and the leader;
- the recommendation: a combination that AttnLRP does not beat on AOPC (under every
  operator) and that leads every method on leave-one-out agreement in every run, if
  one exists; else, per run and operator, which combination wins.

Command line::

    python -m captum_jscopes.bench.study --run "SmolLM2 / LAMBADA=DIR" --run ... --out FILE.md \
        --extra-run "SmolLM2 / LAMBADA, Fisher default=COMBINED_DIR"   # reported, not recommended from
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import numpy as np

from captum_jscopes.bench.methods import METHODS, VARIANTS
from captum_jscopes.bench.report import format_number, mean_sem
from captum_jscopes.bench.verdict import ALPHA, format_p, paired_stats, runs_of, write_report

__all__ = ["REFERENCE", "ZERO", "MIN_PROMPTS", "operators", "aopcs", "study", "recommend", "render_study", "main"]

#: the method every combination is paired with
REFERENCE = "attnlrp"
#: the name of the run's own deletion operator (the record's ``aopc``)
ZERO = "zero"
#: prompts every run needs before a combination is named (the issue's verdict: >= 490 per cell)
MIN_PROMPTS = 490
_LRP, _INPUT = (suffix for suffix, _, _ in VARIANTS)


def _done(records: Sequence[dict]) -> list[dict]:
    return [r for r in records if "methods" in r]


def operators(records: Sequence[dict]) -> list[str]:
    """The deletion operators every evaluated record has: ``"zero"`` then the extra ones."""
    done = _done(records)
    extra = None
    for r in done:
        modes = set.intersection(*(set(m.get("ablations", {})) for m in r["methods"].values()))
        extra = modes if extra is None else extra & modes
    return [ZERO, *sorted(extra or ())]


def aopcs(records: Sequence[dict], method: str, operator: str = ZERO) -> np.ndarray:
    """(prompts,) the method's AOPC under ``operator``, over the evaluated records."""
    pick = (lambda m: m["aopc"]) if operator == ZERO else (lambda m: m["ablations"][operator]["aopc"])
    return np.array([pick(r["methods"][method]) for r in _done(records)], dtype=float)


def _spearman(records: Sequence[dict], method: str) -> list[float]:
    return [r["methods"][method]["loo"]["spearman"] for r in records]


def _families(methods: Sequence[str]) -> list[str]:
    """The scope methods whose three variants are all in ``methods`` (the 2 x 2 complete)."""
    return [m for m in methods if METHODS[m].is_scope and _LRP not in m and _INPUT not in m
            and all(m + s in methods for s in (_LRP, _INPUT, _LRP + _INPUT))]


def study(records: Sequence[dict], name: str = "run") -> dict:
    """The study of one run (see the module docstring).

    Returns:
        ``name``, ``n``, ``operators``, ``families`` (the scopes with a complete 2 x 2),
        ``aopc`` (operator -> method -> ``mean``, ``sem``, and with AttnLRP in the run
        ``vs_reference``: :func:`paired_stats` of method - AttnLRP), ``steps`` (operator
        -> family -> list of ``{"step", "from", "to", **paired_stats}``: rules, reduction,
        direction), ``loo`` (method -> ``mean``, ``sem``, ``n``, best first; empty without
        leave-one-out) and ``loo_leader``.
    """
    done = _done(records)
    if not done:
        raise ValueError(f"{name}: no evaluated prompt")
    methods = [m for m in METHODS if all(m in r["methods"] for r in done) and METHODS[m].kind != "random"]
    families = _families(methods)
    has_reference = REFERENCE in methods
    out: dict = {"name": name, "n": len(done), "operators": operators(done), "families": families,
                 "aopc": {}, "steps": {}}
    for op in out["operators"]:
        table = {}
        for m in methods:
            values = aopcs(done, m, op)
            mean, sem = mean_sem(values.tolist())
            table[m] = {"mean": mean, "sem": sem}
            if has_reference and m != REFERENCE:
                table[m]["vs_reference"] = paired_stats(values, aopcs(done, REFERENCE, op))
        out["aopc"][op] = table
        steps = {}
        for family in families:
            path = [family, family + _LRP, family + _LRP + _INPUT]
            if has_reference:
                path.append(REFERENCE)
            labels = ["rules", "reduction", "direction"]
            steps[family] = [{"step": label, "from": a, "to": b, **paired_stats(aopcs(done, a, op), aopcs(done, b, op))}
                             for label, a, b in zip(labels, path, path[1:])]
        out["steps"][op] = steps
    with_loo = [r for r in done if all(r["methods"][m].get("loo", {}).get("spearman") is not None for m in methods)]
    loo = {}
    for m in methods if with_loo else ():
        mean, sem = mean_sem(_spearman(with_loo, m))
        loo[m] = {"mean": mean, "sem": sem, "n": len(with_loo)}
    out["loo"] = dict(sorted(loo.items(), key=lambda item: -item[1]["mean"]))
    if out["loo"]:
        leader = next(iter(out["loo"]))
        out["loo_leader"] = {"method": leader, "vs": {
            m: _loo_paired(with_loo, leader, m) for m in out["loo"] if m != leader}}
    return out


def _loo_paired(records: Sequence[dict], a: str, b: str) -> dict:
    """Paired Spearman a - b (positive = ``a`` agrees better with leave-one-out)."""
    row = paired_stats(_spearman(records, b), _spearman(records, a))
    row.update(mean_difference=-row["mean_difference"], ci_low=-row["ci_high"], ci_high=-row["ci_low"])
    return row


def _not_beaten(row: Optional[dict]) -> bool:
    """AttnLRP is not significantly more faithful (or the method is the reference)."""
    return row is None or not (row["mean_difference"] > 0 and row["wilcoxon_p"] < ALPHA)


def recommend(studies: Sequence[dict], min_prompts: int = MIN_PROMPTS) -> dict:
    """The combination to name, if one holds everywhere: not beaten by AttnLRP on AOPC under
    any operator of any run, and first on leave-one-out agreement in every run (no method
    significantly ahead of it). ``{"method": name or None, "why": text, "per_run": ...}``;
    ``per_run`` lists, per run and operator, the method with the most negative mean AOPC and
    the leave-one-out leader. Below ``min_prompts`` prompts in some run nothing is named (with
    few prompts no difference is significant, so everything would look unbeaten)."""
    per_run = []
    candidates = None
    for s in studies:
        ok = set()
        for m in s["aopc"][ZERO]:
            if m == REFERENCE or not METHODS[m].is_scope:
                continue
            beaten = any(not _not_beaten(s["aopc"][op][m].get("vs_reference")) for op in s["operators"])
            leads = bool(s.get("loo")) and _leads_loo(s, m)
            if not beaten and leads:
                ok.add(m)
        candidates = ok if candidates is None else candidates & ok
        per_run.append({"name": s["name"], "aopc_best": {op: min(s["aopc"][op], key=lambda m: s["aopc"][op][m]["mean"])
                                                           for op in s["operators"]},
                        "loo_leader": s.get("loo_leader", {}).get("method")})
    chosen = sorted(candidates or (), key=lambda m: list(METHODS).index(m))
    short = [s["name"] for s in studies if s["n"] < min_prompts]
    if short:
        return {"method": None, "why": f"too few prompts to name one yet ({', '.join(short)}: fewer than "
                                       f"{min_prompts})", "per_run": per_run, "provisional": chosen}
    if chosen:
        why = (f"`{chosen[0]}` is not beaten by AttnLRP on deletion AOPC under any operator and no method agrees "
               "significantly better with leave-one-out, in every run")
        return {"method": chosen[0], "why": why, "per_run": per_run}
    return {"method": None, "why": "no combination is both unbeaten by AttnLRP on AOPC and first on leave-one-out "
                                   "agreement in every run", "per_run": per_run}


def _leads_loo(s: dict, method: str) -> bool:
    """No method agrees significantly better with leave-one-out than ``method``."""
    leader = s["loo_leader"]["method"]
    if leader == method:
        return True
    row = s["loo_leader"]["vs"].get(method)
    return row is not None and not (row["mean_difference"] > 0 and row["wilcoxon_p"] < ALPHA)


# ====================================================================== rendering
def _cell(row: dict) -> str:
    return (f"{format_number(row['mean_difference'])} [{format_number(row['ci_low'])}, "
            f"{format_number(row['ci_high'])}], p {format_p(row['wilcoxon_p'])}")


def render_study(studies: Sequence[dict], min_prompts: int = MIN_PROMPTS, extra: Sequence[dict] = ()) -> str:
    """Markdown: the recommendation, then per run the AOPC table under every operator (paired
    with AttnLRP), the decomposition of each scope's gap and the leave-one-out agreement.
    ``extra``: studies reported the same way after them but left out of the recommendation
    (e.g. the Fisher default on a subset of the prompts, joined with ``--combine``)."""
    advice = recommend(studies, min_prompts)
    lines = ["# Rules x reduction: every scope under AttnLRP's rules and with the input reduction", ""]
    lines.append(f"**Recommendation:** {advice['why']}." if advice["method"] else f"**No single pick:** {advice['why']}.")
    if advice.get("provisional"):
        lines.append(f"(So far unbeaten and first on leave-one-out: {', '.join(f'`{m}`' for m in advice['provisional'])}.)")
    lines += ["", "| run | best AOPC by operator | leave-one-out leader |", "|---|---|---|"]
    lines += [f"| {r['name']} | " + ", ".join(f"{op}: `{m}`" for op, m in r["aopc_best"].items())
              + f" | `{r['loo_leader']}` |" for r in advice["per_run"]]
    lines += ["", "AOPC: more negative = more faithful. vs AttnLRP: method - AttnLRP per prompt (positive = AttnLRP "
              "more faithful), mean [95% t interval], Wilcoxon p. Decomposition: the paired AOPC change of each step "
              "of X -> X+lrp (rules) -> X+lrp+input (reduction) -> AttnLRP (direction; `semantic+lrp+input` is "
              "AttnLRP itself); the steps add up to X - AttnLRP.", ""]
    for s in [*studies, *extra]:
        aside = "" if s in studies else ", not part of the recommendation"
        lines += [f"## {s['name']} (n = {s['n']} prompts{aside})", ""]
        ops = s["operators"]
        header = "| method | " + " | ".join(f"AOPC {op} | vs AttnLRP ({op})" for op in ops) + " |"
        lines += [header, "|---|" + "---|---|" * len(ops)]
        for m in s["aopc"][ZERO]:
            cells = []
            for op in ops:
                row = s["aopc"][op][m]
                cells.append(f"{format_number(row['mean'])} +- {format_number(row['sem'])}")
                cells.append(_cell(row["vs_reference"]) if "vs_reference" in row else "")
            lines.append(f"| `{m}` | " + " | ".join(cells) + " |")
        if s["families"]:
            lines += ["", "Decomposition of X - AttnLRP (AOPC under each operator):", "",
                      "| scope X | operator | rules | reduction | direction |", "|---|---|---|---|---|"]
            for family in s["families"]:
                for op in ops:
                    steps = {step["step"]: step for step in s["steps"][op][family]}
                    lines.append(f"| `{family}` | {op} | " + " | ".join(
                        _cell(steps[k]) if k in steps else "" for k in ("rules", "reduction", "direction")) + " |")
        if s.get("loo"):
            first = next(iter(s["loo"].values()))
            lines += ["", f"Spearman with the leave-one-out KL ({first['n']} prompts, mean +- SEM, best first): "
                      + ", ".join(f"`{m}` {format_number(r['mean'])} +- {format_number(r['sem'])}"
                                  for m, r in s["loo"].items())]
        lines.append("")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``--run NAME=DIR[+DIR]`` (repeated) -> the study (Markdown; ``--out`` also writes it
    with a .json beside it). Exit 2 on a usage error."""
    parser = argparse.ArgumentParser(prog="python -m captum_jscopes.bench.study", description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="append", default=[], metavar="NAME=DIR[+DIR...]",
                        help="a faithfulness run with scope variants (partial runs read from their shards); "
                             "DIR+DIR pools runs over disjoint prompts")
    parser.add_argument("--extra-run", action="append", default=[], metavar="NAME=DIR[+DIR...]",
                        help="a run reported the same way but left out of the recommendation: e.g. the Fisher "
                             "default's variants on the first 200 prompts, joined with the main run by "
                             "jscopes bench faithfulness --combine")
    parser.add_argument("--out", default=None, help="Markdown file (a .json beside it)")
    parser.add_argument("--min-prompts", type=int, default=MIN_PROMPTS,
                        help=f"prompts every run needs before a combination is named (default {MIN_PROMPTS})")
    args = parser.parse_args(argv)
    try:
        if not args.run:
            raise ValueError("give at least one --run NAME=DIR")
        studies = [study(records, name) for name, records in runs_of(args.run)]
        extra = [study(records, name) for name, records in runs_of(args.extra_run)]
    except ValueError as err:
        print(f"study: error: {err}", file=sys.stderr)
        return 2
    data = [{**s, "in_recommendation": s in studies} for s in [*studies, *extra]]
    write_report(render_study(studies, args.min_prompts, extra), data, args.out, "study")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
