"""What every process shares: the messages between them (protocol), the per-worker
counters (counters), the settings (config), the state file (state), what a pre_fork
hook leaves for its worker (hookstate), a process's memory cgroup (cgroup), Linux
specifics (_linux).
"""
