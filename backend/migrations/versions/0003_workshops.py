"""workshops and their members

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workshops",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("tutors", sa.JSON, nullable=False),
        sa.Column("start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end", sa.DateTime(timezone=True), nullable=False),
        sa.Column("system", sa.String(64), nullable=False),
        sa.Column("options", sa.JSON, nullable=False),
        sa.Column("max_participants", sa.Integer, nullable=False),
        sa.Column("allow", sa.JSON, nullable=True),
        sa.Column("code", sa.String(64), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_workshops_owner", "workshops", ["owner"])
    op.create_table(
        "workshop_members",
        sa.Column(
            "workshop_id",
            sa.String(40),
            sa.ForeignKey("workshops.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("user_name", sa.String(255), primary_key=True),
        sa.Column("joined", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_workshop_members_user_name", "workshop_members", ["user_name"])


def downgrade() -> None:
    op.drop_index("ix_workshop_members_user_name", table_name="workshop_members")
    op.drop_table("workshop_members")
    op.drop_index("ix_workshops_owner", table_name="workshops")
    op.drop_table("workshops")
