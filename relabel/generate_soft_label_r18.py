"""PRISM's relabel preset for a ResNet-18 student on ImageNet-1k: teachers resnet18,
mobilenet_v2, alexnet, shufflenet_v2_x0_5 with ImageNet weights (--candidate-number N keeps the
first N), ensemble rule normmean; cutmix, fp16 labels, 300 epochs of 224 px crops.
Everything else is the generic relabel/generate_soft_label.py (see its --help).

    python relabel/generate_soft_label_r18.py --data DISTILLED --fkd-path STORE --candidate-number 4
"""

from relabel.generate_soft_label import Preset, main
from softlabel.errors import run_main

PRESET = Preset("r18", ["resnet18", "mobilenet_v2", "alexnet", "shufflenet_v2_x0_5"], "normmean")

if __name__ == "__main__":
    run_main(lambda: main(PRESET))
