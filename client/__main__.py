"""``python -m client`` = ``lth``."""

from client.cli import main

main()
