"""One module per ``ceindex`` subcommand."""
