"""The only gitar code prepare.py and train.py import (the launcher, crash record, seed, smoke step,
devices, attention, packing, data ingestion): the rest of the package can change without breaking a
committed trainer or harness."""
