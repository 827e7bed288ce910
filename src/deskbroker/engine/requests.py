"""The request a provisioning task's build hands its center's driver."""

from __future__ import annotations

from string import Template

from deskbroker.centers.base import CENTER_KEY, DESKTOP_KEY, POOL_KEY, ProvisionRequest
from deskbroker.domain.provisioning import ProvisioningParameters
from deskbroker.store.tasks import TaskRow, task_tag


def render_user_data(template: str, task: TaskRow) -> str:
    """A pool's user data with this desktop's values put in: ``$DESKTOP_NAME``,
    ``$DESKTOP_ID``, ``$POOL_ID`` (``${...}`` works too; ``$$`` is a plain ``$``). Any
    other ``$NAME`` is left alone, so a shell script's own variables survive."""
    return Template(template).safe_substitute(
        DESKTOP_NAME=task.name, DESKTOP_ID=task.desktop_id or "", POOL_ID=task.pool_id or ""
    )


def request_of(task: TaskRow, extra_metadata: dict[str, str] | None = None) -> ProvisionRequest:
    """What the task's build asks the center for: the broker's parameters, the marks a
    resumed build and a leak sweep find it by, and the pool's parameters as stored (the
    driver reads its own part of them). ``extra_metadata`` carries what the desktop must
    find in its instance metadata (the agent's single-use enrolment secret)."""
    params = ProvisioningParameters.from_stored(task.request)
    return ProvisionRequest(
        name=task.name,
        user_data=render_user_data(params.user_data, task),
        metadata={
            **params.metadata,
            CENTER_KEY: task.center_id,
            POOL_KEY: task.pool_id or "",
            DESKTOP_KEY: task.desktop_id or "",
            "deskbroker_task": task.id,
            **(extra_metadata or {}),
        },
        tags=(task_tag(task.id),),
        parameters=dict(task.request or {}),
    )
