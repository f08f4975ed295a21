"""What the node records: the database (SQLite or PostgreSQL), the job, instance and delivery records, and their states."""
