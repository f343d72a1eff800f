"""AWS plumbing: the hooks, their clients, the measured botocore tuning, error codes, the one redactor."""
