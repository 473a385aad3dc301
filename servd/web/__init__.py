"""The web front: the Tornado app, its listener, the guards, the live feed, and one handler module per protocol."""
