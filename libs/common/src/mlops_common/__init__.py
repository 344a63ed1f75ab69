"""Code shared by at least two of the platform's services."""
