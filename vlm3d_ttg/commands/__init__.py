"""One module per CLI command; each only parses, loads and calls the library."""
