"""Warm the image cache of the hosts a cycle is about to build on.

Before a cycle's builds start, every (hypervisor, image) pair among them
whose host does not list the image in its facts yet (a pool moved to a new
image, or a host builds a flavor for the first time) gets a ``prefetch``, at
most ``parallel`` at once: so the image server sees a bounded number of
downloads however many VMs roll over, and a corrupt or unreachable image is
found once per host, before any VM is defined for it. Builds on a host whose
prefetch failed are left for a later cycle (and reported); the other hosts
build.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from warmcache.builders.plan import PlannedVm
from warmcache.errors import AgentError
from warmcache.images import Image
from warmcache.logs import in_context
from warmcache.ports import HostAgent

Emit = Callable[..., None]


def images_to_prefetch(
    builds: Sequence[PlannedVm], images: Mapping[str, Image]
) -> dict[tuple[str, str], Image]:
    """(hypervisor, sha256) -> image, for each planned build whose host does
    not hold its flavor's image yet."""
    wanted: dict[tuple[str, str], Image] = {}
    for vm in builds:
        image = images.get(vm.flavor.image_id) if vm.flavor.image_id else None
        if image is not None and image.sha256 not in vm.host.images:
            wanted[(vm.host.hypervisor, image.sha256)] = image
    return wanted


def prefetch_images(
    wanted: Mapping[tuple[str, str], Image],
    agents: Mapping[str, HostAgent],
    *,
    parallel: int,
    lost: threading.Event,
    emit: Emit,
) -> dict[tuple[str, str], str]:
    """Ask each host for its images, ``parallel`` at once; the pairs that
    failed, with why (nothing is asked once leadership is lost)."""
    failed: dict[tuple[str, str], str] = {}
    lock = threading.Lock()

    def one(item: tuple[tuple[str, str], Image]) -> None:
        (hypervisor, sha256), image = item
        if lost.is_set():
            with lock:
                failed[(hypervisor, sha256)] = "leadership lost before the prefetch"
            return
        agent = agents.get(hypervisor)
        started = time.monotonic()
        try:
            if agent is None:
                raise AgentError(hypervisor, "not heartbeating")
            agent.prefetch(image)
        except AgentError as exc:
            with lock:
                failed[(hypervisor, sha256)] = str(exc)
            emit(
                "image.prefetch_failed",
                image=image.id,
                sha256=image.sha256,
                hypervisor=hypervisor,
                code=exc.code,
                error=str(exc),
            )
            return
        emit(
            "image.prefetched",
            image=image.id,
            sha256=image.sha256,
            hypervisor=hypervisor,
            duration_s=round(time.monotonic() - started, 3),
        )

    if wanted:
        with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
            for _ in pool.map(in_context(one), sorted(wanted.items())):
                pass
    return failed
