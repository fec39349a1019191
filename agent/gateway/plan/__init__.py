"""What the gateway decides, made from values only: no I/O (tests/unit/test_layout.py)."""
