"""Herald's operator CLI: ``python -m herald_cli <command>`` (redrive, quota)."""
