"""brainfm.interfaces."""
