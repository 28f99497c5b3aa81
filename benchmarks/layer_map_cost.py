"""Cost of layer_map against attribute on one 100-token LAMBADA passage (SmolLM2, 1 thread, medians of 3).

    .venv/bin/python benchmarks/layer_map_cost.py
"""
import time, torch, statistics
torch.set_num_threads(1)
from captum_jscopes import SemanticScope, FisherScope, layer_map, load_model
from captum_jscopes.runs.prompts import load_prompts
model, tok = load_model(progress=False)
ids = tok(load_prompts("lambada", 1)[0].text, return_tensors="pt").input_ids[:, -100:]
for name, scope, opts in [("semantic", SemanticScope(model, tok), {}), ("fisher eig1", FisherScope(model, tok), {"estimator": "eig", "k": 1}), ("fisher default", FisherScope(model, tok), {})]:
    scope.attribute(ids, **opts); layer_map(scope, ids, **opts)
    a, l = [], []
    for _ in range(3):
        t = time.perf_counter(); scope.attribute(ids, **opts); a.append(time.perf_counter() - t)
        t = time.perf_counter(); layer_map(scope, ids, **opts); l.append(time.perf_counter() - t)
    print(f"{name}: attribute {statistics.median(a):.3f} s, layer_map {statistics.median(l):.3f} s, ratio {statistics.median(l)/statistics.median(a):.2f}")
