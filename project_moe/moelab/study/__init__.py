"""The study: grid definitions, the sweep runner, run logs as DataFrames, figures, the report, sharpness."""
