"""Helpers for tests that drive the dispatcher's Worker directly."""


async def no_redelivery(order: object) -> None:
    """Checkpoint fetcher for orders that are never redelivered: the worker must not ask."""
    raise AssertionError("checkpoints fetched for a first delivery")
