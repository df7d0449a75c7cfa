"""The ``grounding`` command."""
