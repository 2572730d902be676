"""brainfm.reports."""
