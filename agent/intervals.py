"""How often the agent asks the scheduler: the defaults every way of starting it shares."""

POLL_INTERVAL = 2.0  # seconds between polls while states change
# The back-off ceiling while nothing changes: a job's end is seen at most this late. One squeue of
# the user's jobs every 10 s is far below what sites ask of tools.
MAX_POLL_INTERVAL = 10.0
