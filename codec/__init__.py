"""tokenwave codec: audio <-> discrete tokens."""
