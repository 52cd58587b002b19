"""Exit codes, the same meaning for every command (README, "Exit codes")."""

OK = 0
ROWS_FAILED = 1  # finished, but some rows failed (their error rows say why); verify: problems found
REFUSED = 2  # refused before any work: bad input or options, unreadable OUT, a model that cannot load
INCOMPLETE = 3  # shards not yet committed: running, or stopped (the same run command resumes)
INTERRUPTED = 130  # Ctrl-C or SIGTERM: committed shards kept, a rerun resumes
