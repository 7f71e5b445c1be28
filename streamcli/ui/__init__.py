"""Terminal renderables used by the CLI only: progress bars, tables, the REPL."""
