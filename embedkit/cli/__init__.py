"""The embedkit command line: one module per command group; heavy imports happen inside commands."""
