"""The AWS EC2 center driver (docs/centers/aws.md)."""

from deskbroker.centers.aws.driver import AwsCenter

__all__ = ["AwsCenter"]
