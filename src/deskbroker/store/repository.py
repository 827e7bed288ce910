"""A generic, tenant-scoped repository for the admin API's create/read/update/delete."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

from deskbroker.errors import Conflict, InvalidInput, NotFound
from deskbroker.store.tables import Base

M = TypeVar("M", bound=Base)


class Repository(Generic[M]):
    """CRUD for one table; ``tenant_id=None`` means every tenant (global admin)."""

    def __init__(self, model: type[M], label: str) -> None:
        self.model = model
        self.label = label

    def _scoped(self, query: Select[Any], tenant_id: str | None) -> Select[Any]:
        if tenant_id is not None and hasattr(self.model, "tenant_id"):
            query = query.where(self.model.tenant_id == tenant_id)  # type: ignore[attr-defined]
        return query

    def get(self, session: Session, object_id: str, tenant_id: str | None) -> M:
        query = self._scoped(select(self.model).where(self.model.id == object_id), tenant_id)  # type: ignore[attr-defined]
        found = cast(M | None, session.scalars(query).first())
        if found is None:
            raise NotFound(f"{self.label} {object_id} does not exist")
        return found

    def list(
        self,
        session: Session,
        tenant_id: str | None,
        filters: Mapping[str, Any],
        limit: int,
        offset: int,
        extra: Sequence[ColumnElement[bool]] = (),
    ) -> tuple[list[M], int]:
        query = self._scoped(select(self.model), tenant_id)
        for name, value in filters.items():
            query = query.where(getattr(self.model, name) == value)
        for clause in extra:
            query = query.where(clause)
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        order = getattr(self.model, "created_at", None) or self.model.id  # type: ignore[attr-defined]
        rows = session.scalars(
            query.order_by(order, self.model.id).limit(limit).offset(offset)  # type: ignore[attr-defined]
        ).all()
        return [cast(M, r) for r in rows], int(total)

    def add(self, session: Session, obj: M) -> M:
        session.add(obj)
        self.flush(session)
        return obj

    def flush(self, session: Session) -> None:
        try:
            session.flush()
        except IntegrityError as exc:
            raise Conflict(_integrity_message(self.label, exc)) from exc
        except (DataError, OverflowError) as exc:
            # The API's limits should stop such values first; this keeps a missed one a 422.
            raise InvalidInput(
                f"a value of the {self.label} is too long or too large for the database"
            ) from exc

    def delete(self, session: Session, obj: M) -> None:
        session.delete(obj)
        self.flush(session)


def _integrity_message(label: str, exc: IntegrityError) -> str:
    text = str(exc.orig).lower()
    if "unique" in text or "duplicate" in text:
        article = "an" if label[:1] in "aeio" else "a"  # "a user", "an image"
        return f"{article} {label} with that name already exists"
    if "foreign key" in text:
        return f"this {label} is still in use, or refers to something that does not exist"
    return f"the {label} conflicts with existing data"
