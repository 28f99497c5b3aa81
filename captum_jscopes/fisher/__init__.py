"""The Fisher matrix F of the next-token distribution and its estimators:
the F algebra, the estimators (one object each) and the spectral view
(:mod:`.components`). The Fisher Scope itself is :mod:`captum_jscopes.scopes.fisher`."""
