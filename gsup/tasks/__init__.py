"""Tasks: campaigns of units over transforms (stages), run by the daemon's task engine.

spec.py (task files and their checks), mergers.py (outputs merged as they land).
"""
