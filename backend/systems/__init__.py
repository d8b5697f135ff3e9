"""System kinds: one package per kind (how labs run on a kind of system)."""
