"""Write the paper's training recipes as LightningCLI YAML files: ``python configs/generate.py``.

One source of truth for every number in configs/*.yaml.
"""

from pathlib import Path

import yaml

HERE = Path(__file__).parent

# CIFAR-100: the BAM paper follows each network's own paper's recipe (batch 128, SGD, lr 0.1).
CIFAR = {
    "cifar_resnet50": (
        "He et al., Identity Mappings in Deep Residual Networks, ECCV 2016",
        164,
        (81, 122),
        0.1,
        1e-4,
        0.0,
    ),
    "preresnet110": (
        "He et al., Identity Mappings in Deep Residual Networks, ECCV 2016 (0.01 warm-up)",
        164,
        (81, 122),
        0.1,
        1e-4,
        1.0,
    ),
    "wrn28_8": (
        "Zagoruyko and Komodakis, Wide Residual Networks, BMVC 2016",
        200,
        (60, 120, 160),
        0.2,
        5e-4,
        0.0,
    ),
    "wrn28_10": (
        "Zagoruyko and Komodakis, Wide Residual Networks, BMVC 2016",
        200,
        (60, 120, 160),
        0.2,
        5e-4,
        0.0,
    ),
    "resnext29_8x64d": (
        "Xie et al., Aggregated Residual Transformations, CVPR 2017",
        300,
        (150, 225),
        0.1,
        5e-4,
        0.0,
    ),
}
IMAGENET = [
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "wrn18_w1_5",
    "wrn18_w2",
    "resnext50_32x4d",
    "mobilenet_v1",
    "mobilenet_v1_0_7",
]


def recipe(model, data, epochs, milestones, gamma, wd, warmup, lr):
    # No batch size or workers under data: the data module's defaults are the recipe's (tests
    # check the header against them), so pointing a recipe at other data (--data=...) takes
    # that data's own defaults instead of ImageNet's 256 images and 8 workers.
    return {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": epochs,
            "accelerator": "auto",
            "devices": "auto",
            "strategy": "auto",
        },
        "model": {
            "model": model,
            "lr": lr,
            "momentum": 0.9,
            "nesterov": True,
            "weight_decay": wd,
            "schedule": "step",
            "milestones": list(milestones),
            "gamma": gamma,
            "warmup_epochs": warmup,
        },
        "data": {"class_path": data},
        "run_dir": f"runs/{model}",
    }


def write(name, header, cfg):
    text = "".join(f"# {line}\n" for line in header) + yaml.safe_dump(cfg, sort_keys=False)
    (HERE / f"{name}.yaml").write_text(text)


def main():
    for net, (source, epochs, milestones, gamma, wd, warmup) in CIFAR.items():
        for model in (net, f"bam_{net}"):
            header = [
                f"{model} on CIFAR-100 (BAM paper, Table 3; recipe of {source}).",
                f"epochs {epochs}, batch size 128, learning rate 0.1 (x{gamma} at epochs "
                f"{', '.join(map(str, milestones))}), weight decay {wd}.",
                f"Run: torch-bam fit --config configs/{model}_cifar100.yaml",
            ]
            cfg = recipe(
                model,
                "torch_bam.data.CIFAR100DataModule",
                epochs,
                milestones,
                gamma,
                wd,
                warmup,
                0.1,
            )
            write(f"{model}_cifar100", header, cfg)
    for net in IMAGENET:
        for model in (net, f"bam_{net}"):
            header = [
                f"{model} on ImageNet-1K (BAM paper, Table 4; the standard ResNet recipe of "
                "He et al., CVPR 2016, as the BAM paper states).",
                "epochs 90, batch size 256 (in total over all GPUs), learning rate 0.1 "
                "(x0.1 at epochs 30, 60), weight decay 1e-4.",
                "With N GPUs set --data.batch_size 256/N (DDP: the batch is per process).",
                f"Run: torch-bam fit --config configs/{model}_imagenet.yaml "
                "--data.root /path/to/imagenet",
            ]
            cfg = recipe(
                model,
                "torch_bam.data.ImageNetDataModule",
                90,
                (30, 60),
                0.1,
                1e-4,
                0.0,
                0.1,
            )
            write(f"{model}_imagenet", header, cfg)


if __name__ == "__main__":
    main()
