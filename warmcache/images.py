"""Images (DESIGN.md §4, §10): what a flavor's VMs boot from.

An image record lives in the flavor catalog beside the flavors that name
it. Agents fetch the image (and its ``boot`` kernel and initrd, if it ships
them) from ``source``, verify every byte against ``sha256`` before anything
boots from it, and keep it in a content-addressed cache: the sha256 is the
image's identity on a host, the ``id`` is only its name in the catalog (so
re-pointing an id at new bytes is a new image, and the pools built from the
old bytes roll over).

Pure data and validation: no I/O.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from warmcache.errors import InvalidRequest
from warmcache.model import NAME_PATTERN, DiskGiB, Flavor

SHA256_PATTERN = r"^[0-9a-f]{64}$"
# What one image file may be: the largest cloud images are tens of GiB.
MAX_IMAGE_BYTES = 1 << 40
MAX_BOOT_FILE_BYTES = 1 << 30
ImageFormat = Literal["qcow2", "raw"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


def check_source(value: str) -> str:
    """An absolute path, a ``file://`` URL of one, or an ``https://`` URL:
    nothing else is fetched (plain http could be changed on the way; the
    sha256 would catch it, but only after the download)."""
    if any(ord(c) < 0x20 or c == "\x7f" for c in value):
        raise ValueError("source must not contain control characters")
    if value.startswith("https://"):
        if len(value) <= len("https://") or value[len("https://")] in "/?#":
            raise ValueError("an https:// source needs a host")
        return value
    path = value.removeprefix("file://")
    if not path.startswith("/"):
        raise ValueError("source must be an absolute path, a file:// URL or an https:// URL")
    if "/../" in f"{path}/" or "/./" in f"{path}/":
        raise ValueError("source paths must be normalised (no . or .. parts)")
    return value


Source = Annotated[str, Field(min_length=1, max_length=2048), AfterValidator(check_source)]


class ImageFile(_Frozen):
    """A kernel or initrd shipped beside an image (OpenStack's kernel_id /
    ramdisk_id): fetched and verified like the image itself."""

    source: Source
    sha256: str = Field(pattern=SHA256_PATTERN)
    size_bytes: int = Field(ge=1, le=MAX_BOOT_FILE_BYTES)


class BootFiles(_Frozen):
    """Direct kernel boot with the root on the VM's own disk, for images
    without a bootloader of their own."""

    kernel: ImageFile
    initrd: ImageFile | None = None
    cmdline: str = Field(default="console=ttyS0", max_length=1024)

    @field_validator("cmdline")
    @classmethod
    def _printable(cls, value: str) -> str:
        if not re.fullmatch(r"[\x20-\x7e]*", value):
            raise ValueError("cmdline must be printable ASCII")
        return value


class Image(_Frozen):
    """One image of the catalog.

    ``size_bytes`` is the file's exact size: a download of any other size is
    refused (truncated, or not what was registered). ``min_disk_gib``: a
    flavor naming this image needs at least this root disk.
    """

    id: str = Field(pattern=NAME_PATTERN)
    source: Source
    sha256: str = Field(pattern=SHA256_PATTERN)
    format: ImageFormat
    size_bytes: int = Field(ge=1, le=MAX_IMAGE_BYTES)
    min_disk_gib: DiskGiB = 1
    boot: BootFiles | None = None

    @property
    def digest(self) -> str:
        """What a VM built from this image boots, as one string: the image's
        sha256 and those of its boot files and command line. Part of a
        pool's generation: any change is a new image."""
        if self.boot is None:
            return self.sha256
        boot = self.boot
        what = {
            "image": self.sha256,
            "kernel": boot.kernel.sha256,
            "initrd": boot.initrd.sha256 if boot.initrd else None,
            "cmdline": boot.cmdline,
        }
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def image_digest(flavor: Flavor, images: Mapping[str, Image]) -> str:
    """The digest of what ``flavor``'s VMs boot ("" without an image, or
    with one the catalog does not hold)."""
    image = images.get(flavor.image_id) if flavor.image_id else None
    return image.digest if image is not None else ""


def flavor_problems(flavor: Flavor, images: Mapping[str, Image]) -> list[str]:
    """Why ``flavor`` cannot be in a catalog holding ``images`` (empty: it can).
    A flavor with no ``image_id`` boots a blank root disk (or the agent's
    fallback kernel); one naming an image needs it in the catalog, and a
    root disk at least as large as the image asks."""
    if not flavor.image_id:
        return []
    image = images.get(flavor.image_id)
    if image is None:
        known = ", ".join(sorted(images)) or "none"
        return [f"flavor {flavor.name}: unknown image {flavor.image_id!r} (known: {known})"]
    if flavor.disk_gib < image.min_disk_gib:
        return [
            f"flavor {flavor.name}: disk_gib {flavor.disk_gib} is below image "
            f"{image.id}'s min_disk_gib {image.min_disk_gib}"
        ]
    return []


def catalog_problems(flavors: Mapping[str, Flavor], images: Mapping[str, Image]) -> list[str]:
    """Every flavor that names an unknown image or too small a disk."""
    return [p for name in sorted(flavors) for p in flavor_problems(flavors[name], images)]


def require_consistent(problems: list[str]) -> None:
    """``InvalidRequest`` listing ``problems`` (from ``flavor_problems`` or
    ``catalog_problems``) when there are any: the catalog change is refused."""
    if problems:
        raise InvalidRequest(
            "the catalog would not be consistent; nothing was changed",
            [{"loc": ["catalog"], "msg": p, "type": "catalog"} for p in problems],
        )
