"""The only gitar code prepare.py and train.py build on: best-fit packing and platform detection."""
