"""Analyses built on the scopes: how far a map holds (:mod:`.linearity`) and
maps over a time series (:mod:`.timeseries`)."""
