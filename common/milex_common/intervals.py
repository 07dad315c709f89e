"""How often the agent asks the scheduler, and when it leaves: defaults every way of starting it shares."""

POLL_INTERVAL = 2.0  # seconds between polls while states change
# The back-off ceiling while nothing changes: a job's end is seen at most this late. One squeue of
# the user's jobs every 10 s is far below what sites ask of tools.
MAX_POLL_INTERVAL = 10.0
# An agent with no unfinished job, no submission, no client following it and no request for this
# long exits (login nodes frown on idle daemons); the next command starts it again. 0: never.
IDLE_EXIT = 3600.0
# How often the agent checks that its directory and journal are still its own (one stat each).
HOME_CHECK_INTERVAL = 5.0
LEAVE_CHECK_INTERVAL = 1.0  # a command on another login node waits this long at most for the agent to notice
# How long a submission keeps looking up a job whose sbatch got no answer while the controller stays
# silent, before it answers with the jobs submitted so far (the agent keeps resolving the rest).
SUBMIT_RETRY = 300.0
# How long the controller must have answered again before a lookup that misses a job proves it was
# never received: requests queued while it was stopped are processed within this after it resumes.
CONTROLLER_SETTLE = 5.0
# How long the agent's check of the apps' versions in a machine's environment may take (its env_command
# and one Python per app); the client waits this long and a little more for the answer.
APP_VERSIONS_TIMEOUT = 30.0
