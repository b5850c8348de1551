"""Agent configuration: who this host is and what it may give to VMs.

    hypervisor = "az1-r1-h1"
    rack = "az1-r1"
    az = "az1"
    libvirt_uri = "test:///default"
    state_dir = "/var/lib/warmcache-agent"
    create_delay_s = 0.0          # simulated boot time on test:///default

    [capacity]                    # host topology override (libvirt's numbers
    vcpus = 16                    # are not trusted blindly, ENVIRONMENT.md)
    memory_mib = 65536
    disk_gib = 2000

    [reserved]                    # buffer kept for the host itself
    vcpus = 2
    memory_mib = 4096
    disk_gib = 50
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from warmcache.errors import ConfigError
from warmcache.model import NAME_PATTERN


class Resources(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    vcpus: int = Field(ge=0, le=100_000)
    memory_mib: int = Field(ge=0)
    disk_gib: int = Field(ge=0)


class AgentConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    hypervisor: str = Field(pattern=NAME_PATTERN)
    rack: str = Field(pattern=NAME_PATTERN)
    az: str = Field(pattern=NAME_PATTERN)
    libvirt_uri: str = "test:///default"
    state_dir: str = "."
    create_delay_s: float = Field(default=0.0, ge=0.0, le=600.0)
    capacity: Resources = Resources(vcpus=16, memory_mib=65536, disk_gib=2000)
    reserved: Resources = Resources(vcpus=2, memory_mib=4096, disk_gib=50)


def load_agent_config(path: str | Path) -> AgentConfig:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError([f"{path}: no such file"]) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: {exc}"]) from exc
    if isinstance(data.get("state_dir"), str):
        data["state_dir"] = str((path.parent / data["state_dir"]).resolve())
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
        ) from exc
