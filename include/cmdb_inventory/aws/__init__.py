"""AWS plumbing: the cross-account hook, its clients, and the one redaction of credentials."""
