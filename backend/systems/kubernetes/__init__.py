"""Kind ``kubernetes``: each lab is a pod (and a service) on a Kubernetes cluster,
started by the UserLab Manager (``userlab_manager/``)."""

from __future__ import annotations

from typing import Any, ClassVar

from ..base import (
    OptionError,
    SystemKind,
    Viewer,
    amount,
    choice,
    choose,
    listed,
    number_field,
    select_field,
    shown,
)
from .config import MAX_IMAGE, Flavor, KubernetesSystem, is_image_reference
from .driver import KubernetesDriver


def flavors_of(name: str, system: KubernetesSystem, who: Viewer) -> dict[str, Flavor]:
    """The flavors the VO lets this person use (none larger than its maxima)."""
    q = who.quota
    return {
        fname: f
        for fname, f in system.flavors.items()
        if who.allows("flavors", name, fname)
        and (q is None or q.cpu is None or f.cpu <= q.cpu)
        and (q is None or q.memory is None or f.memory <= q.memory)
        and (q is None or q.gpus is None or f.gpus <= q.gpus)
    }


def flavor_size(f: Flavor) -> str:
    """ "2 cores, 4 GiB, 1 GPU"."""
    cores = "core" if f.cpu == 1 else "cores"
    size = f"{f.cpu:g} {cores}, {f.memory:g} GiB"
    if f.gpus:
        size += f", {f.gpus} GPU" + ("s" if f.gpus > 1 else "")
    return size


class KubernetesKind(SystemKind[KubernetesSystem]):
    name: ClassVar[str] = "kubernetes"
    summary: ClassVar[str] = (
        "a lab is a pod on a Kubernetes cluster, started by the UserLab Manager"
    )
    settings = KubernetesSystem
    driver = KubernetesDriver
    option_keys: ClassVar[tuple[str, ...]] = ("system", "flavor", "image", "cpu", "memory")

    def entry(self, name: str, system: KubernetesSystem, who: Viewer) -> dict[str, Any] | None:
        flavors = flavors_of(name, system, who)
        if not flavors:
            return None
        first = next(iter(flavors.values()))
        other = None
        if system.image_patterns:
            other = {
                "label": "Or another image",
                "placeholder": ", ".join(system.image_patterns),
                "maxlength": MAX_IMAGE,
            }
        fields = [
            select_field(
                "flavor",
                "Flavor",
                [
                    choice(
                        fname,
                        f"{f.display_name or fname} ({flavor_size(f)})",
                        f.description,
                        sets={"cpu": {"max": f.cpu}, "memory": {"max": f.memory}},
                    )
                    for fname, f in flavors.items()
                ],
            ),
            select_field(
                "image",
                "Image",
                [choice(i.image, i.display_name or i.image, i.description) for i in system.images],
                other=other,
            ),
            number_field(
                "cpu",
                "CPU cores",
                minimum=0.5,
                maximum=first.cpu,
                default=None,
                step=0.5,
                help="empty: the flavor's",
            ),
            number_field(
                "memory",
                "Memory",
                minimum=0.5,
                maximum=first.memory,
                default=None,
                step=0.5,
                unit="GiB",
                help="empty: the flavor's",
            ),
        ]
        return {
            "flavors": [
                {
                    "name": fname,
                    "display_name": f.display_name or fname,
                    "description": f.description,
                    "cpu": f.cpu,
                    "memory": f.memory,
                    "gpus": f.gpus,
                }
                for fname, f in flavors.items()
            ],
            "images": [
                {
                    "image": i.image,
                    "display_name": i.display_name or i.image,
                    "description": i.description,
                }
                for i in system.images
            ],
            "image_patterns": system.image_patterns,
            "fields": fields,
        }

    def check(
        self, name: str, system: KubernetesSystem, options: dict[str, Any], who: Viewer
    ) -> dict[str, Any]:
        clean: dict[str, Any] = {"system": name}
        shown_name = system.display_name or name
        flavors = flavors_of(name, system, who)
        flavor_name = choose(
            "flavor",
            "Flavor",
            options.get("flavor"),
            {f: flavor.display_name or f for f, flavor in flavors.items()},
            f"on system {shown_name}{who.in_vo}",
        )
        flavor = flavors[flavor_name]
        clean["flavor"] = flavor_name
        image = options.get("image")
        if image in (None, ""):
            image = system.images[0].image
        if not isinstance(image, str) or not is_image_reference(image):
            raise OptionError(
                "image",
                f"Image: {shown(image)} is not an image reference; type registry/path:tag "
                f"in lower case, at most {MAX_IMAGE} characters.",
            )
        if not system.image_allowed(image):
            offered = [i.display_name or i.image for i in system.images]
            offered += [f"an image matching {p}" for p in system.image_patterns]
            raise OptionError(
                "image",
                f"Image: {shown(image)} is not allowed on system {shown_name}; "
                f"choose {listed(offered)}.",
            )
        clean["image"] = image
        where = f"flavor {flavor.display_name or flavor_name}"
        clean["cpu"] = amount("cpu", "CPU cores", options.get("cpu"), flavor.cpu, "cores", where)
        clean["memory"] = amount(
            "memory", "Memory", options.get("memory"), flavor.memory, "GiB", where
        )
        return clean


KIND = KubernetesKind()
