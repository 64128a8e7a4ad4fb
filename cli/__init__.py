"""Entry points: the ``inferpool`` command and what runs only inside a command (up, demo, status view, health)."""
