"""Allow ``python -m showerformer``."""

from showerformer.cli import main

main()
