"""users (identity and active VO), and labs by VO

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("groups", sa.JSON, nullable=False),
        sa.Column("entitlements", sa.JSON, nullable=False),
        sa.Column("vo", sa.String(255), nullable=True),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_labs_vo", "labs", ["vo"])


def downgrade() -> None:
    op.drop_index("ix_labs_vo", table_name="labs")
    op.drop_table("users")
