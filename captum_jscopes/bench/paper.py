"""The paper's published numbers (arXiv 2601.16407), keyed by OUR method names,
for the reports' "beside the paper" tables. docs/method.md restates them with
their context."""

from __future__ import annotations

#: The paper's four models, the columns of its AOPC table.
PAPER_MODELS = ("Llama-3.2-1B", "Llama-3.2-3B", "Qwen2.5-1.5B", "gemma-3-1b-pt")

#: Published AOPC on LAMBADA-1000, one value per model of :data:`PAPER_MODELS`.
PAPER_AOPC = {
    "random": (-0.261, -0.229, -0.349, -0.418),
    "ig5": (-1.095, -0.672, -1.714, -0.639),
    "grad_x_input": (-1.284, -1.119, -1.720, -1.561),
    "semantic": (-1.298, -1.162, -1.682, -1.635),
    "temperature": (-1.317, -1.173, -1.861, -1.662),
    "fisher_eig1": (-1.320, -1.175, -1.775, -1.670),
}

#: How the paper names those methods.
PAPER_AOPC_NAMES = {
    "random": "random",
    "ig5": "IG (5 steps, weak)",
    "grad_x_input": "gradient x input",
    "semantic": "Semantic",
    "temperature": "Temperature",
    "fisher_eig1": "Fisher k=1",
}

#: Published LOO agreement, LAMBADA-1000, Llama-3.2-1B: (paper's row name,
#: top-1 LOO percentile, Spearman rho), keyed by the closest method of ours.
#: The paper's Fisher row is k=4 and its IG row 10 steps: neither is run here exactly.
PAPER_LOO = {
    "fisher": ("Fisher k=4", 5.45, 0.590),
    "semantic": ("Semantic", 6.55, 0.562),
    "grad_x_input": ("gradient x input", 5.71, 0.556),
    "temperature": ("Temperature", 7.96, 0.550),
    "ig5": ("IG (10 steps)", 29.5, 0.300),
    "random": ("random", 48.9, 0.0),
}
