"""The `extremeaug` command line: a front end over the stages (main) and over the labeling project (project)."""
