"""Exit codes of a run, shared by every command of the study."""
EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_PEER_FAILED = 2, 3, 4
