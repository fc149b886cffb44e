"""The ``lth`` client commands (submit, jobs, datasets, models), built on :mod:`client.sdk`.

Each module holds one command or command group; ``client.cli.COMMANDS`` imports them lazily.
"""
