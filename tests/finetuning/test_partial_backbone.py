"""Fine-tuning strategies on a cut backbone (tlx.speed.FeatureCache with cut): each works on the
part above the cached bottom (its layer groups, LR depths, unfreezing, adapters, anchors), the
bottom never reaches the optimizer and stays bit-identical, and the checkpoint reloads into the
same function on images."""

import json

import pytest
import torch

from tests.helpers import (REPO, STRATEGY_BASE, TINY_MODEL, Recorder, fit, make_imagefolder, run_cli, tiny_data,
                           tiny_model, tiny_trainer)
from tlx.finetuning import (L2SP, BitFit, FinetuneStrategy, FinetuningError, FreezeUnfreeze, FullFinetune, GradualUnfreeze,
                            LayerDecay, LoRA)
from tlx.finetuning.lora import LoRALayer
from tlx.speed import FeatureCache

CUT = "blocks.2"  # of timm:test_efficientnet: the bottom is conv_stem, bn1, blocks.0 ... blocks.2
BOTTOM = tuple(f"backbone.model.{m}." for m in ("conv_stem", "bn1", "blocks.0", "blocks.1", "blocks.2"))
TOP_GROUP = "backbone.blocks+conv_head+bn2"  # the top's layer groups, top first: blocks.4 + conv_head + bn2,
BELOW_TOP = "backbone.blocks.3.0"  # then blocks.3

STRATEGIES = {
    "plain": lambda: [],
    "layer_decay": lambda: [LayerDecay(decay=0.5, fine=False)],
    "gradual": lambda: [GradualUnfreeze(unfreeze_every=1)],
    "lora": lambda: [LoRA(target_modules=["*"], rank=2, save_merged=False)],
    "l2sp": lambda: [FullFinetune(backbone_lr_scale=1.0), L2SP(alpha=0.1)],
    "freeze_unfreeze": lambda: [FreezeUnfreeze(unfreeze_at_epoch=1, backbone_lr_scale=0.5, warmup_steps=2)],
    "bitfit": lambda: [BitFit()],
}


def in_bottom(name: str) -> bool:
    return name.startswith(BOTTOM)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("partial"), n_train=4, n_val=2)


# The callbacks' order must not matter: both orders where the strategy changes the model (LoRA
# wraps conv_head, a direct child the cut top holds) or freezes groups.
CASES = [(name, False) for name in STRATEGIES] + [("lora", True), ("gradual", True)]


@pytest.mark.parametrize("name, cache_first", CASES, ids=[f"{n}{'-cache_first' * c}" for n, c in CASES])
def test_strategy_trains_the_top_only_and_the_checkpoint_predicts_on_images(name, cache_first, folder, tmp_path):
    model, data, recorder = tiny_model(), tiny_data(str(folder)), Recorder()  # str: hparams load weights_only
    state0 = {k: v.clone() for k, v in model.state_dict().items()}
    cache = FeatureCache(cut=CUT, augmented_views=1)
    strategy = STRATEGIES[name]()
    callbacks = [cache, *strategy] if cache_first else [*strategy, cache]
    trainer = fit(tmp_path, model, data, [*callbacks, recorder], epochs=3)

    # The bottom never reaches the optimizer and stays bit-identical (weights and BN statistics).
    names = {id(p): n for n, p in model.named_parameters()}
    handed = [names[id(p)] for g in trainer.optimizers[0].param_groups for p in g["params"]]
    assert handed and not [n for n in handed if in_bottom(n)]
    state = model.state_dict()
    assert all(torch.equal(state0[k], state[k]) for k in state0 if in_bottom(k))
    assert not [n for n in recorder.trained if in_bottom(n)]
    changed = recorder.changed_params(model)
    assert any(n.startswith(("backbone.model.blocks.4", "backbone.model.conv_head")) for n in changed)

    # What each strategy does, counted within the top.
    scales = {g["group"]: g["lr_scale"] for g in trainer.optimizers[0].param_groups}
    if name == "layer_decay":  # depth below the head counts the top's groups only
        assert scales == {"head": 1.0, TOP_GROUP: 0.5, BELOW_TOP: 0.25}
    if name == "gradual":  # epoch e: the head and the top e groups, from the head down; never the bottom
        trained = [{n.split(".")[2] for n in t if n.startswith("backbone.")} for _, t, _ in recorder.epochs]
        assert trained == [set(), {"blocks", "conv_head", "bn2"}, {"blocks", "conv_head", "bn2"}]
        blocks = [{".".join(n.split(".")[2:4]) for n in t if n.startswith("backbone.model.blocks")} for _, t, _ in recorder.epochs]
        assert blocks == [set(), {"blocks.4"}, {"blocks.3", "blocks.4"}]
        assert set(scales) == {"head", TOP_GROUP, BELOW_TOP}
    if name == "lora":  # adapters on the top's layers only, conv_head's used through the cut top
        wrapped = {n for n, m in model.backbone.model.named_modules() if isinstance(m, LoRALayer)}
        assert {"blocks.3.0.conv_pw", "blocks.4.0.conv_pwl", "conv_head"} <= wrapped
        assert all(n.startswith(("blocks.3.", "blocks.4.", "conv_head")) for n in wrapped)
        assert "backbone.model.conv_head.lora_B" in changed
        assert set(scales) == {"head", "backbone.lora"}
    if name == "l2sp":  # anchored above the cut only
        anchors = set(strategy[1]._reference)
        assert anchors and not [n for n in anchors if in_bottom(f"backbone.{n}.")]
        assert anchors == {n for n, _ in model.backbone.named_parameters() if not in_bottom(f"backbone.{n}")}
    if name == "freeze_unfreeze":  # the whole top from epoch 1, in the one group "backbone"
        trained = [{n for n in t if n.startswith("backbone.")} for _, t, _ in recorder.epochs]
        assert trained[0] == set() and trained[1] == trained[2] == {n for n in names.values() if n.startswith("backbone.") and not in_bottom(n)}
        assert scales == {"head": 1.0, "backbone": 0.5}
        assert set(strategy[0].warmup.unfrozen_at) == {"backbone"}  # its warm-up ramps that group
    if name == "bitfit":  # the top's biases only
        assert {n for n in handed if n.startswith("backbone.")} == {
            n for n in names.values() if n.startswith("backbone.") and n.endswith(".bias") and not in_bottom(n)}
    if name == "plain":
        assert set(handed) == {n for n in names.values() if not in_bottom(n)}

    # The checkpoint holds the whole model: a fresh model validated from it (same callbacks: LoRA's
    # adapters are put back above the cut) computes on images what the live model computes.
    ckpt = tmp_path / "partial.ckpt"
    trainer.save_checkpoint(ckpt)
    fresh = tiny_model(seed=1)
    again = [FeatureCache(cut=CUT, augmented_views=1), *STRATEGIES[name]()]
    tiny_trainer(tmp_path, callbacks=again).validate(fresh, datamodule=data, ckpt_path=str(ckpt), verbose=False)
    images = next(iter(data.val_dataloader()))[0]
    model.eval(), fresh.eval()
    assert model.input_kind == fresh.input_kind == "images"
    with torch.no_grad():
        assert torch.equal(fresh(images), model(images))


def test_a_strategy_handing_the_bottom_to_the_optimizer_is_refused():
    class Everything(FinetuneStrategy):  # a strategy that ignores the cut
        def groups(self, pl_module):
            from tlx.optim import ParamGroup

            return [ParamGroup("all", list(pl_module.parameters()))]

    model = tiny_model(class_names=["a", "b"])
    strategy = Everything()
    strategy.bottom = ("conv_stem", "bn1")
    with pytest.raises(FinetuningError, match="frozen bottom \\(conv_stem, bn1\\)"):
        strategy.param_groups(model)


def test_a_strategy_fragment_stacks_on_the_top_stages_config(tiny_folder, tmp_path):
    # The README's example, on the tiny model (its top above blocks.4: conv_head + bn2).
    cli = run_cli([
        "fit", f"--config={STRATEGY_BASE}", f"--config={REPO / 'configs/speed/top_stages.yaml'}",
        f"--config={REPO / 'configs/finetuning/strategies/layer_decay.yaml'}",
        f"--model.init_args.backbone={TINY_MODEL['backbone']}", "--model.init_args.weights=null",
        f"--model.init_args.preprocessing={json.dumps(TINY_MODEL['preprocessing'])}",
        f"--data.init_args.root={tiny_folder}", "--data.init_args.batch_size=4", "--data.init_args.num_workers=0",
        f"--trainer.default_root_dir={tmp_path}", "--trainer.max_epochs=1", "--trainer.enable_progress_bar=false",
    ])
    scales = {g["group"]: g["lr_scale"] for g in cli.trainer.optimizers[0].param_groups}
    assert scales == {"head": 1.0, "backbone.conv_head+bn2": 0.75}
