"""Shared data, no I/O: errors, tracer events, the trace document and its call readers, symbolic
names and the YAML flow writer. Every stage above reads and writes these; this stage imports only
the ABI."""
