"""The command line: Typer adapters over the same service functions the HTTP API uses."""
