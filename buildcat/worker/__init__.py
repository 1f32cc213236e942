"""The worker: pulls tasks from the server (agent) and runs them in child processes (execute)."""
