"""brainfm.importers."""
