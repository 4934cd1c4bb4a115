"""The data stage: rows from files or the Hub -> validated conversations -> token ids with a loss mask."""
