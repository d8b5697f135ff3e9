"""replicas, the lab each follows, and what a lab's start needs sealed

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "replicas",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_replicas_expires", "replicas", ["expires"])
    op.add_column("labs", sa.Column("owner", sa.String(36), nullable=True))
    op.create_index("ix_labs_owner", "labs", ["owner"])
    op.add_column("labs", sa.Column("request_id", sa.String(64), nullable=True))
    op.create_table(
        "lab_secrets",
        sa.Column(
            "lab_id",
            sa.String(36),
            sa.ForeignKey("labs.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("env", sa.Text, nullable=True),
        sa.Column("access_token", sa.Text, nullable=True),
        sa.Column("updated", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("lab_secrets")
    op.drop_column("labs", "request_id")
    op.drop_index("ix_labs_owner", "labs")
    op.drop_column("labs", "owner")
    op.drop_index("ix_replicas_expires", "replicas")
    op.drop_table("replicas")
