"""The PostgreSQL backend of the state (issue 15): schema and lease so far.

(The design note for the next wave follows in this docstring.)
"""
