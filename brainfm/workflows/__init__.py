"""brainfm.workflows."""
