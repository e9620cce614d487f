"""``python -m shredvault.cli`` runs the ``shredvault`` command."""

from .main import main

main()
