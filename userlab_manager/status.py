"""What a lab's pod says, in words a person understands (pure functions).

``lab_status(pod)`` reads a pod (the JSON form the Kubernetes API returns:
camelCase keys) and gives the lab's state and one sentence:

==============  ===========================================================
``scheduling``  waiting for a node
``pulling``     a node was found; the image is being pulled, the container made
``starting``    the container runs; JupyterLab does not answer its probe yet
``ready``       JupyterLab answers (the pod is Ready)
``failed``      it cannot work: the image cannot be pulled, no node can take
                it, it ran out of memory, it keeps crashing
``ended``       the container has stopped by itself
``gone``        there is no pod (deleted, or never made)
==============  ===========================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .manifests import ANNOTATION_IMAGE, CONTAINER

ACTIVE = frozenset({"scheduling", "pulling", "starting", "ready"})
PULL_ERRORS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)
CONFIG_ERRORS = frozenset(
    {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
)


@dataclass(frozen=True)
class LabStatus:
    state: str
    message: str
    reason: str = ""
    pod_ip: str = ""


def _condition(pod: dict[str, Any], kind: str) -> dict[str, Any]:
    for cond in pod.get("status", {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    for cs in pod.get("status", {}).get("containerStatuses") or []:
        if cs.get("name") == CONTAINER:
            return dict(cs)
    return {}


def _memory_limit(pod: dict[str, Any]) -> str:
    for c in pod.get("spec", {}).get("containers") or []:
        if c.get("name") == CONTAINER:
            return str((c.get("resources") or {}).get("limits", {}).get("memory", "?"))
    return "?"


def _short(text: str | None, limit: int = 160) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def lab_status(pod: dict[str, Any] | None) -> LabStatus:
    if pod is None:
        return LabStatus("gone", "The lab's pod is gone.")
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return LabStatus("ended", "The lab's pod is being removed.")
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    ip = status.get("podIP") or ""
    image = pod.get("metadata", {}).get("annotations", {}).get(ANNOTATION_IMAGE, "the image")
    container = _container(pod)
    state = container.get("state") or {}
    waiting = state.get("waiting") or {}
    terminated = state.get("terminated") or (container.get("lastState") or {}).get("terminated")

    if terminated and terminated.get("reason") == "OOMKilled":
        return LabStatus(
            "failed",
            f"The lab ran out of memory (its limit is {_memory_limit(pod)}) and was stopped; "
            "choose a larger flavor or use less memory.",
            "OOMKilled",
        )
    reason = waiting.get("reason", "")
    if reason in PULL_ERRORS:
        return LabStatus(
            "failed",
            f"The image {image} cannot be pulled ({reason}: {_short(waiting.get('message'))}); "
            "check its name and tag, or choose another image.",
            reason,
        )
    if reason == "CrashLoopBackOff":
        return LabStatus(
            "failed",
            "JupyterLab keeps crashing in the lab's pod; the image may not contain "
            "jupyterhub-singleuser, or it fails at start.",
            reason,
        )
    if reason in CONFIG_ERRORS:
        return LabStatus(
            "failed",
            f"The lab's container cannot be created ({reason}: {_short(waiting.get('message'))}).",
            reason,
        )
    if phase in ("Succeeded", "Failed"):
        code = (terminated or {}).get("exitCode")
        how = f" with exit code {code}" if code is not None else ""
        return LabStatus("ended", f"JupyterLab in the lab's pod has ended{how}.", phase, ip)

    scheduled = _condition(pod, "PodScheduled")
    if scheduled.get("status") != "True":
        if scheduled.get("reason") == "Unschedulable":
            return LabStatus(
                "failed",
                "No node of the cluster can take this lab now "
                f"({_short(scheduled.get('message'))}); choose a smaller flavor or try later.",
                "Unschedulable",
            )
        return LabStatus("scheduling", "Waiting for a node of the cluster to take the lab.")
    if phase == "Pending":
        if reason in ("", "ContainerCreating", "PodInitializing"):
            return LabStatus("pulling", f"Pulling the image {image} and starting the container.")
        return LabStatus("pulling", f"Starting the container ({reason}).", reason)
    if _condition(pod, "Ready").get("status") == "True":
        return LabStatus("ready", "JupyterLab answers in the lab's pod.", "", ip)
    return LabStatus("starting", "The container runs; waiting for JupyterLab to answer.", "", ip)
