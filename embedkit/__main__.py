"""``python -m embedkit`` (and ``torchrun -m embedkit``) runs the CLI."""
from embedkit.cli.main import main

main()
