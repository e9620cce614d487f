"""``python -m cli`` runs the ``shredvault`` command."""

from cli.main import main

main()
