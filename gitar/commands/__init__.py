"""One module per subcommand: plain typed functions that cli.py wires to typer and tests call directly."""
