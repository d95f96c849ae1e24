"""`python -m mtv.cli ...`, the same as the `mtv` command."""

from mtv.cli import main

main()
