"""`gsup web`: the read-only dashboard (app.py), its pages and its event stream."""
