"""labs and their events

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ACTIVE = "state NOT IN ('stopped', 'failed')"


def upgrade() -> None:
    op.create_table(
        "labs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("user_name", sa.String(255), nullable=False),
        sa.Column("server_name", sa.String(255), nullable=False),
        sa.Column("system", sa.String(64), nullable=False),
        sa.Column("vo", sa.String(255), nullable=True),
        sa.Column("options", sa.JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("last_seq", sa.Integer, nullable=False),
        sa.Column("url", sa.String(1024), nullable=True),
        sa.Column("handle", sa.JSON, nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_labs_user_name", "labs", ["user_name"])
    op.create_index("ix_labs_state", "labs", ["state"])
    op.create_index(
        "uq_labs_active_server",
        "labs",
        ["user_name", "server_name"],
        unique=True,
        sqlite_where=sa.text(ACTIVE),
        postgresql_where=sa.text(ACTIVE),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "lab_id", sa.String(36), sa.ForeignKey("labs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("progress", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.UniqueConstraint("lab_id", "seq", name="uq_events_lab_seq"),
    )


def downgrade() -> None:
    op.drop_table("events")
    op.drop_index("uq_labs_active_server", table_name="labs")
    op.drop_index("ix_labs_state", table_name="labs")
    op.drop_index("ix_labs_user_name", table_name="labs")
    op.drop_table("labs")
