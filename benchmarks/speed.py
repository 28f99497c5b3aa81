"""Speed benchmark (see captum_jscopes/bench_speed.py and benchmarks/README.md)."""

from captum_jscopes.bench_speed import main

raise SystemExit(main())
