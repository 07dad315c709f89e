"""The machine configuration (`~/.milexconfig`): its file and types, and its editor."""
