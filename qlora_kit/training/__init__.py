"""The training stage: resolve device defaults, run TRL's SFTTrainer, keep the run directory truthful."""
