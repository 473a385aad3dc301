"""`servd tune`: a pure search over settings, driven against a running daemon through its config file."""
