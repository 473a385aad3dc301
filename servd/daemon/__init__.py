"""The daemon: owns the running spec and endpoints; loading, reload, the file watcher, systemd, auth, host warnings."""
