"""``python -m worker`` = ``lth worker`` (used by ``lth serve`` to start its worker)."""

from worker.cli import main

main()
