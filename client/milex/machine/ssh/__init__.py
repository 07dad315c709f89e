"""SSH to a machine with paramiko: reaching and logging in (auth), its errors, and the session."""
