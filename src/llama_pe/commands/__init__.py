"""The llama-pe commands: the command line and what only it runs (study, show, bench, export, generate)."""
