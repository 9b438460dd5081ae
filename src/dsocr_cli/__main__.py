"""`python -m dsocr_cli` runs the same command line as `dsocr`."""

from dsocr_cli.cli import main

main()
