"""``python -m vlmflow`` (and ``torchrun -m vlmflow``) runs the command line."""

from .cli import main

main()
