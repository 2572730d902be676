"""brainfm.bidsapp."""
