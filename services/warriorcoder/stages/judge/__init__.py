"""The judge: every uninvolved judge compares the two answers."""
