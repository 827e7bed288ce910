"""Fixtures of the center tests."""

from tests.centers.plugins import plugin

__all__ = ["plugin"]
