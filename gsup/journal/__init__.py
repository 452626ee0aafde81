"""The journal: one SQLite file, written by the supervisor only, read by anyone.

- schema.py      the peewee models: the one definition of the tables
- migrations.py  opening the journal for the daemon: create, or upgrade in place
- queries.py     every read, as plain SQL over a sqlite3 connection, shared by the
                 daemon and the CLI (which must not pay for importing peewee)
- writer.py      the supervisor's writes: one transaction per turn of its loop

This package's own import is empty, so that `gsup.journal.queries` stays light.
"""
