"""The trainer: its resolved config, the loop (loop.train) with its epochs, step, optimizer, checkpoints and
reports, and the losses, schedules, metrics and distillation stages it uses."""
