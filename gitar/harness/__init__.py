"""What prepare.py is built from: best-fit packing with its prefetch thread (packing.py) and the
choice of device, number format, attention kernel and compiler (platform.py)."""
