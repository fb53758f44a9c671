"""Train/eval modes follow freezing: a frozen part runs in eval mode, an unfrozen one in train
mode with its Dropout and DropPath active (not only BatchNorm), and modes are set when they
change, not by a walk over every module before each batch."""

from lightning.pytorch import Callback

from tests.helpers import fit, tiny_data, tiny_model
from tlx.finetuning import FreezeUnfreeze, GradualUnfreeze


class DropModes(Callback):
    """Per training batch: the training flags of the backbone's DropPath/Dropout modules."""

    def __init__(self):
        self.per_epoch: dict[int, set[bool]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        flags = {m.training for m in pl_module.backbone.modules() if "Drop" in type(m).__name__}
        self.per_epoch.setdefault(trainer.current_epoch, set()).update(flags)


def drop_model():
    return tiny_model(backbone_kwargs={"drop_path_rate": 0.2, "drop_rate": 0.2})


def test_dropout_and_droppath_train_again_after_the_unfreeze(tiny_folder, tmp_path):
    model, modes = drop_model(), DropModes()
    assert any("DropPath" in type(m).__name__ for m in model.backbone.modules())
    # Validation runs between epochs: Lightning restores the modes it saw, which must be ours.
    fit(tmp_path, model, tiny_data(tiny_folder), [FreezeUnfreeze(unfreeze_at_epoch=1), modes], epochs=3,
        limit_val_batches=1)
    assert modes.per_epoch == {0: {False}, 1: {True}, 2: {True}}
    assert all(m.training for m in model.backbone.modules())  # no longer "mixed"


def test_gradual_unfreeze_trains_the_dropout_of_unfrozen_groups_only(tiny_folder, tmp_path):
    model, modes = drop_model(), DropModes()
    strategy = GradualUnfreeze(unfreeze_every=1, num_groups=2)
    fit(tmp_path, model, tiny_data(tiny_folder), [strategy, modes], epochs=2)
    bottom, top = strategy._layer_groups

    def drop_flags(group):
        return {m.training for g in group.modules for m in g.modules() if "Drop" in type(m).__name__}

    assert drop_flags(top) == {True} and drop_flags(bottom) == {False}
    assert modes.per_epoch[0] == {False} and modes.per_epoch[1] == {False, True}


def test_modes_are_not_reset_before_every_batch(tiny_folder, tmp_path):
    """A mode set by the user inside a batch survives to the next one: no per-batch walk."""
    model = tiny_model()

    class Probe(Callback):
        seen: list[bool] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.seen.append(pl_module.head.training)
            pl_module.head.eval()

    probe = Probe()
    fit(tmp_path, model, tiny_data(tiny_folder), [FreezeUnfreeze(unfreeze_at_epoch=5), probe], epochs=1)
    assert probe.seen[0] is True and not any(probe.seen[1:])
