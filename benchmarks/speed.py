"""Speed benchmark (see captum_jscopes/bench/speed.py and benchmarks/README.md)."""

from captum_jscopes.bench.speed import main

raise SystemExit(main())
