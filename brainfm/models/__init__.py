"""brainfm.models."""
