"""The AWS EC2 center driver: one region of one account, through boto3."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel

from deskbroker.centers.aws import mapping
from deskbroker.centers.aws.params import AwsParams, AwsProvisionParams
from deskbroker.centers.aws.session import AwsFailure, Ec2Session
from deskbroker.centers.base import (
    CENTER_KEY,
    BuildLimits,
    Capability,
    CenterDriver,
    ImageInfo,
    MachineInfo,
    PowerAction,
    ProvisionRequest,
    QuotaExceeded,
    UnknownName,
)
from deskbroker.errors import CenterError

# AWS's words for "no room": account limits, and capacity the region lacks for now.
# Either may clear later, so the engine backs the pool off instead of failing builds.
QUOTA_CODES = frozenset(
    {
        "InstanceLimitExceeded",
        "VcpuLimitExceeded",
        "InsufficientInstanceCapacity",
        "InsufficientHostCapacity",
        "InsufficientCapacity",
        "InsufficientFreeAddressesInSubnet",
        "AddressLimitExceeded",
        "VolumeLimitExceeded",
        "MaxSpotInstanceCountExceeded",
    }
)
# AWS's words for a name it does not have, and which parameter named it.
UNKNOWN_CODES = {
    "InvalidAMIID.NotFound": "image",
    "InvalidAMIID.Malformed": "image",
    "InvalidAMIID.Unavailable": "image",
    "InvalidSubnetID.NotFound": "subnet",
    "InvalidSubnetID.Malformed": "subnet",
    "InvalidGroup.NotFound": "security group",
    "InvalidGroupId.Malformed": "security group",
    "InvalidLaunchTemplateName.NotFoundException": "launch template",
    "InvalidLaunchTemplateId.NotFound": "launch template",
    "InvalidLaunchTemplateId.Malformed": "launch template",
    "InvalidKeyPair.NotFound": "key pair",
    "InvalidInstanceType": "instance type",
}
_GONE_CODES = frozenset({"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"})
# The tag an Elastic IP carries naming the instance it was allocated for, so a build
# resumed between allocating and associating finds it, and terminating releases it.
ADDRESS_FOR = "deskbroker_instance"


class AwsCenter(CenterDriver):
    """One AWS region of one account: instances, AMIs and launch templates, builds with
    subnet, security groups, tags and an optional Elastic IP, power, termination and
    leak sweeps by tag."""

    kind: ClassVar[str] = "aws"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {
            Capability.INVENTORY,
            Capability.IMAGES,
            Capability.PROVISION,
            Capability.POWER,
            Capability.TERMINATE,
            Capability.LEAK_SWEEP,
            Capability.PROBE,
        }
    )
    Params: ClassVar[type[BaseModel]] = AwsParams
    ProvisionParams: ClassVar[type[BaseModel] | None] = AwsProvisionParams

    def __init__(self, params: Mapping[str, Any], secrets: Mapping[str, str]) -> None:
        super().__init__(params, secrets)
        assert isinstance(self.params, AwsParams)
        self.aws_params: AwsParams = self.params
        # The client is made on first use: the broker opens one driver per center.
        self.session = Ec2Session(self.aws_params, secrets)

    def belongs_to(self, tenant_id: str) -> None:
        super().belongs_to(tenant_id)
        self.session.owner = tenant_id

    def limits(self) -> BuildLimits:
        return BuildLimits(self.aws_params.max_in_flight, self.aws_params.build_timeout_s)

    # --- inventory -------------------------------------------------------------------
    def _instances(self, filters: Mapping[str, list[str]]) -> list[dict[str, Any]]:
        """Every instance matching ``filters`` (terminated ones left out), page by page."""
        query: dict[str, Any] = {"MaxResults": self.aws_params.page_size}
        if filters:
            query["Filters"] = [{"Name": k, "Values": list(v)} for k, v in filters.items()]
        found: list[dict[str, Any]] = []
        for page in self.session.pages("DescribeInstances", "Reservations", **query):
            for reservation in page:
                found.extend(i for i in reservation.get("Instances") or [] if not mapping.gone(i))
        return found

    def inventory(self) -> list[MachineInfo]:
        return [mapping.machine(i) for i in self._instances(self.aws_params.inventory_filters)]

    def machine(self, external_id: str) -> MachineInfo | None:
        try:
            answer = self.session.call("DescribeInstances", InstanceIds=[external_id])
        except AwsFailure as exc:
            if exc.code in _GONE_CODES:
                return None
            raise
        for reservation in answer.get("Reservations") or []:
            for instance in reservation.get("Instances") or []:
                if instance.get("InstanceId") == external_id and not mapping.gone(instance):
                    return mapping.machine(instance)
        return None

    def images(self) -> list[ImageInfo]:
        """The account's own AMIs, then its launch templates (``lt-...``)."""
        found: list[ImageInfo] = []
        for page in self.session.pages("DescribeImages", "Images", Owners=["self"]):
            found.extend(mapping.image(i) for i in page)
        for page in self.session.pages("DescribeLaunchTemplates", "LaunchTemplates"):
            found.extend(
                ImageInfo(
                    external_id=str(t["LaunchTemplateId"]),
                    name=f"launch template {t.get('LaunchTemplateName') or t['LaunchTemplateId']}",
                    attributes={
                        "kind": "launch_template",
                        "default_version": t.get("DefaultVersionNumber"),
                        "latest_version": t.get("LatestVersionNumber"),
                    },
                )
                for t in page
            )
        return found

    def catalog(self) -> dict[str, list[dict[str, Any]]]:
        """What the admin's pickers offer: subnets, zones, security groups, images."""
        subnets = [s for page in self.session.pages("DescribeSubnets", "Subnets") for s in page]
        groups = [
            g
            for page in self.session.pages("DescribeSecurityGroups", "SecurityGroups")
            for g in page
        ]
        zones = self.session.call("DescribeAvailabilityZones").get("AvailabilityZones") or []
        return {
            "flavors": [],
            "networks": [
                {
                    "id": s["SubnetId"],
                    "name": _name_tag(s),
                    "vpc": s.get("VpcId"),
                    "availability_zone": s.get("AvailabilityZone"),
                }
                for s in subnets
            ],
            "availability_zones": [
                {"name": z["ZoneName"], "available": z.get("State") == "available"} for z in zones
            ],
            "security_groups": [
                {"id": g["GroupId"], "name": g.get("GroupName"), "vpc": g.get("VpcId")}
                for g in groups
            ],
            "images": [{"id": i.external_id, "name": i.name, "os": i.os} for i in self.images()],
        }

    # --- provisioning ----------------------------------------------------------------
    def _wanted(self, request: ProvisionRequest) -> AwsProvisionParams:
        wanted = self.provision_params(request)
        assert isinstance(wanted, AwsProvisionParams)
        return wanted

    def needs_address(self, request: ProvisionRequest) -> bool:
        return self._wanted(request).elastic_ip

    def _image_id(self, image: str) -> str:
        """An AMI id as given, or the one AMI of the account with that exact name."""
        if image.startswith("ami-"):
            return image
        named = [
            i
            for page in self.session.pages(
                "DescribeImages",
                "Images",
                Owners=["self"],
                Filters=[{"Name": "name", "Values": [image]}],
            )
            for i in page
            if i.get("Name") == image  # the filter is a hint: checked on each item
        ]
        if not named:
            raise UnknownName("image", image)
        if len(named) > 1:
            raise CenterError(f"{len(named)} AMIs are named {image!r}: give the ami- id instead")
        return str(named[0]["ImageId"])

    def _group_ids(self, groups: list[str]) -> list[str]:
        """Security group ids, names looked up (each checked on the group itself)."""
        ids = [g for g in groups if g.startswith("sg-")]
        names = [g for g in groups if not g.startswith("sg-")]
        if names:
            found = [
                g
                for page in self.session.pages(
                    "DescribeSecurityGroups",
                    "SecurityGroups",
                    Filters=[{"Name": "group-name", "Values": names}],
                )
                for g in page
            ]
            for name in names:
                match = [str(g["GroupId"]) for g in found if g.get("GroupName") == name]
                if not match:
                    raise UnknownName("security group", name)
                if len(match) > 1:
                    raise CenterError(
                        f"{len(match)} security groups are named {name!r}: give the sg- id"
                    )
                ids.append(match[0])
        return ids

    def create(self, request: ProvisionRequest) -> str:
        wanted = self._wanted(request)
        if not wanted.image and not wanted.launch_template:
            raise CenterError("an AWS desktop needs an image (AMI) or a launch template")
        broker_tags = [self.aws_params.broker_tag, *request.tags]
        tags = mapping.write_tags(request.name, broker_tags, request.metadata)
        run: dict[str, Any] = {
            "MinCount": 1,
            "MaxCount": 1,
            # Instance and root volume carry the marks a resumed build and a sweep find.
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tags},
                {"ResourceType": "volume", "Tags": tags},
            ],
            # No ClientToken given: botocore makes one per call and its own retries
            # reuse it, so a retried RunInstances never builds twice.
        }
        if wanted.launch_template:
            key = (
                "LaunchTemplateId"
                if wanted.launch_template.startswith("lt-")
                else ("LaunchTemplateName")
            )
            template: dict[str, str] = {key: wanted.launch_template}
            if wanted.launch_template_version:
                template["Version"] = wanted.launch_template_version
            run["LaunchTemplate"] = template
        if wanted.image:
            run["ImageId"] = self._image_id(wanted.image)
        if wanted.instance_type:
            run["InstanceType"] = wanted.instance_type
        elif not wanted.launch_template:
            raise CenterError("an AWS desktop built from an AMI needs an instance_type")
        if wanted.subnet:
            run["SubnetId"] = wanted.subnet
        if wanted.security_groups:
            run["SecurityGroupIds"] = self._group_ids(wanted.security_groups)
        if wanted.availability_zone:
            run["Placement"] = {"AvailabilityZone": wanted.availability_zone}
        if wanted.key_name:
            run["KeyName"] = wanted.key_name
        if wanted.hibernation:
            run["HibernationOptions"] = {"Configured": True}
        if request.user_data:
            run["UserData"] = request.user_data  # boto3 encodes it in base64
        try:
            answer = self.session.call("RunInstances", **run)
        except AwsFailure as exc:
            raise _mapped(exc, wanted) from exc
        return str(answer["Instances"][0]["InstanceId"])

    def attach_address(self, external_id: str, request: ProvisionRequest) -> str:
        found = self.machine(external_id)
        if found is None:
            raise CenterError(f"instance {external_id} disappeared while it was being addressed")
        if not self.needs_address(request):
            return found.address
        mine = self._addresses_of(external_id)
        for address in mine:
            if address.get("InstanceId") == external_id:
                return str(address["PublicIp"])  # a retried step: already associated
        if mine:
            allocation = mine[0]  # allocated before the broker stopped, not yet associated
        else:
            tags = [
                {"Key": self.aws_params.broker_tag, "Value": ""},
                {"Key": ADDRESS_FOR, "Value": external_id},
                {"Key": CENTER_KEY, "Value": str(request.metadata.get(CENTER_KEY, ""))},
            ]
            try:
                allocation = self.session.call(
                    "AllocateAddress",
                    Domain="vpc",
                    TagSpecifications=[{"ResourceType": "elastic-ip", "Tags": tags}],
                )
            except AwsFailure as exc:
                if exc.code in QUOTA_CODES:
                    raise QuotaExceeded(f"quota exceeded: Elastic IPs ({exc.detail})") from exc
                raise
        self.session.call(
            "AssociateAddress", InstanceId=external_id, AllocationId=allocation["AllocationId"]
        )
        return str(allocation["PublicIp"])

    def _addresses_of(self, external_id: str) -> list[dict[str, Any]]:
        """Elastic IPs associated with the instance or allocated for it, checked on
        each address, whatever the endpoint made of the filters."""
        found: dict[str, dict[str, Any]] = {}
        for name in ("instance-id", f"tag:{ADDRESS_FOR}"):
            answer = self.session.call(
                "DescribeAddresses", Filters=[{"Name": name, "Values": [external_id]}]
            )
            for address in answer.get("Addresses") or []:
                tags = mapping.tags_of(address)
                if address.get("InstanceId") == external_id or (
                    tags.get(ADDRESS_FOR) == external_id and self.aws_params.broker_tag in tags
                ):
                    found[str(address["AllocationId"])] = address
        return list(found.values())

    # --- power and termination -------------------------------------------------------
    def power(self, machine: MachineInfo, action: PowerAction) -> None:
        ids = [machine.external_id]
        try:
            if action in (PowerAction.START, PowerAction.RESUME):
                self.session.call("StartInstances", InstanceIds=ids)
            elif action is PowerAction.STOP:
                self.session.call("StopInstances", InstanceIds=ids)
            elif action is PowerAction.SUSPEND:
                if not machine.driver_state.get("hibernation"):
                    raise CenterError(
                        f"{machine.name} was not built for hibernation: stop it instead, or "
                        "set hibernation on the pool"
                    )
                self.session.call("StopInstances", InstanceIds=ids, Hibernate=True)
            else:
                # EC2 has one reboot; it forces the instance down itself when the
                # operating system does not reboot within minutes.
                self.session.call("RebootInstances", InstanceIds=ids)
        except AwsFailure as exc:
            if exc.code in QUOTA_CODES:
                raise QuotaExceeded(
                    f"no capacity to {action.value} {machine.name}: {exc.detail}"
                ) from exc
            raise

    def terminate(self, machine: MachineInfo) -> None:
        for address in self._addresses_of(machine.external_id):
            if address.get("AssociationId"):
                self.session.call("DisassociateAddress", AssociationId=address["AssociationId"])
            self.session.call("ReleaseAddress", AllocationId=address["AllocationId"])
        try:
            self.session.call("TerminateInstances", InstanceIds=[machine.external_id])
        except AwsFailure as exc:
            if exc.code not in _GONE_CODES:
                raise

    def find_tagged(self, tag: str) -> list[MachineInfo]:
        """Instances carrying the broker tag ``tag``, each checked on the instance."""
        instances = self._instances({"tag-key": [tag]})
        return [mapping.machine(i) for i in instances if mapping.carries(i, tag)]

    def leaked(self, known_external_ids: set[str], *, center_id: str) -> list[MachineInfo]:
        built_here = f"meta.{CENTER_KEY}"
        return [
            m
            for m in self.find_tagged(self.aws_params.broker_tag)
            if m.attributes.get(built_here) == center_id and m.external_id not in known_external_ids
        ]


def _mapped(exc: AwsFailure, wanted: AwsProvisionParams) -> CenterError:
    """RunInstances' refusals in the broker's words."""
    if exc.code in QUOTA_CODES:
        return QuotaExceeded(f"quota exceeded: {exc.detail}")
    kind = UNKNOWN_CODES.get(exc.code)
    if kind is None:
        return exc
    named = {
        "image": wanted.image,
        "subnet": wanted.subnet,
        "security group": ",".join(wanted.security_groups),
        "launch template": wanted.launch_template,
        "key pair": wanted.key_name,
        "instance type": wanted.instance_type,
    }.get(kind)
    return UnknownName(kind, named or exc.code)


def _name_tag(resource: Mapping[str, Any]) -> str:
    return mapping.tags_of(resource).get("Name", "")
