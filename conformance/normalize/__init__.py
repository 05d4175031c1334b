"""Events -> trace document: fd, thread and address roles, names for flags and enums, the
strace-log importer, and capture (trace a command into a document)."""
