"""GPU scale benchmark (see captum_jscopes/bench/gpu_scale.py and benchmarks/README.md)."""

from captum_jscopes.bench.gpu_scale import main

raise SystemExit(main())
