"""Example entrypoints served by the default servd.yaml and used by the tests."""
