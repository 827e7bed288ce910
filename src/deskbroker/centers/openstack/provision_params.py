"""What a pool may set for the machines an OpenStack center builds for it."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# A name or id on the cloud: an image, a flavor, a zone, a network.
Ref = Annotated[str, StringConstraints(min_length=1, max_length=255)]


class OpenStackProvisionParams(BaseModel):
    """The cloud's side of a pool's provisioning parameters; names are resolved (and
    an unknown one reported) when a build asks for them."""

    model_config = ConfigDict(extra="forbid")

    image: Ref | None = None
    flavor: Ref | None = None
    availability_zone: Ref | None = None
    network: Ref | None = Field(
        default=None, description="the network to plug into; default the center's"
    )
    floating_ip: bool = False
    security_groups: list[Annotated[str, StringConstraints(max_length=255)]] = Field(
        default_factory=list, max_length=20
    )
