"""This machine: the lock, the running state, signals, processes, the sandbox and limits a confined process runs under."""
