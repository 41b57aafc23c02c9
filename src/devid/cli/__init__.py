"""The `devid` command line: thin Typer commands over the authority, factory and store."""
