"""People and settings: the organisation row, users and Circles."""

from __future__ import annotations

from sqlalchemy import event, func, select
from sqlalchemy.orm import Session, SessionTransaction

from replygate.errors import Invalid, NotFound
from replygate.store.models import (
    Circle,
    CircleMember,
    Organisation,
    SenderPolicy,
    User,
    UserRole,
)


def organisation(session: Session, *, default_name: str = "Our practice") -> Organisation:
    """The deployment's one organisation, created on first use.

    Looked up once per transaction (kept in ``session.info`` and dropped when
    the transaction ends): filing one reply asks for it several times.
    """
    org = session.info.get(_ORG_KEY)
    if org is not None and org in session:
        return org
    org = session.scalars(select(Organisation).order_by(Organisation.id).limit(1)).first()
    if org is None:
        org = Organisation(
            name=default_name, convenience_mode=False, sender_policy=SenderPolicy.REJECT
        )
        session.add(org)
        session.flush()
    session.info[_ORG_KEY] = org
    return org


# Lookups kept for one transaction live in ``session.info`` under this prefix
# (the organisation here; rows a batch of replies prefetched in ``tokens``,
# ``outbox``, ``inbound`` and ``messaging``) and are dropped when it ends.
TRANSACTION_CACHE = "replygate."
_ORG_KEY = TRANSACTION_CACHE + "organisation"


@event.listens_for(Session, "after_transaction_end")
def _forget_transaction_caches(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:  # the outermost one, not a flush's or a savepoint's
        for key in [k for k in session.info if str(k).startswith(TRANSACTION_CACHE)]:
            del session.info[key]


def normalise_email(email: str) -> str:
    return email.strip().lower()


def add_user(session: Session, email: str, name: str, role: str) -> User:
    email = normalise_email(email)
    if role not in set(UserRole):
        raise Invalid(f"role must be one of {', '.join(UserRole)}, not {role!r}")
    if "@" not in email or email.startswith("@") or email.endswith("@"):
        raise Invalid(f"{email!r} is not an email address")
    if find_user(session, email) is not None:
        raise Invalid(f"a user with email {email} already exists")
    user = User(email=email, name=name.strip() or email, role=role)
    session.add(user)
    session.flush()
    return user


def find_user(session: Session, email: str) -> User | None:
    return session.scalars(select(User).where(User.email == normalise_email(email))).first()


def user(session: Session, email: str) -> User:
    found = find_user(session, email)
    if found is None:
        raise NotFound(f"no user with email {normalise_email(email)}")
    return found


def other_admins(session: Session, user_id: int) -> int:
    """How many admins there are besides ``user_id``."""
    return (
        session.scalar(
            select(func.count())
            .select_from(User)
            .where(User.role == UserRole.ADMIN.value, User.id != user_id)
        )
        or 0
    )


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.id)))


def add_circle(session: Session, name: str, *, clients_may_write: bool = False) -> Circle:
    name = name.strip()
    if not name:
        raise Invalid("a Circle needs a name")
    if find_circle(session, name) is not None:
        raise Invalid(f"a Circle named {name!r} already exists")
    circle = Circle(name=name, clients_may_write=clients_may_write)
    session.add(circle)
    session.flush()
    return circle


def find_circle(session: Session, name: str) -> Circle | None:
    return session.scalars(select(Circle).where(Circle.name == name.strip())).first()


def circle(session: Session, name: str) -> Circle:
    found = find_circle(session, name)
    if found is None:
        raise NotFound(f"no Circle named {name!r}")
    return found


def list_circles(session: Session) -> list[Circle]:
    return list(session.scalars(select(Circle).order_by(Circle.name)))


def add_member(session: Session, circle_name: str, email: str) -> None:
    c = circle(session, circle_name)
    u = user(session, email)
    exists = session.get(CircleMember, (c.id, u.id))
    if exists is None:
        session.add(CircleMember(circle_id=c.id, user_id=u.id))
        session.flush()
