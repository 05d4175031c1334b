"""Trace documents <-> YAML files: the schema-versioned deterministic format and an atomic store."""
