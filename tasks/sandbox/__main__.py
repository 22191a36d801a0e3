"""``python -m tasks.sandbox [--port 8025] [--smtp-port 8026] [--latency-ms 50] ...`` (see ``--help``)."""

from tasks.sandbox.cli import main

main()
