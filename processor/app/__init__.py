"""The composition root (``compose``); the commands live in ``processor.cli``."""
