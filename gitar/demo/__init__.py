"""The demo workspace: the CPU preset and the embedded corpus."""
