"""``python -m shredvault`` runs the ``shredvault`` command."""

from .cli.main import main

main()
