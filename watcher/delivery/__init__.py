"""Delivery: the outbox dispatcher, its pacing and retries, and digests."""
