"""When a login needs a second factor: a pure rule of the source's mode and the user."""

from __future__ import annotations

from enum import StrEnum


class SecondFactorMode(StrEnum):
    """An identity source's setting for the second factor."""

    OFF = "off"
    # Users who enrolled must give a code; the others log in with their password alone.
    OPTIONAL = "optional"
    # Everyone gives a code; a user not enrolled yet enrols on their next login.
    REQUIRED = "required"


class SecondFactorStep(StrEnum):
    """What a password login still lacks."""

    CODE = "code"
    ENROL = "enrol"


def second_factor_due(mode: str, enrolled: bool) -> SecondFactorStep | None:
    """The step a login must take before it is complete, or ``None`` when none is due.

    An unknown mode (a row written by a newer broker) counts as required: failing closed
    costs a user one enrolment, failing open would let a password alone through.
    """
    if mode == SecondFactorMode.OFF.value:
        return None
    if enrolled:
        return SecondFactorStep.CODE
    if mode == SecondFactorMode.OPTIONAL.value:
        return None
    return SecondFactorStep.ENROL
