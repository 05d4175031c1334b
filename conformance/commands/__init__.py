"""One module per `kvm-conformance` subcommand.

Each module has `register(commands)`, which adds its parser to the subparsers action and sets
`command=` to a function taking the parsed arguments and returning the exit status.
"""
