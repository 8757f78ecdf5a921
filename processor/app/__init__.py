"""The application: the composition root and the command line (``cli``), and ``doctor``'s checks."""
