"""The listing's lightweight tables name only columns the models have, of the same kind.

``store.thread_listing`` reads with SQLAlchemy Core and its own ``table()``
clauses so that ``threads list`` never maps the models; this is what keeps
those clauses and the models (and so the migrations) from drifting apart.
"""

from __future__ import annotations

import pytest
from sqlalchemy.sql.expression import TableClause

from replygate.store import thread_listing
from replygate.store.models import Base


@pytest.mark.parametrize("clause", thread_listing.TABLES, ids=lambda t: t.name)
def test_each_column_is_the_models_own(clause: TableClause) -> None:
    model = Base.metadata.tables[clause.name]
    for col in clause.columns:
        assert col.name in model.columns, f"{clause.name}.{col.name} is not in the models"
        theirs = model.columns[col.name].type
        assert type(col.type) is type(theirs), f"{clause.name}.{col.name} is {theirs!r} there"


def test_every_table_the_queries_read_is_checked() -> None:
    read = {t.name for t in thread_listing.TABLES}
    assert read == {"threads", "thread_participants", "users", "messages"}


def test_a_subject_is_read_as_stored() -> None:
    assert thread_listing.subject(7, "Lab results") == "Lab results"
