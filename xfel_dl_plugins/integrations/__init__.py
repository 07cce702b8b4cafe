"""Glue to the facility's automation: DAMNIT context files."""
