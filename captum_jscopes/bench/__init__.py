"""The benchmarks: how fast, and how faithful, every method is.

- :mod:`~captum_jscopes.bench.methods`: the one table of attribution methods (scopes and Captum
  baselines, options spelled out) that both benchmarks and their reports read.
- :mod:`~captum_jscopes.runs.prompts`: the shipped prompt sets (``data/``: LAMBADA-1000,
  German-English translation), loading, and "passage minus its last token".
- :mod:`~captum_jscopes.runs.runner`: runs a function over prompts, sharded over processes,
  resumable, settings checked.
- :mod:`~captum_jscopes.bench.speed`: seconds and memory per explained token, against a floor;
  :mod:`~captum_jscopes.bench.fisher_study`: every Fisher estimator against exact Fisher;
  :mod:`~captum_jscopes.bench.speed_report`: their ``speed.md`` and plots.
- :mod:`~captum_jscopes.bench.faithfulness` and :mod:`~captum_jscopes.bench.report`: the paper's
  AOPC and leave-one-out protocol, and its summary, report and plots.
- :mod:`~captum_jscopes.bench.paper`: the paper's published numbers.

Run them with ``jscopes bench speed ...`` / ``jscopes bench faithfulness ...`` or
``python -m captum_jscopes.bench.speed ...`` / ``python -m captum_jscopes.bench.faithfulness ...``.
"""
