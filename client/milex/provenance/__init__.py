"""Which code a job ran: its app's provenance read when it is recorded (app), checked against the
machine's before a run (check), and shown beside the agent's view of the job (shown)."""
