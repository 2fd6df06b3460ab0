"""Developer tools (dataset reader, fixture training); not part of the installed product."""
