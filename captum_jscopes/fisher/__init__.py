"""The Fisher matrix F of the next-token distribution and its estimators:
the F algebra (:mod:`.algebra`), the estimators, one class and module each
(:mod:`.estimators`), and the spectral view (:mod:`.components`; its picture is
:mod:`captum_jscopes.display.fisher_components`). The Fisher Scope itself is
:mod:`captum_jscopes.scopes.fisher`."""
