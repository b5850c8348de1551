"""The host-agent wire schema, shared by ``agent/`` and ``AgentClient``.

Framing: one JSON object per line over a Unix stream socket, one request and
one reply per connection. A request is one of the ``*Request`` models below
(unknown fields and wrong types are rejected); a reply is either
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": CODE, "detail": ...}``
with a stable ``CODE`` from ``AgentCode``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from warmcache.agent_codes import AgentCode
from warmcache.images import Image
from warmcache.model import MAX_USER_DATA, NAME_PATTERN, DiskGiB, Flavor, StaticNetwork

AGENT_ERROR_CODES = tuple(AgentCode)

MAX_LINE_BYTES = 1 << 20
PCI_PATTERN = r"^([0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]$"


class _Req(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class VmRequestSpec(_Req):
    name: str = Field(pattern=NAME_PATTERN)
    flavor: Flavor
    user_data: str = Field(default="", max_length=MAX_USER_DATA)
    group: str | None = Field(default=None, pattern=NAME_PATTERN)
    network: StaticNetwork | None = None
    image: Image | None = None  # what its root disk is made from (None: a blank disk)


class CreateRequest(_Req):
    op: Literal["create"]
    vm: VmRequestSpec


class RecycleRequest(_Req):
    op: Literal["recycle"]
    vm: VmRequestSpec


class NamedRequest(_Req):
    op: Literal["delete", "status"]
    name: str = Field(pattern=NAME_PATTERN)


class PlainRequest(_Req):
    op: Literal["list", "facts", "health", "reconcile"]


class AttachDiskRequest(_Req):
    op: Literal["attach_disk"]
    name: str = Field(pattern=NAME_PATTERN)
    target: str = Field(pattern=r"^vd[b-y]$")  # vdz holds the cloud-init seed
    size_gib: DiskGiB
    format: Literal["qcow2", "raw"] = "qcow2"
    preallocation: Literal["off", "metadata", "falloc", "full"] = "off"


class DetachDiskRequest(_Req):
    op: Literal["detach_disk"]
    name: str = Field(pattern=NAME_PATTERN)
    target: str = Field(pattern=r"^vd[b-y]$")


class AttachNvmeRequest(_Req):
    op: Literal["attach_nvme"]
    name: str = Field(pattern=NAME_PATTERN)
    pci: str = Field(pattern=PCI_PATTERN)


class DetachNvmeRequest(_Req):
    op: Literal["detach_nvme"]
    name: str = Field(pattern=NAME_PATTERN)
    pci: str = Field(pattern=PCI_PATTERN)


class PrefetchRequest(_Req):
    op: Literal["prefetch"]
    image: Image


class StandbyRequest(_Req):
    op: Literal["standby"]
    name: str = Field(pattern=NAME_PATTERN)
    state: Literal["running", "paused", "saved"]


AnyRequest = (
    CreateRequest
    | RecycleRequest
    | NamedRequest
    | PlainRequest
    | AttachDiskRequest
    | DetachDiskRequest
    | AttachNvmeRequest
    | DetachNvmeRequest
    | PrefetchRequest
    | StandbyRequest
)
AgentRequest = Annotated[AnyRequest, Field(discriminator="op")]
REQUEST_ADAPTER: TypeAdapter[AnyRequest] = TypeAdapter(AgentRequest)


class VmStatusWire(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    name: str
    state: str
    healthy: bool
    server_id: str = ""
    addresses: tuple[str, ...] = ()
    standby: str = "running"
    image_version: str = ""


def ok(result: Any) -> dict[str, Any]:
    return {"ok": True, "result": result}


def error(code: AgentCode, detail: Any) -> dict[str, Any]:
    return {"ok": False, "error": code.value, "detail": detail}
