"""The command lines: `kvm-conformance` (main.py, one module per subcommand) and `record-trace`.

Each subcommand module has `register(commands)`, which adds its parser to the subparsers action
and sets `command=` to a function taking the parsed arguments and returning the exit status.
"""
