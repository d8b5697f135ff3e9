"""The site file's parts for cloud systems (``kind: kubernetes``) and the UserLab
Manager that starts their labs as pods.

Example::

    userlab_manager:
      url: http://127.0.0.1:8030
      token_env: LABLINK_USERLAB_MANAGER_TOKEN
      kubeconfig: /etc/lablink/kubeconfig      # unset: in-cluster, else ~/.kube/config
    systems:
      cloud:
        kind: kubernetes
        display_name: HDF Cloud
        namespace: lablink-labs
        flavors:
          small: {cpu: 1, memory: 2}           # cores and GiB (limits)
          gpu: {cpu: 8, memory: 32, gpus: 1, cpu_request: 4, memory_request: 16}
        images:
          - {image: "quay.io/jupyter/scipy-notebook:2025-01-06", display_name: SciPy}
        image_patterns: ["quay.io/jupyter/*"]   # more a person may type
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ...config_base import Strict, service_url
from ..base import SystemSettings

# a minute more than the backend's own limits: its sentence reaches the person first
HUB_MARGIN = 60.0

# a container image reference: [registry[:port]/]path[:tag][@sha256:digest], lower-case
# path components as the distribution spec has them (no shell characters, no spaces)
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REFERENCE = re.compile(
    rf"^(?:[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?(?::[0-9]{{1,5}})?/)?"
    rf"{_COMPONENT}(?:/{_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
    r"(?:@sha256:[a-f0-9]{64})?$"
)
MAX_IMAGE = 255


def is_image_reference(text: str) -> bool:
    return len(text) <= MAX_IMAGE and IMAGE_REFERENCE.match(text) is not None


class Flavor(Strict):
    """A size of lab: CPU and memory limits (and what the scheduler reserves), GPUs."""

    display_name: str = Field(default="", description="the name people see; unset: the key")
    description: str = Field(default="", description="one line shown beside the name")
    cpu: float = Field(gt=0, le=512, description="CPU cores the lab may use at most (limit)")
    memory: float = Field(gt=0, le=4096, description="GiB of memory the lab may use (limit)")
    cpu_request: float | None = Field(
        default=None, gt=0, le=512, description="cores reserved for it; unset: `cpu`"
    )
    memory_request: float | None = Field(
        default=None, gt=0, le=4096, description="GiB reserved for it; unset: `memory`"
    )
    gpus: int = Field(default=0, ge=0, le=16, description="GPUs (requests and limits alike)")

    @model_validator(mode="after")
    def _requests_within_limits(self) -> Flavor:
        if self.cpu_request is not None and self.cpu_request > self.cpu:
            raise ValueError(f"cpu_request ({self.cpu_request}) must not be above cpu ({self.cpu})")
        if self.memory_request is not None and self.memory_request > self.memory:
            raise ValueError(
                f"memory_request ({self.memory_request}) must not be above memory ({self.memory})"
            )
        return self


class LabImage(Strict):
    """An image the form offers."""

    image: str = Field(max_length=MAX_IMAGE, description="the image reference")
    display_name: str = Field(default="", description="the name people see; unset: the image")
    description: str = Field(default="", description="one line shown beside the name")

    @model_validator(mode="after")
    def _reference(self) -> LabImage:
        if not is_image_reference(self.image):
            raise ValueError(f"{self.image!r} is not an image reference (registry/path:tag)")
        return self


class KubernetesSystem(SystemSettings):
    """Labs as pods on a Kubernetes cluster, started by the UserLab Manager."""

    kind: Literal["kubernetes"] = Field(
        description="'kubernetes': each lab is a pod, started by the UserLab Manager"
    )
    namespace: str = Field(
        default="lablink",
        pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
        description="the namespace the lab pods run in",
    )
    flavors: dict[str, Flavor] = Field(min_length=1, description="lab sizes, by name")
    images: list[LabImage] = Field(min_length=1, description="images the form offers")
    image_patterns: list[str] = Field(
        default_factory=list,
        description="shell-style patterns of further image references a person may ask for",
    )
    environment: dict[str, str] = Field(
        default_factory=dict, description="variables for every lab (the hub's come on top)"
    )
    port: int = Field(default=8888, ge=1024, le=65535, description="the port JupyterLab serves")
    gpu_resource: str = Field(
        default="nvidia.com/gpu",
        pattern=r"^[a-z0-9.-]+/[a-z0-9.-]+$",
        description="the extended resource name of a GPU",
    )
    reach: Literal["pod_ip", "service"] = Field(
        default="service",
        description="how the hub reaches a lab: its service's cluster DNS name (the hub runs "
        "in the cluster) or the pod's IP",
    )
    start_timeout: float = Field(
        default=600,
        gt=0,
        le=7200,
        description="seconds from the request to an answering lab (image pulls included)",
    )
    poll_interval: float = Field(
        default=1.0, gt=0, le=60, description="seconds between looks at a starting lab"
    )
    retry_for: float = Field(
        default=60, ge=0, le=3600, description="seconds to retry an unreachable UserLab Manager"
    )

    def peers(self) -> frozenset[str]:
        return frozenset({"userlab_manager"})

    def vo_choices(self) -> dict[str, list[str]]:
        return {"flavors": list(self.flavors)}

    def choice(self, options: Mapping[str, Any]) -> str:
        return str(options.get("flavor") or "")

    def choice_name(self, options: Mapping[str, Any]) -> str | None:
        name = str(options.get("flavor", ""))
        flavor = self.flavors.get(name)
        return (flavor.display_name or name) if flavor is not None else (name or None)

    def start_limit(self) -> float:
        return self.start_timeout + 2 * self.retry_for + HUB_MARGIN

    def image_allowed(self, image: str) -> bool:
        return any(i.image == image for i in self.images) or any(
            fnmatch.fnmatchcase(image, pattern) for pattern in self.image_patterns
        )


class UserlabManager(Strict):
    """Where the backend finds the UserLab Manager, and how it reaches Kubernetes."""

    url: str = Field(
        default="http://127.0.0.1:8030",
        pattern=r"^https?://[^\s/]+/?$",
        description="the UserLab Manager's base URL: https://, or http:// on this machine or "
        "to a Kubernetes Service of the cluster (`name`, `name.namespace.svc`)",
    )
    ca_bundle: str = Field(
        default="", description="a CA file for the manager's TLS certificate; unset: the system's"
    )

    @field_validator("url")
    @classmethod
    def _remote_is_tls(cls, url: str) -> str:
        return service_url(url)

    token_env: str = Field(
        default="LABLINK_USERLAB_MANAGER_TOKEN",
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="the environment variable holding the token between backend and manager",
    )
    kubeconfig: str | None = Field(
        default=None,
        description="the manager's kubeconfig file; unset: the in-cluster service account, "
        "else ~/.kube/config",
    )
    run_as_user: int = Field(default=1000, ge=1, description="the labs' Unix user id (non-root)")
    run_as_group: int = Field(default=100, ge=0, description="the labs' Unix group id")
