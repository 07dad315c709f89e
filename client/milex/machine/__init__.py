"""The road to a machine: SSH, the tunnel, the shell over it, and the agent there (endpoint is the entry)."""
