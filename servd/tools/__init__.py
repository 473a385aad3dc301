"""Commands that drive servd from outside: status, docs, bench, tune. Client side: they import nothing of the server."""
