"""Lablink's hub side: the spawner, the demo authenticator and the hub configuration."""

from .spawner import LablinkSpawner

__all__ = ["LablinkSpawner"]
