"""Package data: the JSON Schema of servd.yaml, installed as servd._schemas."""
