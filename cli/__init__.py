"""sdbatch.cli: the command line, and the composition root (the one package that knows every other)."""
