"""The `onysoft` CLI's commands, one module per concept: parse → operation (onysoft.operations) → render.

Each module has `register(commands, leaf)`, which adds its subcommands to the parser (onysoft_tools.cli
builds it); a command handler takes the parsed arguments and returns the exit code. A new flag is one
`add_argument` in `register` and one keyword passed to the operation.
"""
