"""servd.yaml as typed values: the schema, the frozen spec, the reload plan, byte-preserving edits. Pure."""
