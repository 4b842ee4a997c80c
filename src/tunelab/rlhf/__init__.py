"""RLHF: supervised fine-tuning, a reward model from preference pairs, PPO (our own: TRL 1.13 removed it) and DPO."""
