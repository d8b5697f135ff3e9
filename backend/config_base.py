"""Building blocks shared by the site file's models (no imports of the rest)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

NAME_PATTERN = r"^[a-z][a-z0-9-]{0,62}$"
# partitions, reservations, accounts and projects are named by the HPC site
SITE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class Strict(BaseModel):
    """A part of the site file: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)
