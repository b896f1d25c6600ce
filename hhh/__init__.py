"""hhh: the command line and what the three components share."""
