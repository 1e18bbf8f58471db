"""The README's examples, one file per code block, each run by ``tests/examples/test_readme.py``."""
