"""Faust agents, one stream per module, found by autodiscover."""
