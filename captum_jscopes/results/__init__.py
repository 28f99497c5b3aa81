"""What an attribution call returns: :class:`~.result.ScopeResult` (Captum's
``LLMAttributionResult`` with readable tokens and JSON) and its word and span
views (:mod:`.spans`)."""
