"""The trainer's parts: its resolved config, losses, schedules, metrics and distillation stages."""
