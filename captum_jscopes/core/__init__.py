"""The engine every scope runs on: the one forward pass kept for vector-Jacobian
products (:mod:`.forward`), the guard that leaves the caller's model as it was
(:mod:`.model_state`), token and target handling (:mod:`.tokens`), and every use
of Captum's private API (:mod:`.captum_compat`)."""
