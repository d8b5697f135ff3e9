"""The UserLab Manager. Until its issue lands it answers only ``health``."""

from fastapi import FastAPI

from backend.service import health_only_app

DEFAULT_PORT = 8030


def create_app(token: str) -> FastAPI:
    return health_only_app("Lablink UserLab Manager", token)
