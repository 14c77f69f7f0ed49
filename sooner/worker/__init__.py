"""Running jobs: the worker loop, the script process and its protocol."""
