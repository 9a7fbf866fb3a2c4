"""Reading the night's work: every attempt of a branch, its noise, the one-line summary git shows."""
