"""Pure arena logic, no I/O: prompts, instruction cleaning, schedule, de-dup keys,
decontamination, quality scores, verdicts, scoring and the battle decision, each unit tested with
hand-checked numbers."""
