"""Child processes: the one launcher every stage, job and supervisor starts its children with (process/child.py)."""

from qlora_kit.process.child import Child, run_stage_child

__all__ = ["Child", "run_stage_child"]
