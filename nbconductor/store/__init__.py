"""The run store: every SQL statement lives here (SQLite today), history, the review queue, report figures."""
