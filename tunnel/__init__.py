"""Lablink's SSH tunnel service (asyncssh port forwards through login nodes)."""
