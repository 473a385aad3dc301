"""The Runner seam: where entrypoints run (the local thread pool, Ray replicas), and how they are imported and
placed on devices.
"""
