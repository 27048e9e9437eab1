"""This host's node: its state, joining and leaving, its agent and (while a manager) its manager."""
