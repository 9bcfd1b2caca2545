"""Wharf broker."""
