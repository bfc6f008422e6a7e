"""``python -m exomiri``: the command line."""

from .cli import main

main()
