"""Building blocks shared by the site file's models (no imports of the rest but
the pure :mod:`backend.addresses`)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict

from .addresses import is_local

NAME_PATTERN = r"^[a-z][a-z0-9-]{0,62}$"
# partitions, reservations, accounts and projects are named by the HPC site
SITE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class Strict(BaseModel):
    """A part of the site file: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def is_local_host(host: str) -> bool:
    """Loopback, link-local or unspecified, in any spelling: this machine, not a
    compute node or gateway."""
    return is_local(host)


def https_url(url: str) -> str:
    """``url`` if it is https, or plain http to this machine (where tokens do not cross
    a network); else ValueError with the sentence for the admin."""
    host = urlsplit(url).hostname or ""
    if url.startswith("http://") and not is_local_host(host):
        raise ValueError(
            "use https:// (plain http is allowed only for 127.0.0.1 and localhost, "
            "where tokens do not cross a network)"
        )
    return url


# a Kubernetes Service's name as pods of the cluster use it: `name` (same namespace),
# `name.namespace.svc`, `name.namespace.svc.<cluster domain>`
SERVICE_HOST = re.compile(
    r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
    r"(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.svc(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*)?$"
)


def service_url(url: str) -> str:
    """``url`` if :func:`https_url` takes it, or plain http to a Kubernetes Service of
    the cluster the caller runs in (the Helm chart's pods: NetworkPolicies keep their
    traffic inside the cluster); else ValueError with the sentence for the admin."""
    host = urlsplit(url).hostname or ""
    if url.startswith("http://") and SERVICE_HOST.match(host) and not is_local_host(host):
        return url
    try:
        return https_url(url)
    except ValueError:
        raise ValueError(
            "use https:// (plain http is allowed only for 127.0.0.1 and localhost, where "
            "tokens do not cross a network, and for a Kubernetes Service inside the cluster: "
            "`name`, `name.namespace.svc` or `name.namespace.svc.<cluster domain>`)"
        ) from None
