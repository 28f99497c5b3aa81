"""The Jacobian Scopes: the base class (:mod:`.base`), one module per scope
(:mod:`.semantic`, :mod:`.temperature`, :mod:`.fisher`) and the one table of
them (:mod:`.registry`), which the CLI, the datasets, the benchmarks and the
Inseq methods read."""
