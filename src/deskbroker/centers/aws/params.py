"""What an administrator sets on an AWS center, and what a pool sets for its desktops."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from deskbroker.outbound import Target

# An EC2 name or id: an AMI, a launch template, a subnet, a security group.
Ref = Annotated[str, StringConstraints(min_length=1, max_length=255)]
# One value of an EC2 filter (tag values may hold most printable characters).
FilterValue = Annotated[str, StringConstraints(min_length=1, max_length=255)]


class AwsParams(BaseModel):
    """How to reach one region of one AWS account.

    The keys are center secrets (``access_key_id``, ``secret_access_key`` and, for
    temporary credentials, ``session_token``), never params: the broker stores them
    encrypted and never returns or logs them."""

    model_config = ConfigDict(extra="forbid")

    region: str = Field(
        pattern=r"^[a-z]{2}(-[a-z0-9]+){1,3}-\d{1,2}$", description="e.g. eu-west-1"
    )
    endpoint_url: str | None = Field(
        default=None,
        max_length=500,
        description="the EC2 endpoint to use instead of the region's public one (a VPC "
        "endpoint, or a simulator in tests)",
    )
    inventory_filters: dict[
        Annotated[str, StringConstraints(min_length=1, max_length=128)],
        Annotated[list[FilterValue], Field(min_length=1, max_length=200)],
    ] = Field(
        default_factory=dict,
        max_length=10,
        description="EC2 DescribeInstances filters the inventory is limited to, e.g. "
        '{"tag:team": ["vdi"], "vpc-id": ["vpc-0abc"]}',
    )
    page_size: int = Field(
        default=1000, ge=5, le=1000, description="instances asked per DescribeInstances page"
    )
    timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=600,
        description="the longest one call to AWS may take, retries included",
    )
    retries: int = Field(default=4, ge=0, le=10)
    broker_tag: str = Field(default="deskbroker", pattern=r"^[A-Za-z0-9_.:-]{1,40}$")
    max_in_flight: int = Field(default=20, ge=1, le=1000)
    reap_leaks: bool = Field(
        default=False, description="terminate instances tagged as ours that no desktop owns"
    )
    build_timeout_s: float = Field(default=900.0, gt=0, le=86400)

    @field_validator("endpoint_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("https://", "http://")):
            raise ValueError("endpoint_url must be an http:// or https:// URL")
        return value

    @field_validator("inventory_filters")
    @classmethod
    def _filters(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for name in value:
            if name == "instance-state-name":
                # The driver reads every state and treats terminated ones as gone.
                raise ValueError("instance-state-name cannot be an inventory filter")
        return value

    def outbound_targets(self) -> list[Target]:
        """The endpoint, when one is named; AWS's own public endpoints otherwise."""
        return [Target.url("endpoint_url", self.endpoint_url)] if self.endpoint_url else []


class AwsProvisionParams(BaseModel):
    """What a pool sets for the instances an AWS center builds: an AMI (and an instance
    type) or a launch template, plus where and how to plug it in."""

    model_config = ConfigDict(extra="forbid")

    image: Ref | None = Field(default=None, description="an AMI id (ami-...) or exact AMI name")
    instance_type: Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]+\.[a-z0-9-]+$")] | None = (
        Field(default=None, description="e.g. t3.medium; may come from the launch template")
    )
    launch_template: Ref | None = Field(
        default=None, description="a launch template id (lt-...) or name, instead of an AMI"
    )
    launch_template_version: (
        Annotated[str, StringConstraints(pattern=r"^(\$Latest|\$Default|\d{1,6})$")] | None
    ) = None
    subnet: Ref | None = Field(default=None, description="a subnet id (subnet-...)")
    security_groups: list[Ref] = Field(
        default_factory=list, max_length=5, description="security group ids (sg-...)"
    )
    availability_zone: Ref | None = None
    key_name: Ref | None = None
    elastic_ip: bool = Field(default=False, description="give each desktop an Elastic IP")
    hibernation: bool = Field(
        default=False, description="build hibernation-capable instances (suspend = hibernate)"
    )
