"""brainfm.processing."""
