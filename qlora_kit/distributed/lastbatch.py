"""The epoch's last, partial batch on several processes: each row trains once, as it does on one process.

Verified: accelerate 1.15.0, transformers 5.17.0. accelerate shards the Trainer's batches with `BatchSamplerShard`
(default `even_batches=True`): when an epoch's rows do not fill the last round of batches (one per process), it
completes that round with rows from the start of the epoch, so every process gets a full batch. The Trainer trains
those repeats like any row: measured on the demo (154 rows, 2 processes x batch 4), the last step trained 8 rows where
one process trains the epoch's 2 remaining ones, and the losses left the one-process curve there.

The repeats stay (each process must still run forward and backward: DDP's gradient all-reduce and FSDP's gathers are
collectives), but their labels become -100 before the Trainer counts the step's trained tokens across processes: they
add no loss, no gradient and no token to the count that divides the loss. A process whose last batch is all repeats
then contributes exactly zero. accelerate puts the epoch's own rows first in each last batch and the repeats after
them; `tests/test_distributed.py` checks that layout against accelerate's own sampler.
"""

from __future__ import annotations

from qlora_kit.data.encode import IGNORE_INDEX


def own_rows(epoch_rows: int, batch_size: int, world_size: int, rank: int) -> int:
    """How many rows of `rank`'s last batch of an epoch are the epoch's own (the rest repeat earlier rows)."""
    tail = epoch_rows % (batch_size * world_size)  # rows in the last round; 0: every round is full
    if tail == 0:
        return batch_size
    return min(max(tail - rank * batch_size, 0), batch_size)


class TrainEachRowOnce:
    """Trainer mixin: masks the repeated rows of each process's last batch of an epoch (see the module docstring).

    It wraps the batches the Trainer pulls in `get_batch_samples`, before that method counts the tokens to train
    (Unsloth replaces `Trainer.get_batch_samples` with its own count; the wrapper works under either)."""

    def get_batch_samples(self, epoch_iterator, num_batches, *args, **kwargs):
        return super().get_batch_samples(self._without_repeats(epoch_iterator), num_batches, *args, **kwargs)

    def _without_repeats(self, batches):
        config = self.args.accelerator_config
        keep = own_rows(len(self.train_dataset), self._train_batch_size, self.args.world_size,
                        self.args.process_index)
        padded = config.even_batches and not config.split_batches  # the layout own_rows describes
        state = self.accelerator.gradient_state
        for batch in batches:  # pulled one at a time, as the Trainer asks: no batch is read ahead
            labels = batch["labels"]
            # end_of_dataloader: accelerate's loader sets it as it hands out an epoch's last batch.
            if padded and state.end_of_dataloader and keep < len(labels):
                labels[keep:] = IGNORE_INDEX
            yield batch


def train_each_row_once(trainer_cls: type) -> type:
    """`trainer_cls` with TrainEachRowOnce in front: the trainer class of a run on several processes."""
    return type(trainer_cls.__name__, (TrainEachRowOnce, trainer_cls), {"__module__": __name__})
