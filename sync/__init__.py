"""Store-and-forward: the SQLite buffer and the uploader."""
