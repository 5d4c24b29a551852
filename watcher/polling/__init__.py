"""Pollers: whom to ask about which run, when, and what an answer means."""
