"""Training one run: its config and command line, the step, the trainer, evaluation, the files of a run."""
