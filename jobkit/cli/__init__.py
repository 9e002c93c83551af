"""jobkit's command line."""
