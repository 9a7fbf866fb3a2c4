"""One module per subcommand: plain typed functions that gitar/cli/ wires to typer and tests call directly."""
