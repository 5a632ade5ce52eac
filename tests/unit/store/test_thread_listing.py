"""The listing's lightweight tables name only columns the models have, of the same kind.

``store.thread_listing`` reads with SQLAlchemy Core and its own ``table()``
clauses so that ``threads list`` never maps the models; this is what keeps
those clauses and the models (and so the migrations) from drifting apart.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.sql.expression import TableClause

from replygate.store import keyring, sealed, thread_listing
from replygate.store.keyring import Keyring, SealBroken
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


def test_a_subject_is_opened_from_its_sealed_value(tmp_path: Path) -> None:
    keyring.install(Keyring.create(tmp_path / "keys"))
    uid = keyring.new_row_uid()
    stored = sealed.seal("threads", "subject", uid, b"Lab results")
    assert b"Lab" not in stored
    assert thread_listing.subject(7, uid, stored) == "Lab results"
    with pytest.raises(SealBroken):
        thread_listing.subject(8, keyring.new_row_uid(), stored)
